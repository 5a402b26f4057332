"""Screening (``--guide surrogate``): the driver's use of the accuracy model. Proposals the model
is sure cannot reach the front are told at once, without a fine-tune, with their reason. The
same refit learns how much of each technique's damage the fine-tunes recover
(``recovery_weights``), which the driver's repairs and reallocations read.

The model is refit from the study after every fine-tune, so it learns from every driver's trials
and a resumed search starts from all of them. Only the sampler's proposals and their repairs are
screened: the hand policies and allocations are what the model is judged against, and a retry
is a candidate that was already chosen. After a run of screened proposals the next one is
fine-tuned regardless: the model only stays honest if it keeps meeting the fine-tunes it predicts.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ..core.space import Candidate, Space
from .recovery_weights import RecoveryWeights, fit_recovery_weights
from .surrogate import AccuracyModel

__all__ = ["SCREENED_ORIGINS", "Screening"]

SCREENED_ORIGINS = ("sampler", "boundary_repair", "sparse_start")
_SCREENED_IN_A_ROW = 10


class Screening:
    def __init__(self, space: Space, damage, study: optuna.Study, joint=None) -> None:
        self.model = AccuracyModel(space, damage, joint)
        self.study = study
        self.in_a_row = 0
        self.screened = 0
        self.recovery: RecoveryWeights | None = None
        self.refit()

    def refit(self) -> None:
        """Learn from every fine-tuned trial of the study (every driver's); record how well the
        model ranks held-out trials on the study, where ``pareto`` and the dashboard show it."""
        evaluated = [t for t in self._complete() if t.user_attrs.get("status") == "evaluated"]
        candidates = [Candidate.from_dict(t.user_attrs["candidate"]) for t in evaluated]
        accuracies = [t.values[0] for t in evaluated]
        report = self.model.fit(candidates, accuracies)
        self.recovery = fit_recovery_weights(self.model.space, self.model.damage, candidates, accuracies)
        self.study.set_user_attr("accuracy_model", report.to_dict())
        self.study.set_user_attr("recovery_weights", self.recovery.to_dict())

    def reason(self, origin: str, candidate: Candidate, latency_ms: float, size_bytes: int) -> str | None:
        """Why ``candidate`` is not worth a fine-tune, or None to fine-tune it."""
        if origin not in SCREENED_ORIGINS or not self.model.ready or self.in_a_row >= _SCREENED_IN_A_ROW:
            self.in_a_row = 0
            return None
        front = [tuple(t.values) for t in self._complete()
                 if t.user_attrs.get("status") == "evaluated" and all(v <= 0 for v in t.constraints.values())]
        why = self.model.screen(candidate, latency_ms, size_bytes, front)
        if why is None:
            self.in_a_row = 0
        else:
            self.in_a_row += 1
            self.screened += 1
        return why

    def _complete(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
