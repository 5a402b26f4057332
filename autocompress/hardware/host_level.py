"""The host's level: how fast this machine runs now, against what its hardware model predicts.

A hardware model carries the speed of the sessions it was measured in. A shared cloud host's speed
drifts from session to session by a few percent, sometimes more (other tenants' cache and memory
traffic, the clock the host is granted): in one validation session on the Intel (AMX) class the
profile's own candidates, re-timed, measured 0.949x their profiled figures, and the predictor,
right in rank (Spearman 0.995), read 4.6% slow across the board (86.7% of fresh candidates within
10%; 92.5% once scaled as below).

The remedy costs seconds: time ``REFERENCES`` of the hardware model's own measured candidates with
the one protocol, now, and scale every prediction by the median ratio of their measurements to
the predictor's reading of them. The median, because a reference that meets a slow spell or that
the predictor reads badly must not move the level; the predictor's reading rather than the profiled
figure, because the level to remove is the predictor's (re-scored leave-one-seed-out in
``benchmarks/level_calibration.py``, measured / profiled cost two sessions 2-3 points that
measured / predicted did not).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import AutocompressError
from ..core.space import Candidate
from .candidates import batch_orders, measure_in_batches_and_sweeps, model_under_test
from .predictor import LatencyPredictor
from .measurements import profile_level_ms, read_model_measurements
from .store import _row_kernels

__all__ = ["REFERENCES", "HostLevel", "measure_host_level", "reference_rows", "reference_prediction_ms"]

REFERENCES = 16


@dataclass(frozen=True)
class HostLevel:
    """``ratio``: the median of measured / predicted over the references; predictions are
    multiplied by it (above 1: the host runs slower now than the hardware model says)."""

    ratio: float
    references: tuple[dict, ...] = ()  # model, input_size, predicted_ms, measured_ms
    # The uncompressed model as measured now, when the references are its own candidates
    # (``model_level``): what a relative budget is a share of.
    baseline_ms: float | None = None

    @classmethod
    def from_references(cls, references: list[dict]) -> HostLevel:
        if not references:
            raise ValueError("a host level needs at least one reference with predicted_ms and measured_ms")
        ratio = float(np.median([r["measured_ms"] / r["predicted_ms"] for r in references]))
        return cls(ratio, tuple(references))

    @classmethod
    def from_dict(cls, data: dict) -> HostLevel:
        baseline = data.get("baseline_ms")
        return cls(float(data["ratio"]), tuple(data.get("references", ())),
                   float(baseline) if baseline is not None else None)

    @property
    def residual_error(self) -> float | None:
        """How far off predictions stay at this level (``rms_error_after`` below); None with fewer
        than two references."""
        return self.to_dict().get("rms_error_after")

    def to_dict(self) -> dict:
        ratios = np.array([r["measured_ms"] / r["predicted_ms"] for r in self.references])
        spread = {"p10_ratio": float(np.percentile(ratios, 10)), "p90_ratio": float(np.percentile(ratios, 90))} \
            if len(ratios) else {}
        if len(ratios) >= 2:
            # how far off the predictions were before the level, and after it with each reference
            # scored by the median of the others (so the figure is not read off what it was fit on)
            others = np.array([np.median(np.delete(ratios, i)) for i in range(len(ratios))])
            spread |= {"rms_error_before": float(np.sqrt(np.mean((1 / ratios - 1) ** 2))),
                       "rms_error_after": float(np.sqrt(np.mean((others / ratios - 1) ** 2)))}
        return asdict(self) | {"references": list(self.references)} | spread


def reference_rows(profiled: list[dict], *, seed: int, input_sizes: list[int] | None = None) -> list[dict]:
    """A seeded sample of ``REFERENCES`` measured candidates (models.csv rows), at ``input_sizes``
    when given, of any model."""
    rows = [r for r in profiled if input_sizes is None or int(r["input_size"]) in input_sizes]
    return random.Random(f"references-{seed}").sample(rows, min(REFERENCES, len(rows)))


def reference_prediction_ms(predictor: LatencyPredictor, row: dict) -> float:
    """The predictor's reading of a measured candidate, from the kernels its row records."""
    return predictor.predict(_row_kernels(row)).ms


def measure_host_level(predictor: LatencyPredictor, folder: Path, *, seed: int = 0, threads: int = 1,
                       sweeps: int = 2) -> HostLevel:
    """Time ``REFERENCES`` of the candidates measured in the hardware model ``folder`` (the fastest
    of ``sweeps`` sweeps, each in batches shuffled anew, as validation does) and set them against
    ``predictor``'s reading of them."""
    profiled = read_model_measurements(Path(folder) / "models.csv")
    rows = reference_rows(profiled, seed=seed)
    if not rows:
        raise AutocompressError(f"{folder} holds no measured candidates to time the host against; pass a folder "
                                "written by `autocompress profile`")
    plan = [(model_under_test(r["model"], int(r["input_size"])), Candidate.from_json(r["candidate"])) for r in rows]
    fastest = [min(m.best_ms for m in measured)
               for measured in measure_in_batches_and_sweeps(
                   plan, sweeps=sweeps, threads=threads, orders=batch_orders(0, len(plan), sweeps, seed=seed))]
    return HostLevel.from_references([
        {"model": r["model"], "input_size": int(r["input_size"]), "profiled_ms": profile_level_ms(r),
         "predicted_ms": reference_prediction_ms(predictor, r), "measured_ms": ms} for r, ms in zip(rows, fastest)])
