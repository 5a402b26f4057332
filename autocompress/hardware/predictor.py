"""The latency predictor: per-kernel regression trees, then how the kernels add up in a network.

Stage 1 (nn-Meter's idea): one regressor per (op, bit width) predicts the latency of a kernel
timed alone, from its shape features (its target's ``Target.kernel_features``): a non-negative linear
baseline in MACs and bytes moved, times a learned efficiency (ExtraTrees on the log ratio).

Stage 2 (ours): a network is not the sum of its kernels timed alone. Alone, each kernel pays a
session call and converts its input and output, and its weights stay in cache between runs; in a
network consecutive kernels of one precision skip those conversions, while the weights of a large
network stream from memory (profiled inside a ResNet-18 candidate, an 8 MB float conv ran 4.7x
slower than alone, at about 11 GB/s). So a candidate's "kernels alone" are their times alone less
the session call each paid (``call_ms_``), plus one call. Fit on whole candidates timed end to end,
two heads predict a candidate's latency, and the prediction is their mean in log space:

- ratio head: ExtraTrees on the log ratio between the measured latency and the kernels alone,
  from model-independent features: how the kernel time splits over ops and precisions, weight
  megabytes per precision, kernel count, precision changes, activations, largest input side,
  the elements that reach a conv through glue ops rather than from a kernel (a max pool on a
  tensor an int layer reads runs as a slow uint8 loop: ``_glue_inputs``), and the elements a
  squeeze-and-excitation gate multiplies (``_gated_elements``);
- excess head: first a linear excess, the time a network adds to (or saves on) its kernels alone
  per million weights (float ones by how often the kernel reuses each: its output pixels; int8;
  int4), per million float weights read more than once when the network's float weights pass a
  threshold (the cache it can keep them in; ``_excess_terms``), per precision change, per kernel,
  per million activations, per million elements through glue and per million gated elements (fit
  for relative error).
  Streaming weights costs time in proportion to their bytes: additive, which trees on ratios
  learn poorly. Then ExtraTrees on the log ratio between the measured latency and that estimate
  (same features, plus the estimate's own ratio).

The result scales every kernel alike, so the prediction splits exactly into a per-layer breakdown.

Uncertainty, per candidate: how far apart stage 2's trees put it, calibrated on held-out
candidates. In the cross-validation that fit already runs, each held-out candidate's squared log
error is regressed on the variance of the trees' predictions for it (both heads' trees together):
``log_var = a + b * tree_var``, with a, b >= 0. A candidate whose kernels stage 1 knows less well
than the profile's typical candidate (a higher cross-validated kernel error, summed over its
kernels) gets that excess added. Candidates the trees disagree on do miss by more: on the 480
seed-2 and seed-3 validation candidates held out of the 896-candidate Intel (AMX) profile, the
quarter with the narrowest stated deviation had an RMS error of 4.3% (98% within 10%), the widest
quarter 7.6% (82%); and the stated deviation means what it says there (69% of measurements within
one, 95% within two). The earlier rule, stage 1's variance plus stage 2's cross-validated error
for every candidate, counted stage 1's error twice (stage 2's error contains it) and gave every
candidate about the same relative width: 84% fell within one deviation, and the width said little
about which candidates would miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold

from . import targets  # noqa: F401  (registers them)
from ..core.target import DEFAULT_TARGET, Target, target as target_named
from .forest import CompiledForests, CompiledKernelModels, heads_per_tree
from .candidate_features import BITS, candidate_features, check_feature_names
from .kernels import OPS, Kernel, baseline_ms, kernel_table, roofline_terms, stage1_features

__all__ = ["LatencyPrediction", "LatencyPredictor", "NotFittedError"]

_STREAM_THRESHOLDS_MB = (3, 6, 9, 12, 16)  # float weight MB; LatencyPredictor.fit picks one


@dataclass(frozen=True)
class LatencyPrediction:
    ms: float
    std_ms: float  # one standard deviation
    per_layer_ms: dict[str, float]  # sums to ms


class LatencyPredictor:
    """``fit`` on measured kernels and whole candidates; ``predict`` lists of kernels."""

    # Bumped whenever the fitted attributes change, so a cached pickle from an older version is
    # refit instead of failing at predict time (hardware.store checks it).
    # 8: per-candidate uncertainty from the trees' spread (``uncertainty_``). Not 7: a format 7
    # was committed and reverted, and caches it wrote may still be about.
    # 9: a max pool read by int4 convs after an int8 stem counts as requantized (``_glue_inputs``).
    # 10: the excess head's estimate is held to the range of ratios the profile had
    # (``excess_ratio_range_``); the target is a parameter, and stage 1 reads its kernel features.
    # 11: the attention kernel (``kernels.OPS``), and its time share among the candidate features.
    format_version = 11

    def __init__(self, *, n_estimators: int = 100, min_samples_leaf: int = 1, composition_min_samples_leaf: int = 2,
                 random_state: int = 0, target: str = DEFAULT_TARGET) -> None:
        self.target = target  # the runtime whose kernels are priced: its ``kernel_features`` feed stage 1
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.composition_min_samples_leaf = composition_min_samples_leaf
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, kernels: np.ndarray, kernel_ms: np.ndarray, candidates: list[np.ndarray],
            candidate_ms: np.ndarray) -> LatencyPredictor:
        """``kernels``: ``kernel_table`` rows timed alone, ``kernel_ms`` their latencies;
        ``candidates``: one ``kernel_table`` per whole candidate, ``candidate_ms`` its latency."""
        self._compiled_ = None  # compiled from the models fit here on first use
        kernels, kernel_ms = np.asarray(kernels), np.asarray(kernel_ms, dtype=np.float64)
        candidate_ms = np.asarray(candidate_ms, dtype=np.float64)
        if len(kernels) != len(kernel_ms) or len(candidates) != len(candidate_ms):
            raise ValueError(f"{len(kernels)=} {len(kernel_ms)=} {len(candidates)=} {len(candidate_ms)=} must pair up")
        if len(candidates) < 10:
            raise ValueError(f"need at least 10 whole candidates to learn how kernels add up, got {len(candidates)}")
        self.kernel_models_ = {}
        for op in range(len(OPS)):
            for bits in BITS:
                rows = (kernels[:, 0] == op) & (kernels[:, 1] == bits)
                if rows.sum() >= 10:
                    self.kernel_models_[(op, bits)] = self._fit_kernel_model(kernels[rows], kernel_ms[rows])
        self.fallback_ = self._fit_kernel_model(kernels, kernel_ms)
        # The fastest kernel timed alone (a Linear of a few dozen weights) is all session call.
        self.call_ms_ = float(kernel_ms.min())
        features, alone, kernel_var, _, _, excess_parts, (self.composition_features_, self.excess_terms_) = \
            self._composition(candidates)
        log_ms = np.log(candidate_ms)
        # How many MB of float weights a network holds before they stream from memory depends on
        # the machine (and on its neighbours' use of the shared cache): chosen on the
        # cross-validated error of the whole stage 2. (Chosen on the linear excess's own residual,
        # it came out larger, and the trees did worse with it.)
        fits = []
        for threshold in _STREAM_THRESHOLDS_MB:
            excess_terms = _excess_terms(excess_parts, threshold)
            # Fit for relative error (1/ms^2), like the kernel baselines. Cross-validation refits
            # only the trees: the excess has 13 coefficients for hundreds of candidates.
            excess = LinearRegression(fit_intercept=False).fit(excess_terms, candidate_ms - alone,
                                                               sample_weight=1.0 / candidate_ms ** 2)
            ratio_range = _excess_ratio_range(alone, excess_terms, excess)
            heads = self._heads(features, alone, excess_terms, excess, ratio_range)
            log_error, tree_var = self._out_of_fold(heads, log_ms)
            relative_error = float(np.sqrt(np.mean(np.expm1(log_error) ** 2)))
            fits.append((relative_error, threshold, excess, ratio_range, heads, log_error, tree_var))
        (self.relative_error_, self.stream_threshold_mb_, self.excess_, self.excess_ratio_range_, heads, log_error,
         tree_var) = min(fits, key=lambda fit: fit[0])
        self.composition_ = [self._forest(self.composition_min_samples_leaf).fit(x, log_ms - reference)
                             for x, reference in heads]
        # Uncertainty: held-out squared log errors against the trees' variance (see the module
        # docstring); stage 1's variance counts only above what the profile's candidates had.
        # The floor is a coefficient on a constant column, so that it is held >= 0 in the fit
        # itself (an intercept is not, and clipping one afterwards leaves the slope fit to it).
        calibration = LinearRegression(positive=True, fit_intercept=False).fit(
            np.column_stack([np.ones(len(tree_var)), tree_var]), log_error ** 2)
        self.uncertainty_ = tuple(float(c) for c in calibration.coef_)
        self.typical_kernel_var_ = float(np.median(kernel_var / alone ** 2))
        return self

    def _heads(self, features: np.ndarray, alone: np.ndarray, excess_terms: np.ndarray, excess: LinearRegression,
               ratio_range: tuple[float, float]):
        """Stage 2's two heads, as (tree features, log reference latency) pairs; each head's trees
        predict the log ratio of the measured latency to its reference, and the prediction is the
        mean of the two in log space. One head scales the kernels alone; the other starts from
        kernels alone plus the linear excess, its ratio to the kernels alone held within
        ``ratio_range``, the range the profile's candidates gave it (``_excess_ratio_range``). Chosen on
        cross-validation over the profile's candidates, before the glue and streaming terms: the
        excess head alone scored 82% within 10% against 77% for the ratio head, and their mean
        82-83%; on MnasNet, which was never profiled, the excess head alone over-predicted by
        4-7% and the mean by 3-4%."""
        # excess.predict's own arithmetic, without its input checks (they cost more than the rest)
        estimate = np.clip(alone + (excess_terms @ excess.coef_ + excess.intercept_), ratio_range[0] * alone,
                           ratio_range[1] * alone)
        return [(features, np.log(alone)),
                (np.column_stack([features, np.log(estimate / alone)]), np.log(estimate))]

    def _fit_kernel_model(self, table: np.ndarray, ms: np.ndarray):
        """A roofline-like linear baseline (time per MAC and per byte moved, all non-negative),
        then trees on how far each kernel's log time sits from it. The baseline carries the
        orders of magnitude that trees cannot extrapolate across; the trees learn efficiency.
        Returns (baseline, trees, cross-validated RMS error of the log time)."""
        # Weighted by 1/ms^2, the fit minimises relative error: unweighted, the largest kernels
        # decide it and small ones got a baseline near zero (log ratios the trees could not fix).
        baseline = LinearRegression(positive=True).fit(roofline_terms(table), ms, sample_weight=1.0 / ms ** 2)
        base = baseline_ms(baseline, table)
        features, log_ratio = self._stage1_features(table, base), np.log(ms / base)
        held_out = np.zeros(len(log_ratio))
        for train, test in KFold(n_splits=3, shuffle=True, random_state=self.random_state).split(features):
            held_out[test] = self._forest(self.min_samples_leaf).fit(features[train], log_ratio[train]).predict(
                features[test])
        trees = self._forest(self.min_samples_leaf).fit(features, log_ratio)
        return baseline, trees, float(np.sqrt(np.mean((held_out - log_ratio) ** 2)))

    def _stage1_features(self, table: np.ndarray, base: np.ndarray) -> np.ndarray:
        return stage1_features(table, base, self._runtime().kernel_features)

    def _runtime(self) -> Target:
        return target_named(self.target)

    def _forest(self, min_samples_leaf: int) -> ExtraTreesRegressor:
        return ExtraTreesRegressor(n_estimators=self.n_estimators, min_samples_leaf=min_samples_leaf,
                                   max_features=0.6, random_state=self.random_state, n_jobs=1)

    def _out_of_fold(self, heads, log_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each candidate's log error when held out (5 folds), and the variance of the held-out
        trees' log predictions for it."""
        log_error, tree_var = np.zeros(len(log_ms)), np.zeros(len(log_ms))
        for train, test in KFold(n_splits=5, shuffle=True, random_state=self.random_state).split(log_ms):
            forests = [self._forest(self.composition_min_samples_leaf).fit(x[train], log_ms[train] - reference[train])
                       for x, reference in heads]
            trees = heads_per_tree([(x[test], reference[test]) for x, reference in heads], forests)
            log_error[test], tree_var[test] = trees.mean(axis=0) - log_ms[test], trees.var(axis=0)
        return log_error, tree_var

    # -- predicting ------------------------------------------------------------------------------

    def predict(self, kernels: list[Kernel], *, compiled: bool = True) -> LatencyPrediction:
        """Latency of one candidate, given its kernels (``kernels_of_candidate`` or ``_of_model``).
        ``compiled=False`` asks scikit-learn's own predict (slow; what the fast path is held to)."""
        return self.predict_table(kernel_table(kernels), [k.layer for k in kernels], compiled=compiled)

    def predict_table(self, table: np.ndarray, layers: list[str], *, compiled: bool = True) -> LatencyPrediction:
        """``predict`` of one candidate's ``kernel_table`` and each row's layer (``candidate_table``)."""
        ms, std, per_kernel = self._predict([table], compiled)
        per_layer: dict[str, float] = {}
        for layer, part in zip(layers, per_kernel.tolist()):
            per_layer[layer] = per_layer.get(layer, 0.0) + part
        return LatencyPrediction(float(ms[0]), float(std[0]), per_layer)

    def predict_many(self, candidates: list[list[Kernel]], *, compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Latency (ms) and its standard deviation for each candidate: one pass for all."""
        return self.predict_tables([kernel_table(c) for c in candidates], compiled=compiled)

    def predict_tables(self, tables: list[np.ndarray], *, compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``predict_many`` of each candidate's ``kernel_table``."""
        ms, std, _ = self._predict(tables, compiled)
        return ms, std

    def kernels_alone_ms(self, tables: list[np.ndarray]) -> np.ndarray:
        """Stage 1 alone: each candidate's kernels, each as timed alone less its session call,
        plus one call (the figure stage 2 scales; see ``_composition``)."""
        self._require_fitted()
        return self._composition(tables, self._compiled_models()[0])[1]

    def price_kernels(self, tables: list[np.ndarray]) -> None:
        """Stage 1 of every kernel in ``tables``, kept (the compiled path keeps each distinct kernel's
        figure), so that later predictions of candidates made of them walk only stage 2."""
        self._compiled_models()[0].log_ms(np.concatenate(tables), roofline_terms, self._stage1_features)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_compiled_"}  # rebuilt on first use

    def _predict(self, tables: list[np.ndarray], compiled: bool = True):
        self._require_fitted()
        stage1, stage2 = self._compiled_models() if compiled else (None, self.composition_)
        features, alone, alone_var, kernel_ms, owner, excess_parts, (names, excess_names) = self._composition(tables,
                                                                                                             stage1)
        # A predictor fit before the names were kept reads as built.
        check_feature_names(getattr(self, "composition_features_", names), names)
        check_feature_names(getattr(self, "excess_terms_", excess_names), excess_names, "excess terms")
        heads = self._heads(features, alone, _excess_terms(excess_parts, self.stream_threshold_mb_), self.excess_,
                            self.excess_ratio_range_)
        trees = heads_per_tree(heads, stage2)
        ms = np.exp(trees.mean(axis=0))  # the mean of the two heads' forests, in log space
        floor, per_tree_var = self.uncertainty_
        log_var = floor + per_tree_var * trees.var(axis=0) + np.maximum(
            alone_var / alone ** 2 - self.typical_kernel_var_, 0.0)
        # The one session call is shared out over the kernels in proportion to their time.
        return ms, ms * np.sqrt(log_var), kernel_ms * (ms / (alone - self.call_ms_))[owner]

    def _require_fitted(self) -> None:
        if not hasattr(self, "composition_"):
            raise NotFittedError("this LatencyPredictor is not fitted yet: call fit(), or load a hardware model "
                                 "with autocompress.hardware.load_hardware_model(path)")

    def _compiled_models(self) -> tuple[CompiledKernelModels, CompiledForests]:
        """Both stages' fitted models as flat arrays, built on first use."""
        self._require_fitted()
        if getattr(self, "_compiled_", None) is None:
            self._compiled_ = (CompiledKernelModels(self.kernel_models_, self.fallback_),
                               CompiledForests(self.composition_))
        return self._compiled_

    def _composition(self, tables: list[np.ndarray], stage1: CompiledKernelModels | None = None):
        """Stage-2 features of each candidate, its kernels' time alone (and that time's variance),
        each kernel's own time, which candidate each kernel belongs to, the terms of the linear
        excess, and the names of the features and of the excess's terms (kept by ``fit``).

        A kernel timed alone pays a whole session call (about 5 us here), a network pays one: a
        kernel's own time is its time alone less the call (at least a tenth of it), and the
        candidate's time alone is the sum of its kernels' own times plus one call. Summing whole
        calls instead, the 53 kernels of a MobileNet-V2 pruned uniformly by 75% at 32x32 summed to
        0.37 ms alone (0.12 ms without their calls, plus one) and it ran in 0.07 ms, a ratio far
        below any the random candidates had taught stage 2."""
        table = np.concatenate(tables)
        owner = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
        alone_ms, var = self._kernel_ms(table, stage1)
        ms = np.maximum(alone_ms - self.call_ms_, 0.1 * alone_ms)
        n = len(tables)

        def per_candidate(values: np.ndarray) -> np.ndarray:
            return np.bincount(owner, weights=values, minlength=n)

        alone = per_candidate(ms) + self.call_ms_
        features, names, excess_parts, excess_names = candidate_features(table, owner, ms, alone)
        return features, alone, per_candidate(var), ms, owner, excess_parts, (names, excess_names)

    def _kernel_ms(self, table: np.ndarray, stage1: CompiledKernelModels | None = None):
        """Stage 1: each kernel's latency alone, and the variance of that estimate (ms^2), from
        the kernel model's cross-validated error. ``stage1``: the models compiled, in one pass."""
        if stage1 is not None:
            log_mean, log_var = stage1.log_ms(table, roofline_terms, self._stage1_features)
        else:
            log_mean, log_var = np.zeros(len(table)), np.zeros(len(table))
            for key in {(int(o), int(b)) for o, b in table[:, :2]}:
                rows = (table[:, 0] == key[0]) & (table[:, 1] == key[1])
                baseline, trees, log_error = self.kernel_models_.get(key, self.fallback_)
                base = baseline_ms(baseline, table[rows])
                log_mean[rows] = np.log(base) + trees.predict(self._stage1_features(table[rows], base))
                log_var[rows] = log_error ** 2
        ms = np.exp(log_mean)
        return ms, (ms ** 2) * log_var  # delta method: var(exp(x)) ~ exp(x)^2 var(x)


def _excess_ratio_range(alone: np.ndarray, excess_terms: np.ndarray, excess: LinearRegression) -> tuple[float, float]:
    """The range of the linear estimate's ratio to the kernels alone over the candidates it was
    fit on (never below 0.3: int8 chains save conversions, but not most of a network's time).
    Outside the profile the linear excess extrapolates badly: its constant, fit on candidates of
    0.06 ms and more, is a saving of about 0.1 ms on the Intel class, and on ResNet-18s of tens of
    microseconds it drove the estimate to the floor, so the mean of the heads read 26% low. Held
    to the range, the estimate says no more than the profile taught it."""
    ratio = (alone + excess_terms @ excess.coef_ + excess.intercept_) / alone
    return max(0.3, float(ratio.min())), float(ratio.max())


def _excess_terms(excess_parts, threshold_mb: float) -> np.ndarray:
    """The linear excess's terms: the base terms, then the float weights a network reads more
    than once per run when its float weights exceed ``threshold_mb`` (then they no longer stay
    in cache from one run to the next, and stream from memory: profiled at 64x64, the ResNet-18
    candidates' excess over their kernels alone was near zero up to about 6 MB of float weights
    and grew by about 0.07 ms per MB beyond)."""
    base, streamable, float_mb = excess_parts
    return np.column_stack([base, streamable * (float_mb > threshold_mb)])

