"""Check a hardware model on candidates it never saw: predicted vs measured, and vs a MACs proxy.

The MACs proxy is the usual stand-in for latency: MACs times one constant. Its constant is fit on
the very candidates it is scored on (least relative error), which flatters it; the predictor gets
no such help.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..errors import AutocompressError
from ..core.space import Candidate
from .candidates import (batch_orders, measure_in_batches_and_sweeps, model_under_test,
                         random_candidate, tight_candidate)
from .host_level import HostLevel, reference_prediction_ms, reference_rows
from .kernels import kernels_of_candidate
from .measure import machine_info
from .measurements import profile_level_ms, read_model_measurements
from .store import HardwareModel

__all__ = ["AccuracyFigures", "ValidationReport", "accuracy_figures", "uncertainty_coverage", "validate"]


@dataclass(frozen=True)
class AccuracyFigures:
    within_10pct: float  # share of candidates predicted within +-10% of the measurement
    rmspe: float  # root mean squared percentage error, in percent
    spearman: float

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_figures(predicted: np.ndarray, measured: np.ndarray) -> AccuracyFigures:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    relative = predicted / measured - 1.0
    rho = spearmanr(predicted, measured).statistic if len(measured) > 2 else float("nan")
    return AccuracyFigures(float(np.mean(np.abs(relative) <= 0.10)), float(100 * np.sqrt(np.mean(relative ** 2))),
                           float(rho))


@dataclass
class ValidationReport:
    hardware_model: str
    seed: int = 1
    threads: int = 1
    measured_on: dict = field(default_factory=dict)  # machine_info() of the machine that timed the candidates
    skipped_trained_on: int = 0  # drawn candidates left out because the predictor was fit on them
    rows: list[dict] = field(default_factory=list)  # model, input_size, candidate, measured/predicted/proxy ms
    # The profile's own candidates re-timed in the same sweeps: model, input_size, candidate (absent
    # before session levels), profiled_ms (at the profile's level since session levels: a row a
    # validation added counts at its best_ms / level), predicted_ms (absent before the host level),
    # measured_ms
    references: list[dict] = field(default_factory=list)
    # The seed each sweep's batches were shuffled with (``batch_orders``); None in reports from
    # before, whose sweeps all timed one order, so that each candidate met one set of batch-mates.
    batch_seed: int | None = None
    # With ``tight_ms``, only candidates whose kernels alone add up to less (``tight_candidate``),
    # and how many draws it took to find them; None: every random draw.
    tight_ms: float | None = None
    tight_draws: int = 0

    def host_speed(self) -> dict | None:
        """How this run's machine compared with the profile's: the median ratio of the reference
        candidates' measurements now to their profiled figures (above 1: slower now, so the
        predictor, fit on the profile, reads low; below 1: it reads high). None without references."""
        if not self.references:
            return None
        ratios = np.array([r["measured_ms"] / r["profiled_ms"] for r in self.references])
        return {"candidates": len(ratios), "median_ratio": float(np.median(ratios)),
                "p10_ratio": float(np.percentile(ratios, 10)), "p90_ratio": float(np.percentile(ratios, 90))}

    def host_level(self) -> HostLevel | None:
        """The level the product would scale its predictions by on this host now
        (``host_level``), from the references timed in these very sweeps. None without them."""
        references = [r for r in self.references if r.get("predicted_ms")]
        return HostLevel.from_references(references) if references else None

    def at_host_level(self) -> dict | None:
        """The predictor's figures with every prediction scaled by ``host_level``: what a search
        or export that times the references first (``--calibrate-host``) would have predicted."""
        level = self.host_level()
        if level is None:
            return None

        def figures(rows: list[dict]) -> dict:
            return accuracy_figures(np.array([r["predicted_ms"] for r in rows]) * level.ratio,
                                    np.array([r["measured_ms"] for r in rows])).to_dict()

        groups = sorted({(r["model"], r["input_size"]) for r in self.rows})
        # The product scales the stated deviation with the prediction (HardwareModel.at_level); on a
        # host at 0.86x the profile, raw coverage read 8% within one deviation, which says nothing.
        scaled = [r | {"predicted_ms": r["predicted_ms"] * level.ratio,
                       "predicted_std_ms": r["predicted_std_ms"] * level.ratio}
                  for r in self.rows if r.get("predicted_std_ms")]
        return {"ratio": level.ratio, "overall": figures(self.rows),
                "by_model": {f"{m}@{s}": figures([r for r in self.rows if (r["model"], r["input_size"]) == (m, s)])
                             for m, s in groups},
                "uncertainty_coverage": uncertainty_coverage(scaled)}

    def figures(self, rows: list[dict] | None = None) -> dict:
        rows = self.rows if rows is None else rows
        measured = np.array([r["measured_ms"] for r in rows])
        return {"candidates": len(rows),
                "predictor": accuracy_figures(np.array([r["predicted_ms"] for r in rows]), measured).to_dict(),
                "macs_proxy": accuracy_figures(np.array([r["macs_proxy_ms"] for r in rows]), measured).to_dict(),
                "sweeps_agree_10pct": _sweeps_agree(rows), "halves": _halves(rows),
                "uncertainty_coverage": uncertainty_coverage(rows)}

    def to_dict(self) -> dict:
        groups = sorted({(r["model"], r["input_size"]) for r in self.rows})
        return {
            "hardware_model": self.hardware_model,
            "seed": self.seed,
            "threads": self.threads,
            "measured_on": self.measured_on,
            "skipped_trained_on": self.skipped_trained_on,
            "batch_seed": self.batch_seed,
            "tight_ms": self.tight_ms,
            "tight_draws": self.tight_draws,
            "overall": self.figures(),
            "by_model": {f"{m}@{s}": self.figures([r for r in self.rows if (r["model"], r["input_size"]) == (m, s)])
                         for m, s in groups},
            "host_speed_vs_profile": self.host_speed(),
            "at_host_level": self.at_host_level(),
            "rows": self.rows,
            "references": self.references,
        }


def validate(hardware: HardwareModel, folder: Path, models: list[str], input_sizes: list[int], *,
             samples: int = 100, seed: int = 1, threads: int = 1, sweeps: int = 2, cells: bool = False,
             tight_ms: float | None = None) -> ValidationReport:
    """Measure ``samples`` random candidates per model and input size (with NAS cell choices of the
    model's family with ``cells``), and score the predictions. With ``tight_ms``, candidates as a
    search at a tight budget proposes them: ``tight_candidate`` draws under that many milliseconds.

    Every candidate is timed in ``sweeps`` sweeps over the whole plan, minutes apart, and its
    fastest sweep is the measurement, as in profiling (see ``profiling``). Each sweep shuffles the
    batches (``batch_orders``, seeded with ``seed``), so that a candidate meets other batch-mates
    each time: its time depends on them by a few percent, which sweeps of one fixed batch could
    neither show nor average out. The report shows how often the sweeps agreed within 10%: how
    often one sweep alone would have been right.

    ``REFERENCES`` of the profile's own candidates (at these input sizes) are timed in the same
    batches, and the report compares them with their profiled figures: the predictor carries the
    machine's speed during the profile, and a shared host's speed drifts by a few percent from
    hour to hour. The raw figures are never scaled; beside them, ``at_host_level`` scores the
    predictions as the product reads them with ``--calibrate-host``: scaled by the median of the
    references' measurements now over the predictor's reading of them (``host_level``)."""
    profiled = read_model_measurements(folder / "models.csv")
    trained_on = {(r["model"], r["input_size"], r["candidate"]) for r in profiled}
    report = ValidationReport(str(folder), seed=seed, threads=threads, measured_on=machine_info(), batch_seed=seed,
                              tight_ms=tight_ms)
    plan = []
    for spec in models:
        for size in input_sizes:
            target = model_under_test(spec, size)
            for i in range(samples):
                draw = random.Random(f"validate-{seed}-{spec}-{size}-{i}" + ("-cells" if cells else ""))
                if tight_ms is None:
                    candidate = random_candidate(target, draw, cells=cells)
                else:
                    candidate, draws = tight_candidate(hardware.predictor, target, draw, tight_ms, cells=cells)
                    report.tight_draws += draws
                if (spec, size, candidate.to_json()) not in trained_on:  # never score what was fit on
                    plan.append((target, candidate))
                else:
                    report.skipped_trained_on += 1
    references = reference_rows(profiled, seed=seed, input_sizes=input_sizes)
    scored = len(plan)
    plan += [(model_under_test(r["model"], int(r["input_size"])), Candidate.from_json(r["candidate"]))
             for r in references]
    timings = measure_in_batches_and_sweeps(plan, sweeps=sweeps, threads=threads, desc="validating",
                                            orders=batch_orders(scored, len(references), sweeps, seed=seed))
    for row, measured in zip(references, timings[scored:]):
        report.references.append({"model": row["model"], "input_size": int(row["input_size"]),
                                  "candidate": row["candidate"], "profiled_ms": profile_level_ms(row),
                                  "predicted_ms": reference_prediction_ms(hardware.predictor, row),
                                  "measured_ms": min(m.best_ms for m in measured),
                                  "sweeps_ms": [m.best_ms for m in measured]})
    for (target, candidate), measured in zip(plan[:scored], timings[:scored]):
        fastest = min(measured, key=lambda m: m.best_ms)
        kernels = kernels_of_candidate(target.analysis, candidate)
        prediction = hardware.predictor.predict(kernels)
        report.rows.append({"model": target.spec, "input_size": target.input_size,
                            "candidate": candidate.to_dict(), "measured_ms": fastest.best_ms,
                            "sweeps_ms": [m.best_ms for m in measured],
                            "sweeps_timing": [m.to_dict() for m in measured],
                            "measured_median_ms": fastest.median_ms,
                            "measurement_spread": fastest.noise,
                            "background_load": float(np.mean([m.background_load for m in measured])),
                            "predicted_ms": prediction.ms,
                            "predicted_std_ms": prediction.std_ms, "macs": sum(k.macs for k in kernels)})
    if not report.rows:
        raise AutocompressError("no candidate to validate on: raise --samples")
    macs = np.array([r["macs"] for r in report.rows], float)
    measured = np.array([r["measured_ms"] for r in report.rows])
    ratio = macs / measured
    constant = ratio.sum() / (ratio ** 2).sum()  # argmin_c sum((c * macs / measured - 1)^2)
    for row, m in zip(report.rows, macs):
        row["macs_proxy_ms"] = float(constant * m)
    return report


def uncertainty_coverage(rows: list[dict]) -> dict | None:
    """How often the measurement fell within one and within two of the predictor's standard
    deviations of its prediction: about 68% and 95% if the stated uncertainty is right, more if it
    is too cautious, less if overconfident. None for reports from before ``predicted_std_ms``."""
    rows = [r for r in rows if r.get("predicted_std_ms")]
    if not rows:
        return None
    deviations = np.array([abs(r["measured_ms"] - r["predicted_ms"]) / r["predicted_std_ms"] for r in rows])
    return {"1sd": float(np.mean(deviations <= 1)), "2sd": float(np.mean(deviations <= 2))}


def _sweeps_agree(rows: list[dict]) -> float | None:
    """Share of candidates whose slowest sweep is within 10% of their fastest: how far the
    measurement itself reproduces here (None with one sweep)."""
    timed = [r["sweeps_ms"] for r in rows if len(r.get("sweeps_ms", ())) > 1]
    return float(np.mean([max(t) <= 1.10 * min(t) for t in timed])) if timed else None


def _halves(rows: list[dict]) -> dict | None:
    """The measurement against itself: each candidate's fastest sweep among the first half of its
    sweeps against its fastest among the second half, two independent measurements with half the
    sweeps each. ``agree_10pct``: the share within 10% of each other, a ceiling on what any
    predictor can score against labels that noisy. ``predictor_within_10pct``: the predictor's
    share within 10% of each half's figure, to set beside its share against all sweeps: how far the
    score moves with the label's quality. None with fewer than 2 sweeps."""
    timed = [r for r in rows if len(r.get("sweeps_ms", ())) > 1]
    if not timed:
        return None
    first = np.array([min(r["sweeps_ms"][:len(r["sweeps_ms"]) // 2]) for r in timed])
    second = np.array([min(r["sweeps_ms"][len(r["sweeps_ms"]) // 2:]) for r in timed])
    predicted = np.array([r["predicted_ms"] for r in timed])
    return {"sweeps_each": len(timed[0]["sweeps_ms"]) // 2,
            "agree_10pct": float(np.mean(np.maximum(first, second) <= 1.10 * np.minimum(first, second))),
            "predictor_within_10pct": [accuracy_figures(predicted, half).within_10pct for half in (first, second)]}
