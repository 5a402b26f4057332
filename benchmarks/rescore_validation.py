"""Score a hardware model on candidates a validation run already measured, timing nothing.

A validation takes 40 minutes of quiet machine and must run on the machine class its hardware
model was profiled on. When the predictor changes, this re-predicts a committed report's
candidates with the current code and the model's own measurements, and scores the new
predictions against the report's measured latencies, beside the figures the report holds. Rows
the hardware model has since been fit on (``profile --add-validation``) are left out, as
``validate-predictor`` would. It runs on any machine (the DifferentMachineWarning is expected).

    python benchmarks/rescore_validation.py hardware_models/ort-cpu-1t \\
        results/predictor_validation/validation.json --out results/predictor_validation_rescored
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.hardware import load_hardware_model
from autocompress.hardware.candidates import model_under_test
from autocompress.hardware.kernels import kernels_of_candidate
from autocompress.hardware.measurements import read_model_measurements, read_validation_report
from autocompress.hardware.store import DifferentMachineWarning
from autocompress.hardware.validation import accuracy_figures, uncertainty_coverage
from autocompress.core.space import Candidate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hardware_model", type=Path)
    parser.add_argument("report", type=Path,
                        help="a validation.json (or its folder) written by autocompress validate-predictor")
    parser.add_argument("--out", type=Path, required=True, help="folder for rescored.{md,json}")
    args = parser.parse_args()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DifferentMachineWarning)  # the point: score a model measured elsewhere
            hardware = load_hardware_model(args.hardware_model)
        report = read_validation_report(args.report)
    except AutocompressError as exc:
        parser.error(str(exc))
    fit_on = {(r["model"], r["input_size"], r["candidate"])
              for r in read_model_measurements(args.hardware_model / "models.csv")}
    rows, skipped = [], 0
    for row in report["rows"]:
        candidate = Candidate.from_dict(row["candidate"])
        if (row["model"], int(row["input_size"]), candidate.to_json()) in fit_on:
            skipped += 1
            continue
        target = model_under_test(row["model"], int(row["input_size"]))
        predicted = hardware.predictor.predict(kernels_of_candidate(target.analysis, candidate))
        rows.append({"group": f"{row['model']}@{row['input_size']}", "measured_ms": row["measured_ms"],
                     "predicted_ms": predicted.ms, "predicted_std_ms": predicted.std_ms,
                     "reported_ms": row["predicted_ms"], "reported_std_ms": row.get("predicted_std_ms")})
    if not rows:
        raise SystemExit(f"{args.report}: every candidate is in {args.hardware_model}'s fit; nothing left to score")

    def score(subset: list[dict]) -> dict:
        measured = np.array([r["measured_ms"] for r in subset])
        now = np.array([r["predicted_ms"] for r in subset])
        return {"candidates": len(subset),
                "rescored": accuracy_figures(now, measured).to_dict(),
                "as_reported": accuracy_figures(np.array([r["reported_ms"] for r in subset]), measured).to_dict(),
                "uncertainty_coverage": uncertainty_coverage(subset),
                "uncertainty_coverage_as_reported": uncertainty_coverage(
                    [dict(r, predicted_ms=r["reported_ms"], predicted_std_ms=r["reported_std_ms"]) for r in subset]),
                "median_error_pct": float(100 * np.median(now / measured - 1))}

    groups = sorted({r["group"] for r in rows})
    result = {"hardware_model": str(args.hardware_model), "report": str(args.report), "seed": report.get("seed"),
              "skipped_fit_on": skipped, "overall": score(rows),
              "by_model": {g: score([r for r in rows if r["group"] == g]) for g in groups}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rescored.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {args.hardware_model} rescored on {args.report} (seed {report.get('seed')})", "",
             "Predictions of the current code on candidates the report measured; nothing re-timed. "
             f"{skipped} rows left out: the model has since been fit on them.", "",
             "Within 1 / 2 sd: the share of measurements within one and two of the stated standard deviations "
             "(68% / 95% if the stated uncertainty is right).", "",
             "| models | candidates | within ±10% | RMSPE % | Spearman | median error % | within 1 / 2 sd | "
             "as reported: within ±10% | as reported: within 1 / 2 sd |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, figures in [("all", result["overall"]), *result["by_model"].items()]:
        now, then = figures["rescored"], figures["as_reported"]
        lines.append(f"| {name} | {figures['candidates']} | {100 * now['within_10pct']:.1f}% | {now['rmspe']:.1f} | "
                     f"{now['spearman']:.3f} | {figures['median_error_pct']:+.1f} | "
                     f"{_coverage(figures['uncertainty_coverage'])} | {100 * then['within_10pct']:.1f}% | "
                     f"{_coverage(figures['uncertainty_coverage_as_reported'])} |")
    (args.out / "rescored.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _coverage(coverage: dict | None) -> str:
    return "n/a" if coverage is None else f"{100 * coverage['1sd']:.0f}% / {100 * coverage['2sd']:.0f}%"


if __name__ == "__main__":
    main()
