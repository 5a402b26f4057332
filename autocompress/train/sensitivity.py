"""Measured sensitivities: the damage each decision value does on its own to the trained model.

For every variable of the Space and every value other than its uncompressed one, the model is
compressed by that one decision (``apply_candidate`` of the uncompressed Candidate with that
decision alone), its BatchNorm statistics are recomputed on training batches (a pruned or replaced
layer shifts the statistics of what follows, and a fine-tune would fix that first), and its logits
on a fixed calibration sample are compared with the trained model's, recalibrated the same way
(so what recalibration alone moves cancels out): the mean KL divergence KL(teacher || compressed)
at the fine-tune's distillation temperature, times its square as in the distillation loss, in nats
per image, and the share of images both rank first alike. At temperature 1 a teacher sure of
nearly every image hides most of what a decision changes: an int4 stem that moves the logits by
a few percent barely moves probabilities already near 1. No
fine-tune: this is how much a decision breaks, which HAWQ, MCT and FastNAS measure before they
allocate, not how much of it training recovers.

The same measurement of a whole candidate (``JointDamage``) is what the accuracy model leans on
once trials are fine-tuned: damages do not add up (on MobileNet-V2 at a quarter of its latency,
the sum of a repair's damages ranked its fine-tuned accuracy far worse than its own damage did),
and measuring one candidate costs a forward pass, a fraction of a second against a fine-tune.

A reference row (variable ``(none)``) measures the uncompressed model through the same steps: the
floor below which a decision's damage is noise (zero where recalibration is deterministic).

Variables are independent jobs, spread over workers through ``map_jobs`` like the blockwise
distillation of cells; the table is cached in the search folder's ``sensitivity/`` and each chunk
is written when done, so a resumed search, ``inspect`` and a kill lose nothing measured.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..files import write_csv_atomic
from ..core.analysis import ModelAnalysis
from ..core.candidate import Candidate
from ..core.space import Space
from ..techniques import apply_candidate
from .training import predict, recompute_batchnorm_statistics, top1

__all__ = ["REFERENCE", "JointDamage", "SensitivityConfig", "Sensitivities", "measure_sensitivities", "value_key"]

REFERENCE = "(none)"  # the row of the uncompressed model, recalibrated like every other
_FIELDS = ("variable", "value", "kl", "agreement", "seconds", "where")


@dataclass(frozen=True)
class SensitivityConfig:
    samples: int = 256  # calibration images whose logits are compared
    recalibration_batches: int = 8  # training batches of 64 that recompute BatchNorm statistics
    variables_per_job: int = 4  # a job carries the model once: a few variables amortise that
    temperature: float = 4.0  # DistillationConfig's: damage as the fine-tune's loss sees it

    def __post_init__(self) -> None:
        if self.samples < 8 or self.recalibration_batches < 0 or self.variables_per_job < 1 or self.temperature <= 0:
            raise ValueError(f"invalid sensitivity settings: {self}")


def value_key(value) -> str:
    """How a decision value is written in the table (``0.5``, ``8``, ``True``, ``mb e3 k5``)."""
    return str(value)


class Sensitivities:
    """The damage table: ``kl(variable, value)`` above the floor; ``rows`` also hold each top-1 agreement."""

    def __init__(self, rows: dict[tuple[str, str], dict]) -> None:
        self.rows = rows
        reference = rows.get((REFERENCE, ""), {})
        self.floor = float(reference.get("kl", 0.0))

    def kl(self, variable: str, value) -> float:
        """Damage above the floor (never negative); 0 for a value never measured (the neutral one)."""
        row = self.rows.get((variable, value_key(value)))
        return max(0.0, float(row["kl"]) - self.floor) if row else 0.0

    def by_variable(self) -> dict[str, dict[str, float]]:
        """``{variable: {value: damage}}`` in table order, the reference left out."""
        table: dict[str, dict[str, float]] = {}
        for variable, value in self.rows:
            if variable != REFERENCE:
                table.setdefault(variable, {})[value] = self.kl(variable, value)
        return table

    def __len__(self) -> int:
        return sum(1 for variable, _ in self.rows if variable != REFERENCE)


@dataclass(frozen=True)
class _Context:
    """What every job reads: put once into a worker's memory (``map_jobs``'s ``shared``)."""

    model: nn.Module
    uncompressed: Candidate
    analysis: ModelAnalysis
    example: torch.Tensor
    rules: object
    cell_weights: dict
    images: torch.Tensor
    teacher: torch.Tensor
    recalibration: TensorDataset
    config: SensitivityConfig


def _recalibrated_logits(model: nn.Module, images: torch.Tensor, recalibration: TensorDataset,
                         config: SensitivityConfig) -> torch.Tensor:
    if config.recalibration_batches:
        recompute_batchnorm_statistics(model, recalibration, batches=config.recalibration_batches)
    return predict(model, images).double()


def _context(model: nn.Module, space: Space, example: torch.Tensor, images: torch.Tensor,
             recalibration: TensorDataset, rules, cell_weights: dict | None, config: SensitivityConfig) -> _Context:
    # The teacher goes through the same steps as every decision, so recalibration alone costs nothing.
    teacher = _recalibrated_logits(copy.deepcopy(model), images, recalibration, config)
    return _Context(model, space.default(), space.analysis, example, rules, dict(cell_weights or {}), images, teacher,
                    recalibration, config)


def _damage(context: _Context, candidate) -> tuple[float, float]:
    model = apply_candidate(context.model, candidate, context.analysis, context.example, rules=context.rules,
                            cell_weights=context.cell_weights)
    logits = _recalibrated_logits(model, context.images, context.recalibration, context.config)
    teacher, t = context.teacher.double(), context.config.temperature
    kl = (teacher / t).softmax(1) * ((teacher / t).log_softmax(1) - (logits / t).log_softmax(1))
    return float(kl.sum(1).mean() * t * t), top1(logits, teacher)


class JointDamage:
    """``damage(candidate)``: the damage of the whole candidate, measured as one decision's is
    (the teacher's logits computed once, here); remembered by candidate."""

    def __init__(self, model: nn.Module, space: Space, example: torch.Tensor, images: torch.Tensor,
                 recalibration: TensorDataset, *, rules=None, cell_weights: dict | None = None,
                 config: SensitivityConfig = SensitivityConfig()) -> None:
        self.context = _context(model, space, example, images[: config.samples], recalibration, rules, cell_weights,
                                config)
        self.measured: dict[str, float] = {}

    def __call__(self, candidate: Candidate) -> float:
        key = candidate.to_json()
        if key not in self.measured:
            torch.manual_seed(0)  # as the table's rows are measured: a rerun reads the same damage
            self.measured[key] = _damage(self.context, candidate)[0]
        return self.measured[key]


def _measure(context: _Context, job: list[tuple[str, str, str, object]]) -> list[dict]:
    """One job: ``(variable, kind, unit, value)`` decisions, each applied alone; a row each."""
    torch.manual_seed(0)  # a technique that draws random numbers then damages alike on every worker and rerun
    where = f"{socket.gethostname()}:{os.getpid()}"
    base = context.uncompressed
    rows = []
    for variable, kind, unit, value in job:
        started = time.perf_counter()
        candidate = base if variable == REFERENCE else base.with_decision(kind, unit, value)
        kl, agreement = _damage(context, candidate)
        rows.append({"variable": variable, "value": _key((variable, kind, unit, value))[1], "kl": kl,
                     "agreement": agreement, "seconds": time.perf_counter() - started, "where": where})
    return rows


def measure_sensitivities(model: nn.Module, space: Space, example: torch.Tensor, images: torch.Tensor,
                          recalibration: TensorDataset, folder: Path, *, rules=None, cell_weights: dict | None = None,
                          config: SensitivityConfig = SensitivityConfig(),
                          map_jobs: Callable[..., Iterable] | None = None, progress: bool = True) -> Sensitivities:
    """The damage of every decision value of ``space`` alone on ``model``: read from ``folder`` where
    a run with the same settings left it, measured (and written there) otherwise.

    ``images``: the calibration sample (its first ``config.samples``); ``recalibration``: training
    data for the BatchNorm statistics. ``map_jobs(fn, jobs, shared=...)`` yields ``fn(shared, job)``
    for each job in any order (default: one after the other here)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = images[: config.samples]
    settings, table = folder / "settings.json", folder / "sensitivity.csv"
    wanted = {"config": asdict(config), "images": len(images)}
    if settings.is_file() and json.loads(settings.read_text()) != wanted:
        table.unlink(missing_ok=True)  # other settings: the damages would not compare
    settings.write_text(json.dumps(wanted, indent=2) + "\n")
    rows = _read(table)
    wanted_rows = [(REFERENCE, "", "", None)] + [
        (v.name, v.kind, v.unit, value) for v in space.variables for value in v.choices if value != space.neutral(v)]
    todo = [d for d in wanted_rows if _key(d) not in rows]
    if todo:
        context = _context(model, space, example, images, recalibration, rules, cell_weights, config)
        jobs = _chunks(todo, config.variables_per_job)
        with tqdm(total=len(wanted_rows), initial=len(wanted_rows) - len(todo), desc="sensitivities",
                  unit="decision", disable=not progress) as bar:
            for measured in (map_jobs or _one_by_one)(_measure, jobs, shared=context):
                for row in measured:
                    rows[row["variable"], row["value"]] = row
                _write(table, rows)
                bar.update(len(measured))
    return Sensitivities({key: rows[key] for key in sorted(rows, key=_table_order(wanted_rows))})


def _key(decision: tuple) -> tuple[str, str]:
    """A decision's row in the table: (variable, value as written); the reference has no value."""
    variable, _, _, value = decision
    return variable, "" if variable == REFERENCE else value_key(value)


def _chunks(todo: list, size: int) -> list[list]:
    """Consecutive decisions of one variable stay together, so one job builds one variable's values."""
    jobs, current = [], []
    for decision in todo:
        if current and len(current) >= size and current[-1][0] != decision[0]:
            jobs.append(current)
            current = []
        current.append(decision)
    return jobs + ([current] if current else [])


def _table_order(wanted: list) -> Callable:
    order = {_key(d): i for i, d in enumerate(wanted)}
    return lambda key: order.get(key, len(order))


def _one_by_one(fn, jobs, *, shared):
    for job in jobs:
        yield fn(shared, job)


def _read(path: Path) -> dict[tuple[str, str], dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = {}
        for row in csv.DictReader(handle):
            try:
                row["kl"], row["agreement"] = float(row["kl"]), float(row["agreement"])
            except (KeyError, TypeError, ValueError):
                continue  # a line a kill cut short: measured again
            rows[row["variable"], row["value"]] = row
    return rows


def _write(path: Path, rows: dict) -> None:
    write_csv_atomic(path, _FIELDS, rows.values())  # never a half-written table, even when killed
