"""The Pareto front of a search, its hypervolume, and the result files a user reads.

The Optuna study is the one source of truth: ``records_from_study`` flattens its trials into plain
``TrialRecord`` values once, and everything else here (front, best point under the budget, tables,
plots, ``pareto.json``) works on those records, so it neither imports torch nor touches storage.
Objectives: accuracy (fraction in [0, 1], maximized), predicted latency (ms), size (bytes), both
minimized. Sizes are shown in KB of 1000 bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ..core.candidate import candidate_summary
from ..errors import ResultsError

__all__ = [
    "ResultsError", "TrialRecord", "best_under", "dominated_area", "hypervolume_2d",
    "pareto_front", "records_from_study", "summary_table",
]

# Only these statuses carry a measured accuracy; "over_budget" trials were never fine-tuned.
SCORED_STATUSES = ("evaluated", "stopped_early")
EXPECTED_DIRECTIONS = (StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE, StudyDirection.MINIMIZE)
PARETO_JSON_SCHEMA = 1
_STATES = {
    TrialState.COMPLETE: "complete", TrialState.FAIL: "failed", TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting", TrialState.PRUNED: "pruned",
}
_TRIAL_COLUMNS = (
    "number", "state", "status", "origin", "accuracy", "latency_ms", "size_bytes", "feasible", "finetune_steps",
    "seconds", "fail_reason", "latency_measured",
)
_FRONT_COLUMNS = (
    "number", "accuracy", "latency_ms", "latency_std_ms", "size_bytes", "size_ratio", "latency_ratio", "status",
    "origin", "finetune_steps", "seconds", "candidate", "latency_measured",
)


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # "complete", "failed", "running", "waiting" (or "pruned" if a driver ever tells so)
    status: str  # search's own verdict: "evaluated", "over_budget", "stopped_early", ...
    origin: str
    accuracy: float | None  # None when never measured (over budget, failed before scoring)
    latency_ms: float | None
    latency_std_ms: float | None
    size_bytes: int | None
    feasible: bool  # complete, not over budget, and every Optuna constraint <= 0
    candidate: dict[str, Any] = field(default_factory=dict)
    finetune_steps: int = 0
    seconds: float | None = None
    fail_reason: str | None = None
    latency_measured: bool = False  # timed before its fine-tune (``search.near_budget``), else predicted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        """Inverse of to_dict; extra keys (a pareto.json point's ratios) are ignored."""
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls)
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"a TrialRecord needs {missing}, got keys {sorted(data)}")
        return cls(**{name: data[name] for name in names if name in data})


def _float_or_none(value: Any) -> float | None:
    # NaN/inf would poison comparisons and JSON, so they count as "not measured".
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    state = _STATES.get(trial.state, trial.state.name.lower())
    status = str(attrs.get("status", "evaluated" if state == "complete" else state))
    values = trial.values if trial.values is not None and len(trial.values) == 3 else None
    accuracy, latency, size = values if values is not None else (
        attrs.get("accuracy"), attrs.get("predicted_ms"), attrs.get("size_bytes"))
    if status == "over_budget":
        accuracy = None  # the objective holds a placeholder 0.0 for trials that were never fine-tuned
    # Feasible = a finished result within every recorded constraint. Without a budget the search
    # sets no constraint, and then every complete trial is feasible.
    feasible = state == "complete" and status != "over_budget" and all(v <= 0.0 for v in trial.constraints.values())
    seconds = attrs.get("seconds")
    if seconds is None and trial.duration is not None:
        seconds = trial.duration.total_seconds()
    return TrialRecord(
        number=trial.number, state=state, status=status, origin=str(attrs.get("origin", "")),
        accuracy=_float_or_none(accuracy), latency_ms=_float_or_none(latency),
        latency_std_ms=_float_or_none(attrs.get("predicted_std_ms")),
        size_bytes=None if size is None else int(size),
        feasible=feasible, candidate=dict(attrs.get("candidate") or {}),
        finetune_steps=int(attrs.get("finetune_steps", 0)), seconds=_float_or_none(seconds),
        fail_reason=None if attrs.get("fail_reason") is None else str(attrs["fail_reason"]),
        latency_measured="measured_ms" in attrs,
    )


