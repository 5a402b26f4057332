"""Check a hardware model on candidates it never saw: predicted vs measured, and vs a MACs proxy.

The MACs proxy is the usual stand-in for latency: MACs times one constant. Its constant is fit on
the very candidates it is scored on (least relative error), which flatters it; the predictor gets
no such help.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from ..errors import AutocompressError
from .candidates import measure_candidate, model_under_test, random_candidate
from .kernels import kernels_of_candidate
from .profiling import read_model_measurements
from .store import HardwareModel

__all__ = ["AccuracyFigures", "ValidationReport", "accuracy_figures", "validate", "write_plot"]


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
    rows: list[dict] = field(default_factory=list)  # model, input_size, candidate, measured/predicted/proxy ms

    def figures(self, rows: list[dict] | None = None) -> dict:
        rows = self.rows if rows is None else rows
        measured = np.array([r["measured_ms"] for r in rows])
        return {"candidates": len(rows),
                "predictor": accuracy_figures(np.array([r["predicted_ms"] for r in rows]), measured).to_dict(),
                "macs_proxy": accuracy_figures(np.array([r["macs_proxy_ms"] for r in rows]), measured).to_dict()}

    def to_dict(self) -> dict:
        groups = sorted({(r["model"], r["input_size"]) for r in self.rows})
        return {
            "hardware_model": self.hardware_model,
            "overall": self.figures(),
            "by_model": {f"{m}@{s}": self.figures([r for r in self.rows if (r["model"], r["input_size"]) == (m, s)])
                         for m, s in groups},
            "rows": self.rows,
        }


def validate(hardware: HardwareModel, folder: Path, models: list[str], input_sizes: list[int], *,
             samples: int = 100, seed: int = 1, threads: int = 1) -> ValidationReport:
    """Measure ``samples`` random candidates per model and input size, and score the predictions."""
    trained_on = {(r["model"], r["input_size"], r["candidate"]) for r in read_model_measurements(folder / "models.csv")}
    report = ValidationReport(str(folder))
    plan = [(spec, size, i) for spec in models for size in input_sizes for i in range(samples)]
    for spec, size, i in tqdm(plan, desc="validating", unit="candidate", disable=None):
        target = model_under_test(spec, size)
        candidate = random_candidate(target, random.Random(f"validate-{seed}-{spec}-{size}-{i}"))
        if (spec, size, candidate.to_json()) in trained_on:
            continue  # never score a candidate the predictor was fit on
        kernels = kernels_of_candidate(target.analysis, candidate)
        prediction = hardware.predictor.predict(kernels)
        measured = measure_candidate(target, candidate, threads=threads)
        report.rows.append({"model": spec, "input_size": size, "candidate": candidate.to_dict(),
                            "measured_ms": measured.median_ms, "measurement_noise": measured.noise,
                            "predicted_ms": prediction.ms, "predicted_std_ms": prediction.std_ms,
                            "macs": sum(k.macs for k in kernels)})
    if not report.rows:
        raise AutocompressError("no candidate to validate on: raise --samples")
    macs = np.array([r["macs"] for r in report.rows], float)
    measured = np.array([r["measured_ms"] for r in report.rows])
    ratio = macs / measured
    constant = ratio.sum() / (ratio ** 2).sum()  # argmin_c sum((c * macs / measured - 1)^2)
    for row, m in zip(report.rows, macs):
        row["macs_proxy_ms"] = float(constant * m)
    return report


def write_plot(report: ValidationReport, path: Path) -> None:
    """Predicted vs measured latency (log-log), predictor and MACs proxy side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = np.array([r["measured_ms"] for r in report.rows])
    figures = report.figures()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, key, title in ((axes[0], "predicted_ms", "predictor"), (axes[1], "macs_proxy_ms", "MACs proxy")):
        for spec in sorted({r["model"] for r in report.rows}):
            rows = [r for r in report.rows if r["model"] == spec]
            ax.scatter([r["measured_ms"] for r in rows], [r[key] for r in rows], s=10, alpha=0.7, label=spec)
        lo, hi = measured.min() * 0.8, measured.max() * 1.25
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.2, label="±10%")
        ax.set_xscale("log"), ax.set_yscale("log")
        f = figures["predictor" if key == "predicted_ms" else "macs_proxy"]
        ax.set_title(f"{title}: {100 * f['within_10pct']:.1f}% within ±10%, Spearman {f['spearman']:.3f}")
        ax.set_xlabel("measured latency (ms)")
    axes[0].set_ylabel("predicted latency (ms)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: ValidationReport, json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
