"""Measurement in the loop: a candidate predicted near the budget is timed before its fine-tune.

A search that repairs hundreds of candidates to just under its budget keeps, among them, the ones
the predictor underestimates: the error of the prediction is what decides which side of the line
a candidate lands on. So a candidate whose prediction comes within a margin of the budget (either
side; from its mean up to its latency at the search's confidence, ``budget.ChanceConstraint``) is
exported untrained and timed with the one protocol (seconds: latency does not depend on the
weights' values), and the study is told its measured latency, not the prediction: a front point
near the budget is one that was measured there. One measured over the budget is told at once, as a
predicted one is, and repaired; every miss corrects the predictions of its neighbours, and of
itself, from then on (``local_correction``), so the repair starts from its measurement. The order
of these steps is ``latency_pipeline``'s.

Where the predictor cannot be trusted for this model even at its level (its own candidates, each
read at the level of the others, still miss by more than ``UNRELIABLE_LEVEL``: a family it never
saw, whose kernels it reads unevenly), a front point far under the budget is no better known than
one near it, and the export card would state a latency that is not the model's. So then every
candidate predicted up to the margin over the budget is timed: a few seconds beside its fine-tune.

Timing shares the machine with whatever else runs, so it is on only when the fine-tunes run in
the driver's own process (the local executor): they are not running while the driver prepares
the next trial.
"""

from __future__ import annotations

from ..hardware.candidates import ModelUnderTest, measure_candidates

__all__ = ["UNRELIABLE_LEVEL", "NearBudgetTimer", "times_every_candidate"]

UNRELIABLE_LEVEL = 0.15  # RMS relative error of the own candidates' predictions at the model's level


def times_every_candidate(host_level) -> bool:
    """Whether ``host_level`` (a ``HostLevel`` or None) leaves predictions off by more than
    ``UNRELIABLE_LEVEL`` for this model, so that every candidate is timed, not only those near the budget."""
    error = None if host_level is None else host_level.residual_error
    return error is not None and error > UNRELIABLE_LEVEL


class NearBudgetTimer:
    """Times candidates of the search's model whose prediction is within ``margin`` of ``budget_ms``
    (``everything``: any up to the margin over it)."""

    def __init__(self, problem, model: str, input_size: int, budget_ms: float, margin: float, *,
                 everything: bool = False) -> None:
        self.target = ModelUnderTest(model, input_size, problem.baseline, problem.analysis, problem.example)
        self.threads = problem.hardware.metadata.get("threads", 1)
        self.low, self.high = (0.0 if everything else budget_ms * (1 - margin)), budget_ms * (1 + margin)

    def wants(self, predicted_ms: float, upper_ms: float | None = None) -> bool:
        """Whether the prediction (its mean, up to ``upper_ms`` at the search's confidence) comes
        within the margin of the budget: where the prediction's error decides the verdict."""
        upper_ms = predicted_ms if upper_ms is None else upper_ms
        return predicted_ms <= self.high and upper_ms >= self.low

    def measure(self, candidate) -> float:
        """The candidate's latency in ms, as profiling and export cards time it (the fastest run)."""
        (measured,) = measure_candidates([(self.target, candidate)], threads=self.threads)
        return measured.best_ms
