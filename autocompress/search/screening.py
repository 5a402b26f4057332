"""Screening (the surrogate guide's): proposals the accuracy model is sure cannot reach the front
are told at once, without a fine-tune, with their reason.

The model is refit from the study after every fine-tune, so it learns from every driver's trials
and a resumed search starts from all of them. Only the sampler's proposals and their repairs are
screened: the hand policies and allocations are what the model is judged against, and a retry
is a candidate that was already chosen. After a run of screened proposals the next one is
fine-tuned regardless: the model only stays honest if it keeps meeting the fine-tunes it predicts.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ..core.space import Candidate
from .surrogate import AccuracyModel

__all__ = ["SCREENED_ORIGINS", "SCREENED_IN_A_ROW", "Screening", "fine_tuned"]

SCREENED_ORIGINS = ("sampler", "boundary_repair", "sparse_start")
SCREENED_IN_A_ROW = 10


def fine_tuned(study: optuna.Study) -> tuple[list[Candidate], list[float]]:
    """The candidates of the study's trials fine-tuned to the end, and their accuracies."""
    evaluated = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("status") == "evaluated"]
    return [Candidate.from_dict(t.user_attrs["candidate"]) for t in evaluated], [t.values[0] for t in evaluated]


class Screening:
    def __init__(self, model: AccuracyModel, study: optuna.Study, *, in_a_row: int = SCREENED_IN_A_ROW) -> None:
        self.model = model
        self.study = study
        self.most_in_a_row = in_a_row
        self.in_a_row = 0
        self.screened = 0

    def refit(self, candidates: list[Candidate], accuracies: list[float]) -> None:
        """Learn from the fine-tuned trials; record how well the model ranks held-out trials on the
        study, where ``pareto`` and the dashboard show it."""
        report = self.model.fit(candidates, accuracies)
        self.study.set_user_attr("accuracy_model", report.to_dict())

    def reason(self, origin: str, candidate: Candidate, latency_ms: float, size_bytes: int) -> str | None:
        """Why ``candidate`` is not worth a fine-tune, or None to fine-tune it."""
        if origin not in SCREENED_ORIGINS or not self.model.ready or self.in_a_row >= self.most_in_a_row:
            self.in_a_row = 0
            return None
        front = [tuple(t.values) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("status") == "evaluated" and all(v <= 0 for v in t.constraints.values())]
        why = self.model.screen(candidate, latency_ms, size_bytes, front)
        if why is None:
            self.in_a_row = 0
        else:
            self.in_a_row += 1
            self.screened += 1
        return why
