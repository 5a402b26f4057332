"""How a search judges a candidate's latency: one pipeline, in one order, read the same way by the
budget check, the repair, the allocations and the seeds.

1. **Level.** The hardware model predicts at the level this search judges at: its model's own
   candidates' (``hardware.model_level``), the host's (``hardware.host_level``), or the level it
   was profiled at. Set once, when the problem is built (``SearchProblem.at_level``).
2. **Neighbour correction.** The prediction, and its deviation, scaled by what the measured
   candidates nearest to it say about the predictor there (``local_correction``).
3. **Measurement near the budget.** A trial whose corrected prediction comes within a margin of
   the budget is timed before its fine-tune (``near_budget``); the measurement replaces the
   prediction and joins the correction's rows, so its neighbours are read through it from then on.
4. **Chance constraint.** A predicted latency meets the budget when its upper bound at the
   search's confidence does; a measured one when it does itself (``budget.ChanceConstraint``).

The repair, the allocations and the seeds read steps 1 and 2 (``CorrectedPredictor``), so they aim
at the budget as the check will read it: a candidate measured over it is read at its measurement,
and its repair aims at the budget itself. Only trials are measured (step 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.space import Candidate
from .budget import ChanceConstraint
from .local_correction import LocalCorrection
from .near_budget import NearBudgetTimer

__all__ = ["CorrectedPredictor", "LatencyPipeline", "LatencyVerdict", "search_latency_pipeline"]


class CorrectedPredictor:
    """The hardware model's predictions (at the search's level) as the local correction reads
    them: ``predict_candidates`` as ``HardwareModel`` has it, for the repair and the allocations."""

    def __init__(self, hardware, correction: LocalCorrection) -> None:
        self.hardware, self.correction = hardware, correction

    def predict_candidates(self, analysis, candidates) -> tuple[np.ndarray, np.ndarray]:
        ms, std = self.hardware.predict_candidates(analysis, candidates)
        if not self.correction.rows:
            return ms, std
        factors = np.array([self.correction.factor(c) for c in candidates])
        return np.asarray(ms) * factors, np.asarray(std) * factors


@dataclass(frozen=True)
class LatencyVerdict:
    predicted_ms: float  # step 1: the hardware model at the search's level
    corrected_ms: float  # step 2
    std_ms: float  # the corrected prediction's deviation
    measured_ms: float | None  # step 3, where timed
    latency_ms: float  # what the study is told: the measurement where there is one, else the corrected prediction
    over_budget_ms: float  # step 4: > 0 misses the budget by that much


class LatencyPipeline:
    def __init__(self, problem, correction: LocalCorrection, budget_ms: float, chance: ChanceConstraint,
                 folder: Path, timer: NearBudgetTimer | None = None) -> None:
        """``correction``: the search's rows (``LocalCorrection.load`` of ``folder``), which each
        measurement here extends; ``timer``: None where nothing is timed."""
        self.problem, self.correction, self.budget_ms, self.chance = problem, correction, budget_ms, chance
        self.folder, self.timer = Path(folder), timer
        self.predictor = CorrectedPredictor(problem.hardware, correction)

    def judge(self, trial: int, candidate: Candidate) -> LatencyVerdict:
        prediction = self.problem.predict(candidate)
        corrected_ms, std_ms = self.correction.correct(candidate, prediction.ms, prediction.std_ms)
        measured_ms = None
        if self.timer is not None and self.timer.wants(corrected_ms, self.chance.upper_ms(corrected_ms, std_ms)):
            measured_ms = self.timer.measure(candidate)
            self.correction.add(trial, candidate, prediction.ms, corrected_ms, measured_ms, self.folder)
        latency = corrected_ms if measured_ms is None else measured_ms
        over = self.chance.over_budget_ms(latency, std_ms, self.budget_ms, measured=measured_ms is not None)
        return LatencyVerdict(prediction.ms, corrected_ms, std_ms, measured_ms, latency, over)


def search_latency_pipeline(settings, problem, budget_ms: float, *, correction: LocalCorrection | None = None,
                            time_everything: bool = False) -> LatencyPipeline:
    """The pipeline ``settings`` asks for: candidates near the budget timed where the fine-tunes
    run in this process (timing beside a worker's fine-tune would read the contention);
    ``correction``: the search's rows (default: those ``settings.out`` holds)."""
    margin = settings.latency.measure_near_budget
    timer = (NearBudgetTimer(problem, settings.problem.model, settings.problem.input_size, budget_ms, margin,
                             everything=time_everything)
             if margin > 0 and settings.execution.executor == "local" else None)
    if correction is None:
        correction = LocalCorrection.load(problem.space, settings.out)
    return LatencyPipeline(problem, correction, budget_ms, ChanceConstraint(settings.latency.budget_confidence),
                           settings.out, timer)
