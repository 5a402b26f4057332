"""Pick the front point to export under a latency budget by measuring, not by prediction alone.

A search keeps the candidates *predicted* under its budget, so the ones it keeps near the budget
are, more often than not, those the predictor underestimates (the winner's curse; boundary repair
makes it worse, since it stops at the first candidate predicted to fit). In the search benchmark,
MobileNet-V2's most accurate point predicted under a 0.5x budget measured 1.16x the budget: its
prediction was 14.5% fast, against +3% on average for that model.

So ``export --best-under`` times the front points first. The most accurate front points predicted
near the budget (up to ``SLACK`` over it: the predictor errs both ways) are built with the
baseline's weights, exported and timed together with the baseline as export cards are
(``measure_in_sweeps``), a batch at a time, most accurate first; the first that *measures* within
the budget, with a margin for measurement noise, is chosen. A budget relative to the baseline (``0.5x``) is checked against the
baseline measured in the same passes, so a slow hour on a shared machine moves both sides alike.

Latency does not depend on the weights' values, so the untrained build times as the fine-tuned
export will (each takes a few seconds to export and time).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..search.budget import MEASURED_MARGIN, Budget
from ..hardware.onnx_export import export_onnx
from ..hardware.measure import SWEEPS, measure_in_sweeps
from ..search.pareto import TrialRecord, pareto_front
from ..core.space import Candidate

__all__ = ["BATCH", "MARGIN", "SLACK", "MeasuredChoice", "choose_by_measurement", "export_untrained"]

log = logging.getLogger(__name__)

SLACK = 0.10  # front points predicted up to 10% over the budget are timed too
MARGIN = MEASURED_MARGIN  # a point must measure this far under the limit, as the search judged it
BATCH = 6  # front points timed together (with the baseline) before deciding


@dataclass(frozen=True)
class MeasuredChoice:
    chosen: TrialRecord
    fits: bool  # False: no front point measured within the budget; the fastest measured is chosen
    limit_ms: float  # the budget in measured milliseconds (for 0.5x: of the baseline measured here), less MARGIN
    baseline_measured_ms: float | None  # the last measurement of the baseline
    timed: list[dict]  # one per front point timed: trial, accuracy, predicted_ms, measured_ms, limit_ms, fits

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.number, "fits": self.fits, "limit_ms": self.limit_ms,
                "baseline_measured_ms": self.baseline_measured_ms, "slack": SLACK, "margin": MARGIN,
                "timed": self.timed}


def choose_by_measurement(problem, records: Sequence[TrialRecord], budget: Budget, *, sweeps: int = SWEEPS,
                          pause_s: float = 20.0, **interleaved) -> MeasuredChoice | None:
    """The most accurate front point of ``records`` that measures within ``budget`` on this machine.

    ``problem``: the search's ``SearchProblem`` (to build, export and predict candidates). Timed
    as export cards are (``measure_in_sweeps``; ``interleaved``: passes, runs). Returns None when
    no front point is even predicted near the budget.
    """
    predicted_limit = budget.resolve(problem.baseline_ms)
    pool = sorted((r for r in pareto_front(records) if r.latency_ms <= predicted_limit * (1 + SLACK)),
                  key=lambda r: (-r.accuracy, r.latency_ms, r.size_bytes, r.number))
    if not pool:
        return None
    timed: list[dict] = []
    limit_ms, baseline_ms = predicted_limit * (1 - MARGIN), None
    with tempfile.TemporaryDirectory() as tmp:
        shape = tuple(problem.example.shape)
        models = []
        if budget.unit == "x":
            models.append((export_onnx(problem.baseline, problem.example, Path(tmp) / "baseline.onnx").path, shape))
        for start in range(0, len(pool), BATCH):
            batch = pool[start:start + BATCH]
            paths = [(export_untrained(problem, r, Path(tmp) / f"trial{r.number}.onnx"), shape) for r in batch]
            measured = [fastest for fastest, _ in measure_in_sweeps(models + paths, sweeps=sweeps, pause_s=pause_s,
                                                                    **interleaved)]
            if budget.unit == "x":
                baseline_ms = measured[0].best_ms
                limit_ms = budget.value * baseline_ms * (1 - MARGIN)
            for record, timing in zip(batch, measured[len(models):]):
                timed.append({"trial": record.number, "accuracy": record.accuracy, "predicted_ms": record.latency_ms,
                              "measured_ms": timing.best_ms, "limit_ms": limit_ms, "fits": timing.best_ms <= limit_ms})
                log.info("trial %d: predicted %.3f ms, measured %.3f ms (limit %.3f ms)", record.number,
                         record.latency_ms, timing.best_ms, limit_ms)
            # Batches go most accurate first, so the first batch with a fit holds the choice; a
            # later batch's limit (a new baseline measurement) only decides that batch's points.
            fitting = [t for t in timed[start:] if t["fits"]]
            if fitting:
                return MeasuredChoice(_record(pool, fitting[0]["trial"]), True, limit_ms, baseline_ms, timed)
    fastest = min(timed, key=lambda t: t["measured_ms"] / t["limit_ms"])
    log.warning("no front point measured within %s (%.3f ms); exporting the fastest measured, trial %d (%.3f ms)",
                budget, limit_ms, fastest["trial"], fastest["measured_ms"])
    return MeasuredChoice(_record(pool, fastest["trial"]), False, limit_ms, baseline_ms, timed)


def export_untrained(problem, record: TrialRecord, path: Path) -> Path:
    """The candidate built on the baseline's weights and exported: it times as the fine-tuned one will."""
    model = problem.build(Candidate.from_dict(record.candidate))
    return export_onnx(model, problem.example, path, calibration=problem.calibration[:1]).path


def _record(pool: list[TrialRecord], number: int) -> TrialRecord:
    return next(r for r in pool if r.number == number)
