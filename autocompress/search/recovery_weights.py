"""How much of each technique's measured damage is still there after the fine-tune.

The sensitivities are damages before any fine-tune, and the fine-tune recovers them unequally:
the KL divergence a deep pruning, a low rank or a cell swap causes mostly comes back in a short
distillation, the one low bit widths cause much less so. Added up raw, the damages rank pruned
candidates far too low, and the repair and the allocations built on them spend the budget on
quantization first. Once ``MIN_TRIALS`` candidates are fine-tuned, the surrogate guide learns one
weight per technique: the accuracy each trial lost (to the best fine-tuned one) as a non-negative
combination of its damage by technique (least squares), the weights scaled to the largest and
floored, so that no technique turns free on the evidence of a few dozen trials.

The weights are trusted only where they rank held-out trials (5-fold) better than the raw sum
ranks the same trials; then the driver repairs with the weighted damages and queues a fresh set
of allocations built on them (``reallocation:SHAREx``), each time the fine-tuned trials double.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from ..core.space import Candidate, Space
from .damage import MeasuredDamage
from .surrogate import MIN_TRIALS, cross_validated, damage_by_kind, spearman

__all__ = ["RecoveryWeights", "fit_recovery_weights"]

_FLOOR = 0.02  # the smallest weight a technique gets, relative to the largest


@dataclass(frozen=True)
class RecoveryWeights:
    weights: dict[str, float]  # technique kind -> share of its damage that counts, the largest 1
    trials: int
    held_out_spearman: float | None  # the weighted sum against the fine-tuned accuracies, held out
    raw_spearman: float | None  # the raw sum against the same accuracies
    min_gain: float = 0.0  # how much better than the raw sum the weights must rank to be trusted

    @property
    def trusted(self) -> bool:
        return (self.held_out_spearman is not None and self.raw_spearman is not None
                and self.held_out_spearman > self.raw_spearman + self.min_gain)

    def damage(self, space: Space, raw: Callable[[str, object], float]) -> MeasuredDamage:
        """``raw`` (``Sensitivities.kl``) with each variable's damage weighted by its technique."""
        kind_of = {v.name: v.kind for v in space.variables}
        return MeasuredDamage(lambda name, value: self.weights.get(kind_of[name], 1.0) * raw(name, value))

    def to_dict(self) -> dict:
        return {"weights": self.weights, "trials": self.trials, "held_out_spearman": self.held_out_spearman,
                "raw_spearman": self.raw_spearman, "trusted": self.trusted}


def fit_recovery_weights(space: Space, raw: Callable[[str, object], float], candidates: Sequence[Candidate],
                         accuracies: Sequence[float], *, min_gain: float = 0.0) -> RecoveryWeights:
    kinds = sorted({v.kind for v in space.variables})
    y = np.asarray(accuracies, float)
    if len(y) < MIN_TRIALS:
        return RecoveryWeights(dict.fromkeys(kinds, 1.0), len(y), None, None, min_gain)
    x = np.array([[by_kind[k] for k in kinds] for by_kind in (damage_by_kind(space, c, raw) for c in candidates)])
    lost = y.max() - y
    held_out = cross_validated(lambda fit_x, fit_lost, x_out: x_out @ _weights(fit_x, fit_lost), x, lost)
    weights = _weights(x, lost)
    return RecoveryWeights(dict(zip(kinds, weights.tolist())), len(y), spearman(-held_out, y),
                           spearman(-x.sum(axis=1), y), min_gain)


def _weights(x: np.ndarray, lost: np.ndarray) -> np.ndarray:
    w, _ = nnls(x, lost)
    if w.max() <= 0:
        return np.ones(x.shape[1])  # nothing explains the losses: every technique counts in full
    return np.maximum(w / w.max(), _FLOOR)
