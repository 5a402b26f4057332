"""Whether a validation's re-timed reference candidates can take the host's level out of its error.

A validation re-times 16 candidates the hardware model already holds (its ``references``) in the
same sweeps as the fresh ones. If the host runs faster or slower than usual that hour, every
prediction reads off by about the same factor; those 16 can estimate it. For each validation
report whose candidates later joined the hardware model's fit (``profile --add-validation`` tags
them "validation seed N" in models.csv), this refits the predictor, with the current code, on
models.csv less that seed's rows and every later seed's (what it knew when it was validated),
predicts the report's candidates and references, and scores the candidates three ways: as
predicted; scaled by the references' median of measured against predicted (the predictor's own
reading of them); scaled by their median of measured against their figure in models.csv.
Nothing is timed, so it runs on any machine (the DifferentMachineWarning is expected elsewhere).
``--fit-fraction`` fits on a random share of those rows instead (a learning curve: would more
measured candidates help?).

    python benchmarks/level_calibration.py hardware_models/ort-cpu-1t-amx \\
        results/predictor_validation_amx_seed3 ... results/predictor_validation_amx_seed6 \\
        --out results/level_calibration_amx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.hardware.predictor import LatencyPredictor
from autocompress.hardware.measurements import (
    find_reference_row,
    read_kernel_measurements,
    read_model_measurements,
    read_validation_report,
)
from autocompress.hardware.store import _row_kernels, _training_arrays
from autocompress.hardware.validation import accuracy_figures
from autocompress.core.space import Candidate

WAYS = ("as predicted", "x references measured / predicted", "x references measured / profiled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hardware_model", type=Path)
    parser.add_argument("reports", type=Path, nargs="+",
                        help="validation.json files (or their folders) whose candidates the model was since fit on")
    parser.add_argument("--out", type=Path, required=True, help="path stem for the .md and .json reports")
    parser.add_argument("--fit-fraction", type=float, default=1.0,
                        help="fit on this random share of the candidates known before each seed (default: all)")
    args = parser.parse_args()
    if not 0 < args.fit_fraction <= 1:
        parser.error(f"--fit-fraction {args.fit_fraction}: pass a share in (0, 1], e.g. 0.5")
    try:
        reports = [(path, read_validation_report(path)) for path in args.reports]
    except AutocompressError as exc:
        parser.error(str(exc))
    model_rows = read_model_measurements(args.hardware_model / "models.csv")
    kernel_rows = read_kernel_measurements(args.hardware_model / "kernels.csv")
    if not model_rows or not kernel_rows:
        parser.error(f"{args.hardware_model} holds no measurements (models.csv, kernels.csv); pass a folder "
                     "written by `autocompress profile`")
    kernels, kernel_ms, tables, candidate_ms = _training_arrays(kernel_rows, model_rows)
    seed_of_row = np.array([_seed(row.get("source")) for row in model_rows])
    row_of = {(r["model"], r["input_size"], r["candidate"]): i for i, r in enumerate(model_rows)}

    results = []
    for path, report in reports:
        seed = report.get("seed")
        rows = [row_of.get((r["model"], int(r["input_size"]), Candidate.from_dict(r["candidate"]).to_json()))
                for r in report["rows"]]
        if seed is None or None in rows or not np.all(seed_of_row[rows] == seed):
            parser.error(f"{path}: its candidates are not in {args.hardware_model / 'models.csv'} as validation "
                         f"seed {seed}; add them with `autocompress profile --add-validation {path}` first")
        known = np.flatnonzero(seed_of_row < seed)  # the profile (untagged rows, -inf) and earlier seeds
        known_rows = [model_rows[i] for i in known]
        # Subsample after the references are looked up, so they are found whichever rows are left out.
        fit_rows = np.sort(np.random.default_rng(seed).permutation(known)[:max(1, int(args.fit_fraction * len(known)))])
        references = [None if (index := find_reference_row(ref, known_rows)) is None else int(known[index])
                      for ref in report["references"]]
        if not references or None in references:
            parser.error(f"{path}: a re-timed reference is not among the rows known before seed {seed} in "
                         f"{args.hardware_model / 'models.csv'}; pass that model's own validations")
        predictor = LatencyPredictor().fit(kernels, kernel_ms, [tables[i] for i in fit_rows], candidate_ms[fit_rows])
        predicted = _predict(predictor, model_rows, rows)
        reference_predicted = _predict(predictor, model_rows, references)
        reference_measured = np.array([ref["measured_ms"] for ref in report["references"]])
        factors = {WAYS[0]: 1.0,
                   WAYS[1]: float(np.median(reference_measured / reference_predicted)),
                   WAYS[2]: float(np.median(reference_measured / candidate_ms[references]))}
        measured = np.array([r["measured_ms"] for r in report["rows"]])
        results.append({"report": str(path), "seed": seed, "fit_candidates": len(fit_rows), "candidates": len(rows),
                        "references": len(references), "factors": factors,
                        "scores": {way: accuracy_figures(predicted * factor, measured).to_dict()
                                   for way, factor in factors.items()},
                        "median_predicted_over_measured": float(np.median(predicted / measured))})
        print(f"seed {seed}: " + "; ".join(f"{way} ({factor:.3f}): {100 * results[-1]['scores'][way]['within_10pct']:.1f}%"
                                          for way, factor in factors.items()), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"hardware_model": str(args.hardware_model),
                                                         "fit_fraction": args.fit_fraction,
                                                         "results": results}, indent=2) + "\n")
    lines = [f"# Level calibration: {args.hardware_model}", "",
             "Each seed's candidates predicted by a fit, with the current code, on models.csv less that seed's rows "
             "and every later seed's; then scaled by the median ratio of the validation's re-timed reference "
             "candidates, measured against the predictor's reading of them or against their figure in models.csv "
             "(`python benchmarks/level_calibration.py`). Share within ±10% of the measured latency; the factor "
             f"in brackets. Fit on {100 * args.fit_fraction:g}% of those candidates, drawn at random.", "",
             "| seed | fit on | candidates | median predicted / measured | " + " | ".join(WAYS) + " |",
             "|---|---|---|---|" + "---|" * len(WAYS)]
    for result in results:
        cells = [f"{100 * result['scores'][way]['within_10pct']:.1f}% ({result['factors'][way]:.3f})" for way in WAYS]
        lines.append(f"| {result['seed']} | {result['fit_candidates']} | {result['candidates']} | {result['median_predicted_over_measured']:.3f} | "
                     + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _seed(source: str | None) -> float:
    """The validation seed a models.csv row came from; -inf for the profile's own rows."""
    return int(source.rsplit(" ", 1)[1]) if source and source.startswith("validation seed ") else -np.inf


def _predict(predictor: LatencyPredictor, model_rows: list[dict], rows: list[int]) -> np.ndarray:
    return predictor.predict_many([_row_kernels(model_rows[i]) for i in rows])[0]


if __name__ == "__main__":
    main()
