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

from ..errors import AutocompressError
from ..core.space import Candidate, Space, SpaceOptions
from .candidates import (CANDIDATES_PER_BATCH, batch_orders, measure_in_batches_and_sweeps, model_under_test,
                         random_candidate)
from .host_level import HostLevel, reference_prediction_ms, reference_rows
from .kernels import kernel_table, kernels_of_candidate
from .measure import PASSES, machine_info
from .measurements import profile_level_ms, read_model_measurements
from .store import HardwareModel

__all__ = ["AccuracyFigures", "ValidationReport", "accuracy_figures", "tight_candidate", "uncertainty_coverage", "validate", "write_plot",
           "write_report"]

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


def _batches_of(report: ValidationReport) -> str:
    if report.batch_seed is None:
        return f"each sweep in the same batches of {CANDIDATES_PER_BATCH}"
    return f"each sweep in its own batches of {CANDIDATES_PER_BATCH} (`batch_orders`, seed {report.batch_seed})"


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


TIGHT_DRAWS = 5000  # per candidate: a model too large to fit under the limit fails, not loops


def tight_candidate(predictor, target, rng: random.Random, limit_ms: float, *, cells: bool = False
                    ) -> tuple[Candidate, int]:
    """A candidate as a search at a tight budget proposes them, and the draws it took: every layer
    pruned by at least the middle of its ratios, most other decisions changed, and half the time
    residual blocks skipped, drawn until its kernels, each timed alone, add up to under
    ``limit_ms`` (stage 1 of the predictor: the figure stage 2 scales, so the draw does not lean
    on the part of the predictor under test). Random draws of the usual kind rarely come this
    small (1 in 1,400 of ResNet-18's at 32 px predicted under 0.06 ms on the Intel class), and
    the profile holds few such candidates."""
    space = Space(target.analysis, SpaceOptions(cells=cells))
    for draws in range(1, TIGHT_DRAWS + 1):
        density = rng.uniform(0.6, 1.0)
        params = {}
        for var in space.variables:
            if var.kind == "prune":
                params[var.name] = rng.choice(sorted(var.choices)[len(var.choices) // 2:])
            else:
                params[var.name] = rng.choice(var.choices) if rng.random() < density else space.neutral(var)
        candidate = space.from_params(params)
        if rng.random() < 0.5:
            share = rng.uniform(0.2, 0.8)
            candidate = candidate.replace(skip={block.name: rng.random() < share for block in target.analysis.blocks})
        kernels = kernels_of_candidate(target.analysis, candidate)
        if predictor.kernels_alone_ms([kernel_table(kernels)])[0] < limit_ms:
            return candidate, draws
    raise AutocompressError(f"no candidate of {target.spec} at {target.input_size} px in {TIGHT_DRAWS} draws has "
                            f"kernels adding up to under {limit_ms:g} ms alone: give a larger --tight")


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
