"""The accuracy model: the accuracy a candidate is expected to reach after its fine-tune, with its
uncertainty, from the measured sensitivities and the trials fine-tuned so far.

The prior is additive: a candidate loses about the sum of the damages its decisions did alone
(``allocation.expected_damage``). Damages do not add up exactly (two prunings in one residual
stage compound, a fine-tune recovers int8 better than a deep cut), so once enough trials are
fine-tuned a random forest learns the accuracy from each candidate's damage by technique (prune,
bits, rank, ...), its largest single damage and its number of changes, as APQ's and OFA's accuracy
predictors learn it from architecture encodings, and, where the search measures it, the
damage of the candidate as a whole (``train.sensitivity.JointDamage``: one forward pass, no
fine-tune), which sees the damages compound where the sum cannot. A forest, not a Gaussian process: on a search's
own trials the process ranked held-out trials no better than the additive prior, the forest
clearly better, and the spread of its trees is the uncertainty screening needs: a proposal is
fine-tuned unless even its optimistic accuracy (mean plus two deviations) leaves it dominated by
a point already on the front.

The model is trusted only as far as it has shown it ranks: ``fit`` scores it by cross-validation
on the trials it learns from (Spearman's rank correlation of held-out predictions with the
fine-tuned accuracies), and ``ready`` requires that score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestRegressor

from ..core.space import Candidate, Space
from ..core.technique import registered

__all__ = ["AccuracyModel", "MIN_TRIALS", "MIN_RANK_CORRELATION", "OPTIMISM", "SurrogateFit", "cross_validated",
           "damage_by_kind", "decision_damages", "spearman"]

MIN_TRIALS = 12  # fine-tuned trials before the model is fit at all
MIN_RANK_CORRELATION = 0.6  # held-out Spearman the model must show before it screens anything
_FOLDS = 5
_TREES = 100
OPTIMISM = 2.0  # deviations above the mean a screened proposal must still fall short by


@dataclass(frozen=True)
class SurrogateFit:
    """How well the model ranks trials it did not learn from, beside the additive prior's ranking."""

    trials: int
    held_out_spearman: float | None  # cross-validated, None below MIN_TRIALS
    prior_spearman: float | None  # minus the additive damage, against the same accuracies
    joint_spearman: float | None = None  # minus the candidates' own measured damage, where measured

    def to_dict(self) -> dict:
        return {"trials": self.trials, "held_out_spearman": self.held_out_spearman,
                "prior_spearman": self.prior_spearman, "joint_spearman": self.joint_spearman}


class AccuracyModel:
    """``expect(candidates)`` -> (mean accuracy, deviation) per candidate."""

    def __init__(self, space: Space, damage: Callable[[str, object], float],
                 joint: Callable[[Candidate], float] | None = None, *, optimism: float = OPTIMISM,
                 min_rank_correlation: float = MIN_RANK_CORRELATION) -> None:
        self.space, self.damage, self.joint = space, damage, joint
        self.optimism, self.min_rank_correlation = optimism, min_rank_correlation
        self.kinds = sorted({v.kind for v in space.variables}, key=[t.kind for t in registered()].index)
        self.regressor = None
        self.fit_report = SurrogateFit(0, None, None)

    @property
    def ready(self) -> bool:
        score = self.fit_report.held_out_spearman
        return self.regressor is not None and score is not None and score >= self.min_rank_correlation

    def features(self, candidate: Candidate) -> np.ndarray:
        damages = decision_damages(self.space, candidate, self.damage)
        by_kind = dict.fromkeys(self.kinds, 0.0)
        for kind, d in damages:
            by_kind[kind] += d
        largest, changes = max((d for _, d in damages), default=0.0), len(damages)
        # log1p: damages span orders of magnitude, and accuracy falls off them roughly logarithmically
        measured = [self.joint(candidate)] if self.joint is not None else []
        return np.log1p(np.array([*by_kind.values(), sum(by_kind.values()), largest, float(changes), *measured]))

    def fit(self, candidates: Sequence[Candidate], accuracies: Sequence[float]) -> SurrogateFit:
        """Learn from fine-tuned ``candidates``; score the ranking by cross-validation first."""
        x = np.array([self.features(c) for c in candidates]) if candidates else np.zeros((0, 0))
        y = np.asarray(accuracies, float)
        total = len(self.kinds)  # the column of the total additive damage; the joint one is last
        prior = spearman(-x[:, total], y) if len(y) >= 3 else None
        joint = spearman(-x[:, -1], y) if len(y) >= 3 and self.joint is not None else None
        if len(y) < MIN_TRIALS:
            self.regressor, self.fit_report = None, SurrogateFit(len(y), None, prior, joint)
            return self.fit_report
        held_out = cross_validated(lambda fit_x, fit_y, x_out: _regressor().fit(fit_x, fit_y).predict(x_out), x, y)
        self.regressor = _regressor().fit(x, y)
        self.fit_report = SurrogateFit(len(y), spearman(held_out, y), prior, joint)
        return self.fit_report

    def expect(self, candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        if self.regressor is None:
            raise RuntimeError("the accuracy model is not fit yet")
        x = np.array([self.features(c) for c in candidates])
        trees = np.array([tree.predict(x) for tree in self.regressor.estimators_])
        return trees.mean(axis=0), trees.std(axis=0)

    def screen(self, candidate: Candidate, latency_ms: float, size_bytes: int,
               front: Sequence[tuple[float, float, int]]) -> str | None:
        """Why ``candidate`` need not be fine-tuned, or None when it should be: a front point
        ``(accuracy, latency, size)`` at least as fast and small beats even its optimistic accuracy."""
        if not self.ready:
            return None
        mean, std = self.expect([candidate])
        optimistic = float(mean[0] + self.optimism * std[0])
        for accuracy, latency, size in front:
            if latency <= latency_ms and size <= size_bytes and accuracy > optimistic:
                return (f"expected {mean[0]:.2%} ± {std[0]:.2%}; a front point at {latency:.3f} ms has "
                        f"{accuracy:.2%}")
        return None


def cross_validated(fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], x: np.ndarray,
                    y: np.ndarray, folds: int = _FOLDS) -> np.ndarray:
    """Each row's prediction by ``fit_predict(x_fit, y_fit, x_out)`` fit on the other folds (rows
    dealt into ``folds`` in turn): what a model ranks on trials it did not learn from."""
    held_out = np.empty(len(y))
    assignment = np.arange(len(y)) % folds
    for fold in range(folds):
        out = assignment == fold
        held_out[out] = fit_predict(x[~out], y[~out], x[out])
    return held_out


def _regressor() -> RandomForestRegressor:
    return RandomForestRegressor(n_estimators=_TREES, min_samples_leaf=2, random_state=0, n_jobs=1)


def decision_damages(space: Space, candidate: Candidate, damage: Callable[[str, object], float]
                     ) -> list[tuple[str, float]]:
    """(technique kind, measured damage alone) of each decision ``candidate`` changes."""
    return [(var.kind, damage(var.name, value)) for var in space.variables
            if (value := space.value_of(candidate, var)) != space.neutral(var)]


def damage_by_kind(space: Space, candidate: Candidate, damage: Callable[[str, object], float]) -> dict[str, float]:
    """The measured damages of ``candidate``'s decisions summed by technique (kinds it leaves alone: 0)."""
    by_kind = dict.fromkeys({v.kind for v in space.variables}, 0.0)
    for kind, d in decision_damages(space, candidate, damage):
        by_kind[kind] += d
    return by_kind


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)
