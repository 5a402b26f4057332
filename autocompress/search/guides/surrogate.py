"""The surrogate guide: the sensitivity guide's damages and seeds, plus what the fine-tunes teach.

After every fine-tune it refits two models on the study's fine-tuned trials:

- the accuracy model (``search.surrogate``), which screens the sampler's proposals (``screening``):
  one it is sure cannot reach the front is told at once, without a fine-tune;
- the recovery weights (``recovery_weights``): how much of each technique's damage the fine-tune
  leaves. Once they rank held-out trials better than the raw damages, the repair reads the
  weighted damages, and a fresh set of allocations built on them is queued each time the
  fine-tuned trials have grown by ``reallocate_growth`` since the last set.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from ...core.space import Candidate
from ..budget import ChanceConstraint
from ..damage import MeasuredDamage
from ..recovery_weights import RecoveryWeights, fit_recovery_weights
from ..screening import SCREENED_IN_A_ROW, Screening, fine_tuned
from ..seeds import Seed
from ..allocation import allocate
from ..surrogate import MIN_RANK_CORRELATION, OPTIMISM, AccuracyModel
from .sensitivity import SensitivityGuide

__all__ = ["SurrogateConfig", "SurrogateGuide"]


@dataclass(frozen=True)
class SurrogateConfig:
    # A proposal is screened only when even its accuracy this many deviations above the model's
    # mean leaves it dominated by a front point.
    optimism: float = OPTIMISM
    # The held-out rank correlation the accuracy model must show before it screens anything.
    min_rank_correlation: float = MIN_RANK_CORRELATION
    # After this many screened proposals in a row the next one is fine-tuned regardless.
    screened_in_a_row: int = SCREENED_IN_A_ROW
    # A fresh set of reallocations once the fine-tuned trials have grown by this factor.
    reallocate_growth: float = 2.0
    # How much better (held-out rank correlation) than the raw damages the recovery weights must
    # rank before they steer the repair and the reallocations.
    min_recovery_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.optimism < 0 or not -1 <= self.min_rank_correlation <= 1 or self.screened_in_a_row < 1 \
                or self.reallocate_growth <= 1 or not -2 <= self.min_recovery_gain <= 2:
            raise ValueError(f"optimism {self.optimism} >= 0, min_rank_correlation {self.min_rank_correlation} in "
                             f"[-1, 1], screened_in_a_row {self.screened_in_a_row} >= 1, reallocate_growth "
                             f"{self.reallocate_growth} > 1 and min_recovery_gain {self.min_recovery_gain} in [-2, 2]")


class SurrogateGuide(SensitivityGuide):
    name = "surrogate"
    Config = SurrogateConfig

    def start(self, problem, study: optuna.Study, budget_ms: float, chance: ChanceConstraint, *,
              predictor=None) -> None:
        super().start(problem, study, budget_ms, chance, predictor=predictor)
        model = AccuracyModel(problem.space, self.measured(), problem.joint_damage(), optimism=self.config.optimism,
                              min_rank_correlation=self.config.min_rank_correlation)
        self.screening = Screening(model, study, in_a_row=self.config.screened_in_a_row)
        self.recovery: RecoveryWeights | None = None  # fit by the first ``learn``, which the driver asks at once

    def damage(self) -> MeasuredDamage:
        """The measured damages, weighted by technique once the recovery weights rank better."""
        if self.recovery is not None and self.recovery.trusted:
            return self.recovery.damage(self.problem.space, self.problem.sensitivities.kl)
        return self.measured()

    def screen(self, origin: str, candidate: Candidate, latency_ms: float, size_bytes: int) -> str | None:
        return self.screening.reason(origin, candidate, latency_ms, size_bytes)

    def learn(self) -> list[Seed]:
        self._refit()
        return self._reallocations()

    def status(self) -> str:
        return f"screened {self.screening.screened}" if self.screening.screened else ""

    def _refit(self) -> None:
        candidates, accuracies = fine_tuned(self.study)
        self.screening.refit(candidates, accuracies)
        self.recovery = fit_recovery_weights(self.problem.space, self.problem.sensitivities.kl, candidates,
                                             accuracies, min_gain=self.config.min_recovery_gain)
        self.study.set_user_attr("recovery_weights", self.recovery.to_dict())

    def _reallocations(self) -> list[Seed]:
        """Allocations by the weighted damages, once they are trusted, each time the fine-tuned
        trials have grown by ``reallocate_growth`` since the last set (the study remembers when)."""
        if self.recovery is None or not self.recovery.trusted:
            return []
        done = self.study.user_attrs.get("reallocated_at", [])
        if done and self.recovery.trials < self.config.reallocate_growth * done[-1]:
            return []
        self.study.set_user_attr("reallocated_at", [*done, self.recovery.trials])
        space = self.problem.space
        return [Seed(f"reallocation:{a.share:g}x", space.params_of(a.candidate))
                for a in allocate(space, self.predictor, self.damage(), self.budget_ms, chance=self.chance)]
