"""A validation's report: validation.md (the figures, model by model) and validation.png
(predicted against measured), from a ``validation.ValidationReport``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .candidates import CANDIDATES_PER_BATCH
from .measure import PASSES
from .validation import ValidationReport

__all__ = ["write_plot", "write_report"]


def _batches_of(report: ValidationReport) -> str:
    if report.batch_seed is None:
        return f"each sweep in the same batches of {CANDIDATES_PER_BATCH}"
    return f"each sweep in its own batches of {CANDIDATES_PER_BATCH} (`batch_orders`, seed {report.batch_seed})"


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


def write_report(report: ValidationReport, folder: Path, *, profiled_models: list[str], machine: dict) -> None:
    """validation.json (every candidate) and validation.md (the figures, model by model)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = report.to_dict() | {"profiled_models": profiled_models, "machine": machine}
    sweeps = max((len(r.get("sweeps_ms", ())) for r in report.rows), default=1)
    (folder / "validation.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# Latency predictor validation: {report.hardware_model}", "",
             (f"Random candidates never used in fitting, each exported and timed end to end on {machine.get('cpu')} "
              f"(ONNX Runtime {machine.get('onnxruntime')}, 1 thread) in {sweeps} sweeps over all of them, minutes "
              f"apart, {_batches_of(report)}; each sweep takes the fastest of {PASSES} interleaved passes of 20 runs, "
              "each candidate's session kept across them (`measure_interleaved`), and the fastest sweep is the "
              "measurement."),
             *([] if report.tight_ms is None else [
                 f"Candidates as a search at a tight budget proposes them (`tight_candidate`): most decisions changed, "
                 f"blocks often skipped, drawn until their kernels alone add up to under {report.tight_ms:g} ms "
                 f"({report.tight_draws} draws for {len(report.rows) + report.skipped_trained_on} candidates)."]),
             "The MACs proxy is MACs times one constant fit on these very candidates.",
             "*Sweeps agree* is the share of candidates whose sweeps came within 10% of each other. Where it is "
             "low, a sweep met a slow spell of the host (other tenants' cache and memory traffic, minutes long)"
             f"{'' if report.batch_seed is None else ' or batch-mates that slowed it by a few percent'}: a "
             "single sweep would have been that far off, and the fastest sweep is the measurement.", "",
             "*Halves agree* sets each candidate's fastest sweep among the first half of its sweeps against its "
             "fastest among the second half: how often two measurements with half the sweeps each came within 10% of "
             "each other, a ceiling on what any predictor scores against labels that noisy. *Against halves* is the "
             "predictor's share within ±10% of each half's figure, beside its share against all sweeps.", "",
             ("| model @ input | fit on this family | candidates | within ±10% | RMSPE | Spearman "
              "| MACs proxy: within ±10% | RMSPE | Spearman | sweeps agree | halves agree | against halves |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = list(summary["by_model"].items()) + [("all", summary["overall"])]
    for name, figures in groups:
        p, m = figures["predictor"], figures["macs_proxy"]
        seen = "" if name == "all" else ("yes" if name.split("@")[0] in profiled_models else "**no**")
        agree, halves = figures["sweeps_agree_10pct"], figures["halves"]
        halves_agree = "-" if halves is None else f"{100 * halves['agree_10pct']:.0f}%"
        against = "-" if halves is None else " / ".join(f"{100 * v:.1f}%" for v in halves["predictor_within_10pct"])
        lines.append(f"| {name} | {seen} | {figures['candidates']} | {100 * p['within_10pct']:.1f}% | {p['rmspe']:.1f}% "
                     f"| {p['spearman']:.3f} | {100 * m['within_10pct']:.1f}% | {m['rmspe']:.1f}% | {m['spearman']:.3f} "
                     f"| {'-' if agree is None else f'{100 * agree:.0f}%'} "
                     f"| {halves_agree} | {against} |")
    coverage = summary["overall"]["uncertainty_coverage"]
    if coverage:
        lines += ["", f"The predictor's stated uncertainty: the measurement fell within one predicted standard "
                  f"deviation of the prediction for **{100 * coverage['1sd']:.0f}%** of candidates (68% if the "
                  f"uncertainty were exact) and within two for **{100 * coverage['2sd']:.0f}%** (95%)."]
    load = float(np.mean([r.get("background_load", 0.0) for r in report.rows])) if report.rows else 0.0
    leveled = summary["at_host_level"]
    if leveled:
        by_model = ", ".join(f"{name} {100 * f['within_10pct']:.1f}%" for name, f in leveled["by_model"].items())
        lines += ["", f"At the host's level (`--calibrate-host`): the same {len(report.references)} re-timed candidates "
                  f"measured **{leveled['ratio']:.3f}x** the predictor's reading of them (median). Every prediction "
                  f"scaled by that: **{100 * leveled['overall']['within_10pct']:.1f}%** within ±10%, RMSPE "
                  f"{leveled['overall']['rmspe']:.1f}% ({by_model}). The table above is not scaled."]
        if leveled.get("uncertainty_coverage"):
            within = leveled["uncertainty_coverage"]
            lines[-1] += (f" Its stated uncertainty, scaled alike: {100 * within['1sd']:.0f}% of measurements within "
                          f"one standard deviation (68% if exact), {100 * within['2sd']:.0f}% within two (95%).")
    speed = summary["host_speed_vs_profile"]
    if speed:
        lines += ["", f"Host speed against the profile: {speed['candidates']} of the profile's own candidates, timed "
                  f"in these sweeps, measured **{speed['median_ratio']:.3f}x** their profiled figures (median; p10 "
                  f"{speed['p10_ratio']:.3f}x, p90 {speed['p90_ratio']:.3f}x). Above 1 the machine ran slower than "
                  "during the profile, so the predictor reads low by about that much; below 1, high. The figures above "
                  "are not adjusted for it."]
    if summary["skipped_trained_on"]:
        lines += ["", f"{summary['skipped_trained_on']} of the drawn candidates were left out: the hardware model was "
                  "fit on them (`profile --add-validation`)."]
    lines += ["", f"Other processes kept {100 * load:.0f}% of the other CPU cores busy while timing, on average.",
              "", "![predicted vs measured](validation.png)"]
    (folder / "validation.md").write_text("\n".join(lines) + "\n")
