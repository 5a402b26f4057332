"""The sensitivity guide: the damage each decision value does alone to the trained model, measured
once before the trials (``train.sensitivity``), ranks the repair's moves, and the allocations it
leads to under the budget seed the study beside the hand policies, all fine-tuned front first."""

from __future__ import annotations

from ..damage import MeasuredDamage
from ..seeds import Seed, front_first_seeds
from .base import Guide

__all__ = ["SensitivityGuide"]


class SensitivityGuide(Guide):
    name = "sensitivity"
    needs_sensitivities = True

    def measured(self) -> MeasuredDamage:
        """The damages as measured, unweighted."""
        return MeasuredDamage(self.problem.sensitivities.kl)

    def damage(self) -> MeasuredDamage:
        return self.measured()

    def seeds(self) -> list[Seed]:
        return front_first_seeds(self.problem.space, self.predictor, self.measured(), self.budget_ms,
                                 self.chance)
