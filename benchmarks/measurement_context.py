"""How much a whole candidate's measured latency depends on what it is timed beside.

Profiling and validation time candidates in batches of 24 (``CANDIDATES_PER_BATCH``), in
interleaved passes; an export card times a few models, often one. If a candidate's figure moves
with its batch, part of a validation's error is the measurement's, and no predictor can remove it.
This re-times one model and input size of a validation report, with the shared protocol
(``measure_interleaved``: the fastest run of 12 passes of 20), in four arrangements per sweep:

- ``as validated``: the report's own batches (every candidate of the batches that hold the chosen
  ones, in the report's order);
- ``shuffled``: only the chosen candidates, in a random order, in batches of 24;
- ``alone``: each candidate on its own;
- ``alone, others open``: each candidate on its own, with the other chosen candidates' sessions
  (up to 23) open and idle in the process: only where the runtime's memory lands changes.

Each arrangement's figure for a candidate is its fastest sweep. Writes
results/measurement_context[_SUFFIX].{md,json}: per arrangement, its median ratio to the report's
measurement, the spread of that ratio across candidates, and the report's prediction scored
against it (or a hardware model's, re-predicted with the current code: ``--hardware-model``).

    python benchmarks/measurement_context.py results/predictor_validation_amx_seed4/validation.json \\
        --model resnet18 --input-size 32 --hardware-model hardware_models/ort-cpu-1t-amx --suffix amx
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.hardware import load_hardware_model, machine_info
from autocompress.hardware.candidates import CANDIDATES_PER_BATCH, export_candidate, model_under_test
from autocompress.hardware.measure import _session, measure_interleaved
from autocompress.hardware.measurements import read_validation_report
from autocompress.core.space import Candidate

ARRANGEMENTS = ("as validated", "shuffled", "alone", "alone, others open")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a validation.json written by autocompress validate-predictor")
    parser.add_argument("--model", required=True, help="a model of the report, e.g. resnet18")
    parser.add_argument("--input-size", type=int, required=True, help="an input size of the report, e.g. 32")
    parser.add_argument("--sweeps", type=int, default=2, help="sweeps over every arrangement; the fastest counts")
    parser.add_argument("--suffix", default="", help="appended to the report's file name (a machine class)")
    parser.add_argument("--hardware-model", type=Path, default=None,
                        help="re-predict with this hardware model and the current code (default: the report's "
                             "own predictions)")
    args = parser.parse_args()
    if args.sweeps < 1:
        parser.error(f"--sweeps must be 1 or more, got {args.sweeps}")
    try:
        report = read_validation_report(args.report)
    except AutocompressError as exc:
        parser.error(str(exc))
    rows = report["rows"]
    chosen = [i for i, r in enumerate(rows) if r["model"] == args.model and r["input_size"] == args.input_size]
    if not chosen:
        present = sorted({f"{r['model']}@{r['input_size']}" for r in rows})
        parser.error(f"{args.report} has no {args.model}@{args.input_size} rows; it has {', '.join(present)}")
    hardware = None
    if args.hardware_model is not None:
        try:
            hardware = load_hardware_model(args.hardware_model)
        except AutocompressError as exc:
            parser.error(str(exc))
    if report.get("skipped_trained_on"):
        print(f"note: the report skipped {report['skipped_trained_on']} candidates, so its batches are "
              "rebuilt from the rows it kept and may differ from the ones it timed")

    # The report's batches: its rows in order, CANDIDATES_PER_BATCH at a time.
    validated = [list(range(b * CANDIDATES_PER_BATCH, min((b + 1) * CANDIDATES_PER_BATCH, len(rows))))
                 for b in sorted({i // CANDIDATES_PER_BATCH for i in chosen})]
    order = chosen[:]
    random.Random(0).shuffle(order)
    shuffled = [order[s:s + CANDIDATES_PER_BATCH] for s in range(0, len(order), CANDIDATES_PER_BATCH)]

    figures: dict[str, dict[int, list[float]]] = {name: {} for name in ARRANGEMENTS}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i in sorted({i for batch in validated for i in batch}):
            target = model_under_test(rows[i]["model"], rows[i]["input_size"])  # cached per model and size
            path = export_candidate(target, Candidate.from_dict(rows[i]["candidate"]), Path(tmp) / f"{i}.onnx")
            paths[i] = (path, target.input_shape)

        def time_batch(name: str, batch: list[int]) -> None:
            for i, measured in zip(batch, measure_interleaved([paths[i] for i in batch])):
                if i in chosen:
                    figures[name].setdefault(i, []).append(measured.best_ms)

        for _ in range(args.sweeps):
            for batch in validated:
                time_batch("as validated", batch)
            for batch in shuffled:
                time_batch("shuffled", batch)
            for i in chosen:
                time_batch("alone", [i])
            for i in chosen:
                others = [j for j in chosen if j != i][:CANDIDATES_PER_BATCH - 1]
                idle = [_session(paths[j][0], paths[j][1], 1, "CPUExecutionProvider") for j in others]
                time_batch("alone, others open", [i])
                del idle  # closed before the next candidate opens its own
    minutes = (time.monotonic() - started) / 60

    reported = np.array([rows[i]["measured_ms"] for i in chosen])
    if hardware is None:
        predicted = np.array([rows[i]["predicted_ms"] for i in chosen])
    else:
        target = model_under_test(args.model, args.input_size)
        predicted = np.array([hardware.predict_candidate(target.analysis, Candidate.from_dict(rows[i]["candidate"])).ms
                              for i in chosen])
    summary = [{"arrangement": "the report", "median_ratio": 1.0, "ratio_sd": 0.0, "worst_ratio": 1.0,
                "within_10_of_report": 1.0,
                "prediction_within_10": float(np.mean(np.abs(predicted / reported - 1) <= 0.1))}]
    for name in ARRANGEMENTS:
        measured = np.array([min(figures[name][i]) for i in chosen])
        log_ratio = np.log(measured / reported)
        summary.append({"arrangement": name, "median_ratio": float(np.exp(np.median(log_ratio))),
                        "ratio_sd": float(log_ratio.std()),
                        "worst_ratio": float(np.exp(log_ratio[np.argmax(np.abs(log_ratio))])),
                        "within_10_of_report": float(np.mean(np.abs(measured / reported - 1) <= 0.1)),
                        "prediction_within_10": float(np.mean(np.abs(predicted / measured - 1) <= 0.1))})
    name = "measurement_context" + (f"_{args.suffix}" if args.suffix else "")
    out = Path("results")
    out.mkdir(exist_ok=True)
    machine = machine_info()
    (out / f"{name}.json").write_text(json.dumps(
        {"report": str(args.report), "model": args.model, "input_size": args.input_size, "sweeps": args.sweeps,
         "machine": machine, "minutes": minutes, "summary": summary,
         "predicted_by": str(args.hardware_model or "the report"),
         "candidates": [{"row": i, "reported_ms": rows[i]["measured_ms"], "predicted_ms": float(p),
                         **{a: figures[a][i] for a in ARRANGEMENTS}} for i, p in zip(chosen, predicted)]},
        indent=2) + "\n")
    lines = [f"# Measurement context: {args.model}@{args.input_size} of {args.report}", "",
             f"Machine: {machine.get('cpu')}; {len(chosen)} candidates re-timed in {args.sweeps} sweeps of each "
             f"arrangement, the fastest counting, in {minutes:.1f} min (`python benchmarks/measurement_context.py`). "
             "Ratios are to the report's measurement; *sd* is the standard deviation of the log ratio across "
             "candidates; *prediction* is the prediction "
             f"({f'{args.hardware_model}, current code' if hardware else 'the report'}'s) scored against the "
             "arrangement's figure.", "",
             "| arrangement | median ratio | sd | worst ratio | within ±10% of the report | prediction within ±10% |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s['arrangement']} | {s['median_ratio']:.3f} | {s['ratio_sd']:.3f} | {s['worst_ratio']:.3f} | "
              f"{100 * s['within_10_of_report']:.1f}% | {100 * s['prediction_within_10']:.1f}% |" for s in summary]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
