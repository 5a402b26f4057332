"""Measured misses fed back to their neighbours: a local correction of the latency predictor.

A search times, untrained, the candidates predicted near its budget (``near_budget``). Each
measurement is a row (candidate, predicted, measured), and each later candidate's prediction is
multiplied by what its nearest measured neighbours say about the predictor there: the weighted
geometric mean of their ratios measured / predicted. Why neighbours in decision space (the share
of the Space's decisions on which two candidates differ): the predictor misses by the kernels a
candidate runs (a run of int8 layers priced wrongly, a pruned width off the fast path), and
candidates that decide alike run alike kernels; a boundary repair, above all, differs from the
candidate it repairs in a few decisions. Why a ratio: misses grow with the latency.

A row weighs ``exp(-distance / BANDWIDTH)``, and a pseudo-row of ratio 1 at distance 0 weighs
``PRIOR_WEIGHT``: with one close row the correction goes about half way, with many close ones
nearly all the way, and rows far away change little. A candidate that was itself measured is
read at its measurement (the mean log ratio of its own rows): nothing is closer.

The model's own candidates, timed before the search under a relative budget or on an unprofiled
model (``hardware.model_level``: the simple policies among them), join as rows with negative
trial numbers (``seed_with_own_candidates``), so the warm starts are told their measured latency
and their neighbours are corrected from the first trial; ``summary`` leaves them out. The correction is applied before the
budget check and before the choice of what to time. Rows are kept in the search folder
(``latency/near_budget.csv``, next to the model's own timings), so a resumed search corrects as
the first run did; each row also keeps the prediction as corrected when it was timed (from the
earlier rows only), so how far the predictions missed before and after the correction is read on
candidates the correction had not seen.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.space import Candidate, Space
from ..files import write_csv_atomic

__all__ = ["BANDWIDTH", "LocalCorrection", "MeasuredMiss", "NEIGHBOURS", "OWN_ROWS_FILE", "PRIOR_WEIGHT", "ROWS_FILE"]

ROWS_FILE = Path("latency") / "near_budget.csv"
OWN_ROWS_FILE = Path("latency") / "own_candidates.csv"  # written by ``hardware.model_level``
NEIGHBOURS = 8
BANDWIDTH = 0.1  # in shares of the decisions: a row differing in a tenth of them weighs 1/e
PRIOR_WEIGHT = 1.0
_FIELDS = ("trial", "predicted_ms", "corrected_ms", "measured_ms", "candidate")


@dataclass(frozen=True)
class MeasuredMiss:
    trial: int
    candidate: Candidate
    predicted_ms: float  # by the hardware model, at the search's level
    corrected_ms: float  # the prediction as corrected by the rows measured before this one
    measured_ms: float

    def to_row(self) -> dict:
        return {"trial": self.trial, "predicted_ms": self.predicted_ms, "corrected_ms": self.corrected_ms,
                "measured_ms": self.measured_ms, "candidate": self.candidate.to_json()}

    @classmethod
    def from_row(cls, row: dict) -> MeasuredMiss:
        return cls(int(row["trial"]), Candidate.from_json(row["candidate"]), float(row["predicted_ms"]),
                   float(row["corrected_ms"]), float(row["measured_ms"]))


class LocalCorrection:
    """``correct(candidate, ms, std_ms)`` by the measured rows nearest to ``candidate``."""

    def __init__(self, space: Space, rows: list[MeasuredMiss] | tuple = ()) -> None:
        self.space = space
        self.rows: list[MeasuredMiss] = []
        self._codes = np.zeros((0, len(space.variables)), dtype=np.int64)
        self._log_ratios = np.zeros(0)
        for row in rows:
            self._remember(row)

    @classmethod
    def load(cls, space: Space, folder: Path) -> LocalCorrection:
        """The rows a search kept in ``folder`` (none when it has not timed any)."""
        path = Path(folder) / ROWS_FILE
        if not path.is_file():
            return cls(space)
        with open(path, newline="") as handle:
            return cls(space, [MeasuredMiss.from_row(row) for row in csv.DictReader(handle)])

    def factor(self, candidate: Candidate) -> float:
        """measured / predicted as the nearest rows read it, shrunk toward 1 (see the module's doc)."""
        if not self.rows:
            return 1.0
        distance = (self._codes != self._code(candidate)).mean(axis=1)
        itself = distance == 0
        if itself.any():
            return float(np.exp(self._log_ratios[itself].mean()))
        nearest = np.argsort(distance, kind="stable")[:NEIGHBOURS]
        weights = np.exp(-distance[nearest] / BANDWIDTH)
        return float(np.exp((weights * self._log_ratios[nearest]).sum() / (weights.sum() + PRIOR_WEIGHT)))

    def correct(self, candidate: Candidate, ms: float, std_ms: float) -> tuple[float, float]:
        """The prediction and its deviation, both scaled by ``factor``."""
        factor = self.factor(candidate)
        return ms * factor, std_ms * factor

    def add(self, trial: int, candidate: Candidate, predicted_ms: float, corrected_ms: float,
            measured_ms: float, folder: Path) -> None:
        """Keep one measurement and rewrite the rows in ``folder`` (atomically: a kill keeps the old file)."""
        self._remember(MeasuredMiss(trial, candidate, predicted_ms, corrected_ms, measured_ms))
        path = Path(folder) / ROWS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(path, _FIELDS, [row.to_row() for row in self.rows])

    def seed_with_own_candidates(self, folder: Path, level: float) -> None:
        """Add the rows of ``folder``'s own-candidate timings, their predictions (made at the hardware
        model's own level) scaled by ``level``, the one the search predicts at."""
        with open(Path(folder) / OWN_ROWS_FILE, newline="") as handle:
            own = list(csv.DictReader(handle))
        for number, row in enumerate(own, start=1):
            predicted = float(row["predicted_ms"]) * level
            self._remember(MeasuredMiss(-number, Candidate.from_json(row["candidate"]), predicted, predicted,
                                        float(row["measured_ms"])))
        path = Path(folder) / ROWS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(path, _FIELDS, [row.to_row() for row in self.rows])

    def summary(self) -> dict:
        """How many candidates were timed near the budget, and the median of |predicted / measured - 1|
        before and after the correction (None before any); the own candidates are not counted."""
        rows = [row for row in self.rows if row.trial >= 0]
        return {"measurements": len(rows), "file": str(ROWS_FILE),
                "median_miss_before": _median_miss([r.predicted_ms for r in rows], rows),
                "median_miss_after": _median_miss([r.corrected_ms for r in rows], rows)}

    def _remember(self, row: MeasuredMiss) -> None:
        self.rows.append(row)
        self._codes = np.vstack([self._codes, self._code(row.candidate)])
        self._log_ratios = np.append(self._log_ratios, math.log(row.measured_ms / row.predicted_ms))

    def _code(self, candidate: Candidate) -> np.ndarray:
        """Each decision as the position of its value among its variable's choices (-1: none of them)."""
        code = []
        for var in self.space.variables:
            value = self.space.value_of(candidate, var)
            code.append(var.choices.index(value) if value in var.choices else -1)
        return np.array(code, dtype=np.int64)


def _median_miss(predictions: list[float], rows: list[MeasuredMiss]) -> float | None:
    if not rows:
        return None
    return statistics.median(abs(p / r.measured_ms - 1) for p, r in zip(predictions, rows))
