"""The latency predictor: per-kernel regression trees, then a fitted rule for how kernels add up.

Stage 1 (nn-Meter's idea): one ExtraTrees regressor per (op, bit width) predicts the log latency
of a kernel timed alone, from its shape features (``kernels.kernel_features``).

Stage 2 (ours): a kernel timed alone also pays a session call, quantizing its input and
dequantizing its output; inside a network it pays residual adds, pooling and precision changes
instead. A linear model, fit on whole candidates timed end to end, maps per-candidate sums of
stage-1 times and tensor sizes to the measured latency. Every stage-2 term belongs to one kernel
or to the constant, so the prediction splits exactly into a per-layer breakdown.

Uncertainty: the spread of the trees' predictions for each kernel, plus stage 2's cross-validated
relative error, combined as independent errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import KFold

from .kernels import OPS, Kernel, kernel_features, kernel_table

__all__ = ["LatencyPredictor", "LatencyPrediction", "NotFittedError"]

_BITS = (32, 16, 8, 4)
_COMPOSITION_TERMS = ("alone_float", "alone_int8", "alone_int4", "kernels", "in_mfloats_float",
                      "out_mfloats_float", "in_mfloats_int", "out_mfloats_int", "precision_changes_mfloats")


@dataclass(frozen=True)
class LatencyPrediction:
    ms: float
    std_ms: float  # one standard deviation
    per_layer_ms: dict[str, float]  # sums to ms minus overhead_ms
    overhead_ms: float  # the part no layer owns (session call, model input and output)


class LatencyPredictor:
    """``fit`` on measured kernels and whole candidates; ``predict`` lists of kernels."""

    def __init__(self, *, n_estimators: int = 100, min_samples_leaf: int = 1, ridge: float = 1e-3,
                 random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.ridge = ridge
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, kernels: np.ndarray, kernel_ms: np.ndarray, candidates: list[np.ndarray],
            candidate_ms: np.ndarray) -> "LatencyPredictor":
        """``kernels``: ``kernel_table`` rows timed alone, ``kernel_ms`` their latencies;
        ``candidates``: one ``kernel_table`` per whole candidate, ``candidate_ms`` its latency."""
        kernels, kernel_ms = np.asarray(kernels), np.asarray(kernel_ms, dtype=np.float64)
        if len(kernels) != len(kernel_ms) or len(candidates) != len(candidate_ms):
            raise ValueError(f"{len(kernels)=} {len(kernel_ms)=} {len(candidates)=} {len(candidate_ms)=} must pair up")
        if len(candidates) < 2 * len(_COMPOSITION_TERMS):
            raise ValueError(f"need at least {2 * len(_COMPOSITION_TERMS)} whole candidates, got {len(candidates)}")
        self.forests_ = {}
        for op in range(len(OPS)):
            for bits in _BITS:
                rows = (kernels[:, 0] == op) & (kernels[:, 1] == bits)
                if rows.sum() >= 5:
                    self.forests_[(op, bits)] = self._forest().fit(kernel_features(kernels[rows]),
                                                                   np.log(kernel_ms[rows]))
        self.fallback_ = self._forest().fit(_with_bits(kernels), np.log(kernel_ms))
        terms = np.stack([self._terms(c)[0].sum(axis=0) for c in candidates])
        y = np.asarray(candidate_ms, dtype=np.float64)
        self.composition_ = _relative_least_squares(terms, y, self.ridge)
        self.relative_error_ = _cross_validated_relative_error(terms, y, self.ridge, self.random_state)
        return self

    def _forest(self) -> ExtraTreesRegressor:
        return ExtraTreesRegressor(n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
                                   random_state=self.random_state, n_jobs=1)

    # -- predicting ------------------------------------------------------------------------------

    def predict(self, kernels: list[Kernel]) -> LatencyPrediction:
        """Latency of one candidate, given its kernels (``kernels_of_candidate`` or ``_of_model``)."""
        table = kernel_table(kernels)
        terms, var = self._terms(table, with_variance=True)
        coef, const = self._coefficients()
        per_kernel = terms @ coef
        per_layer: dict[str, float] = {}
        for kernel, ms in zip(kernels, per_kernel):
            per_layer[kernel.layer] = per_layer.get(kernel.layer, 0.0) + float(ms)
        total = float(per_kernel.sum() + const)
        return LatencyPrediction(total, self._std(total, var, coef), per_layer, float(const))

    def predict_many(self, candidates: list[list[Kernel]]) -> tuple[np.ndarray, np.ndarray]:
        """Latency (ms) and its standard deviation for each candidate: one tree pass for all."""
        tables = [kernel_table(c) for c in candidates]
        owner = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
        terms, var = self._terms(np.concatenate(tables), with_variance=True)
        coef, const = self._coefficients()
        totals = np.zeros((len(tables), terms.shape[1]))
        np.add.at(totals, owner, terms)
        variance = np.zeros((len(tables), var.shape[1]))
        np.add.at(variance, owner, var)
        ms = totals @ coef + const
        std = np.sqrt(variance @ coef[:3] ** 2 + (self.relative_error_ * ms) ** 2)
        return ms, std

    def _coefficients(self) -> tuple[np.ndarray, float]:
        if not hasattr(self, "composition_"):
            raise NotFittedError("this LatencyPredictor is not fitted yet: call fit(), or load a hardware model "
                                 "with autocompress.hardware.load_hardware_model(path)")
        return self.composition_[:-1], self.composition_[-1]

    def _std(self, total: float, var: np.ndarray, coef: np.ndarray) -> float:
        return float(np.sqrt(var.sum(axis=0) @ coef[:3] ** 2 + (self.relative_error_ * total) ** 2))

    def _kernel_ms(self, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: each kernel's latency alone, and the variance of that estimate (ms^2)."""
        if not hasattr(self, "forests_"):
            raise NotFittedError("this LatencyPredictor is not fitted yet: call fit() first")
        log_mean, log_var = np.zeros(len(table)), np.zeros(len(table))
        for key in {(int(o), int(b)) for o, b in table[:, :2]}:
            rows = (table[:, 0] == key[0]) & (table[:, 1] == key[1])
            forest = self.forests_.get(key)
            features = kernel_features(table[rows]) if forest else _with_bits(table[rows])
            per_tree = np.stack([tree.predict(features) for tree in (forest or self.fallback_).estimators_])
            log_mean[rows], log_var[rows] = per_tree.mean(axis=0), per_tree.var(axis=0)
        ms = np.exp(log_mean)
        return ms, (ms ** 2) * log_var  # delta method: var(exp(x)) ~ exp(x)^2 var(x)

    def _terms(self, table: np.ndarray, *, with_variance: bool = False):
        """Stage-2 terms of each kernel (rows sum to the candidate's terms)."""
        ms, var = self._kernel_ms(table)
        bits = table[:, 1]
        is_float, is_int8, is_int4 = bits >= 16, bits == 8, bits == 4
        _, _, cin, cout, _, _, h, w, out_h, out_w, _ = table.T.astype(np.float64)
        in_m, out_m = cin * h * w / 1e6, cout * out_h * out_w / 1e6
        previous_int = np.concatenate([[False], bits[:-1] <= 8])
        changes = (previous_int != (bits <= 8)) * in_m
        terms = np.column_stack([ms * is_float, ms * is_int8, ms * is_int4, np.ones(len(table)),
                                 in_m * is_float, out_m * is_float, in_m * ~is_float, out_m * ~is_float, changes])
        variance = np.column_stack([var * is_float, var * is_int8, var * is_int4])
        return (terms, variance) if with_variance else (terms, None)


def _with_bits(table: np.ndarray) -> np.ndarray:
    """Features of the pooled fallback forest: the op and bit width become features too."""
    return np.column_stack([kernel_features(table), table[:, 0], table[:, 1]])


def _relative_least_squares(terms: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Coefficients (last = constant) minimising the squared *relative* error, lightly ridged."""
    x = np.column_stack([terms, np.ones(len(terms))]) / y[:, None]
    scale = np.abs(x).max(axis=0) + 1e-12
    xs = x / scale
    a = xs.T @ xs + ridge * np.eye(xs.shape[1])
    return np.linalg.solve(a, xs.T @ np.ones(len(y))) / scale


def _cross_validated_relative_error(terms: np.ndarray, y: np.ndarray, ridge: float, seed: int) -> float:
    errors = np.zeros(len(y))
    for train, test in KFold(n_splits=5, shuffle=True, random_state=seed).split(terms):
        coef = _relative_least_squares(terms[train], y[train], ridge)
        errors[test] = (terms[test] @ coef[:-1] + coef[-1]) / y[test] - 1.0
    return float(np.sqrt(np.mean(errors ** 2)))