def records_from_study(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of an autocompress study as a TrialRecord, in trial-number order."""
    if tuple(study.directions) != EXPECTED_DIRECTIONS:
        names = [d.name.lower() for d in study.directions]
        raise ResultsError(
            f"study {study.study_name!r} has directions {names}, not autocompress's [maximize, minimize, minimize] "
            "(accuracy, latency, size); open the storage and study name that `autocompress search` wrote")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return [_record(t) for t in trials]


def _scored(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [
        r for r in records
        if r.state == "complete" and r.feasible and r.status in SCORED_STATUSES
        and r.accuracy is not None and r.latency_ms is not None and r.size_bytes is not None
    ]


def pareto_front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Non-dominated complete, feasible, scored records, by latency ascending.

    Of several records with exactly the same three objectives only the lowest trial number stays.
    """
    # In this order a record can only be dominated by one sorted before it, and dominance is
    # transitive, so comparing against the front found so far suffices (not all n^2 pairs).
    ordered = sorted(_scored(records), key=lambda r: (-r.accuracy, r.latency_ms, r.size_bytes, r.number))
    front: list[TrialRecord] = []
    for r in ordered:
        if not any(f.accuracy >= r.accuracy and f.latency_ms <= r.latency_ms and f.size_bytes <= r.size_bytes
                   for f in front):
            front.append(r)
    return sorted(front, key=lambda r: (r.latency_ms, -r.accuracy, r.size_bytes, r.number))


def best_under(records: Sequence[TrialRecord], budget_ms: float | None) -> TrialRecord | None:
    """The most accurate front point within the budget (ties: lower latency); None when none fits."""
    fitting = [r for r in pareto_front(records) if budget_ms is None or r.latency_ms <= budget_ms]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (-r.accuracy, r.latency_ms, r.size_bytes, r.number))


def hypervolume_2d(records: Sequence[TrialRecord], *, ref_latency_ms: float, ref_accuracy: float = 0.0) -> float:
    """Area (accuracy fraction x ms) that the scored records dominate, up to the reference point.

    Points that are not better than the reference in both accuracy and latency add nothing. Use
    the same reference for the two searches being compared, or the numbers mean nothing.
    """
    return dominated_area([(r.latency_ms, r.accuracy) for r in _scored(records)],
                          ref_latency_ms=ref_latency_ms, ref_accuracy=ref_accuracy)


def dominated_area(points: Sequence[tuple[float, float]], *, ref_latency_ms: float, ref_accuracy: float = 0.0) -> float:
    """``hypervolume_2d`` of bare ``(latency, accuracy)`` points (expected ones, say)."""
    if not (math.isfinite(ref_latency_ms) and math.isfinite(ref_accuracy)):
        raise ValueError(f"hypervolume reference must be finite, got {ref_latency_ms=} {ref_accuracy=}")
    ordered = sorted((latency, -accuracy) for latency, accuracy in points
                     if latency < ref_latency_ms and accuracy > ref_accuracy)
    area, best_accuracy = 0.0, ref_accuracy
    # Sweep by latency: each point that raises the best accuracy so far adds the slab between the
    # old and new best, which it alone covers from its latency up to the reference latency.
    for latency, neg_accuracy in ordered:
        if -neg_accuracy > best_accuracy:
            area += (ref_latency_ms - latency) * (-neg_accuracy - best_accuracy)
            best_accuracy = -neg_accuracy
    return area


def _check_baseline(baseline: Mapping[str, Any]) -> None:
    missing = [k for k in ("accuracy", "latency_ms", "size_bytes") if k not in baseline]
    if missing or not baseline["latency_ms"] > 0 or not baseline["size_bytes"] > 0:
        raise ValueError(f"baseline needs accuracy, latency_ms > 0 and size_bytes > 0, got {dict(baseline)}")


def summary_table(front: Sequence[TrialRecord], *, budget_ms: float | None, baseline: Mapping[str, Any]) -> str:
    """The front as an aligned plain-text table, baseline first; '*' marks the best point under the budget."""
    _check_baseline(baseline)
    if not front:
        return "no trial on the Pareto front (every trial failed, went over budget or is still running)"
    best = best_under(front, budget_ms)
    score = baseline.get("score", "accuracy")
    header = ["", "trial", "acc %" if score == "accuracy" else f"{score} %", "latency ms", "x latency", "size KB", "x size", "under budget", "origin",
              "architecture and compression"]
    rows = [["", "base", f"{100 * baseline['accuracy']:.2f}", f"{baseline['latency_ms']:.3f}", "1.00",
             f"{baseline['size_bytes'] / 1000:.1f}", "1.00", "", "-", "uncompressed"]]
    for r in front:
        under = "-" if budget_ms is None else ("yes" if r.latency_ms <= budget_ms else "no")
        rows.append([
            "*" if best is not None and r.number == best.number else "", str(r.number), f"{100 * r.accuracy:.2f}",
            f"{r.latency_ms:.3f}" + ("m" if r.latency_measured else ""), f"{r.latency_ms / baseline['latency_ms']:.2f}", f"{r.size_bytes / 1000:.1f}",
            f"{r.size_bytes / baseline['size_bytes']:.2f}", under, r.origin or "-", candidate_summary(r.candidate)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    # Numbers right-aligned for easy comparison; the free text (origin, what it is: last) left-aligned.
    lines = ["  ".join(cell.ljust(w) if i in (0, len(header) - 2, len(header) - 1) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in [header, *rows]]
    if any(r.latency_measured for r in front):
        lines.append("m: latency measured before the fine-tune (near the budget); the others are predicted")
    if best is not None:
        where = "overall" if budget_ms is None else f"within the {budget_ms:g} ms budget"
        lines.append(f"* best accuracy {where}: trial {best.number}")
    elif budget_ms is not None:
        lines.append(f"no front point fits the {budget_ms:g} ms budget")
    return "\n".join(lines)
