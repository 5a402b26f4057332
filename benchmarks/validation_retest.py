"""Re-time a validation's candidates in a new session: is the predictor's miss the measurement's, or its own?

A validation scores the predictor against one session's measurements. If a candidate measured
in another session came out several percent away from itself (beyond the host's level, which
``--calibrate-host`` removes), no predictor could score better than the measurement reproduces,
and the bar would be a bar on the protocol. This re-times every candidate and reference of a
committed report with the same protocol (the same batches, order and number of sweeps; with
``--shuffle SEED``, in a shuffled order, so that each candidate meets other batch-mates) and
reports:

- retest: each candidate's measurement now against the report's, once the two sessions' common
  factor (the median ratio) is taken out: the share within 5% and 10%, and the spread;
- the report's own predictions (the hardware model as it was when the report was written) at each
  session's host level (the median, over the re-timed references, of measured / predicted, as
  ``--calibrate-host`` scales): the share within 10% in each session, and the correlation of each
  candidate's log error between the two. Errors that repeat from session to session are the
  predictor's; errors that do not are the measurement's.

Nothing is refit or re-predicted, so the hardware model need not be at hand; the timing must run
on the machine class the report was measured on, on an otherwise idle machine (a validation's
length: about 20 minutes for 256 candidates in 4 sweeps).

    python benchmarks/validation_retest.py results/predictor_validation_amx_seed10 \\
        --out results/validation_retest_amx_seed10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.hardware import machine_info
from autocompress.hardware.candidates import batch_orders, measure_in_batches_and_sweeps, model_under_test
from autocompress.hardware.host_level import HostLevel
from autocompress.hardware.measurements import read_validation_report
from autocompress.hardware.validation import accuracy_figures
from autocompress.core.space import Candidate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a validation.json (or its folder) from validate-predictor")
    parser.add_argument("--out", type=Path, required=True, help="path stem for the .md and .json reports")
    parser.add_argument("--sweeps", type=int, default=None,
                        help="sweeps to time in (default: as many as the report's candidates had)")
    parser.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                        help="time the candidates and references in one order shuffled with this seed in every sweep, "
                             "so that each meets other batch-mates than it had (default: the report's own batches "
                             "and order, sweep by sweep)")
    args = parser.parse_args()
    try:
        report = read_validation_report(args.report)
    except AutocompressError as exc:
        parser.error(str(exc))
    references = report.get("references") or []
    if not references or not all({"candidate", "predicted_ms"} <= set(r) for r in references):
        parser.error(f"{args.report}: its references do not record their candidate and the predictor's reading "
                     "(reports from before session levels); retest a report that validate-predictor wrote since")
    if args.shuffle is not None and args.shuffle < 0:
        parser.error(f"--shuffle {args.shuffle}: pass a seed of 0 or more (or leave it out: the report's own batches)")
    if args.sweeps is not None and args.sweeps < 1:
        parser.error(f"--sweeps {args.sweeps}: pass 1 or more (or leave it out: as many as the report had)")
    sweeps = args.sweeps or len(report["rows"][0]["sweeps_ms"])

    rows = report["rows"]
    plan = [(model_under_test(r["model"], int(r["input_size"])), Candidate.from_dict(r["candidate"])) for r in rows]
    plan += [(model_under_test(r["model"], int(r["input_size"])), Candidate.from_json(r["candidate"]))
             for r in references]
    # The report's own batches, sweep by sweep (one order for every sweep before validation
    # shuffled them, ``batch_seed``).
    orders = batch_orders(len(rows), len(references), sweeps, seed=report.get("batch_seed"))
    if args.shuffle is not None:
        # A candidate's time depends on its batch-mates: an error that repeats only in the same
        # batches would be the plan's, not the predictor's.
        orders = [[int(i) for i in np.random.default_rng(args.shuffle).permutation(orders[0])]] * sweeps
    timings = measure_in_batches_and_sweeps(plan, sweeps=sweeps, orders=orders, desc="re-timing")
    now = np.array([min(m.best_ms for m in measured) for measured in timings])
    result = retest_figures(rows, references, now[:len(rows)], now[len(rows):])
    result |= {"report": str(args.report), "seed": report.get("seed"), "sweeps": sweeps, "shuffle": args.shuffle,
               "measured_on": machine_info(), "then_measured_on": report.get("measured_on"),
               "now_ms": [float(x) for x in now[:len(rows)]], "now_references_ms": [float(x) for x in now[len(rows):]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = markdown(result)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def retest_figures(rows: list[dict], references: list[dict], now_ms: np.ndarray, now_references_ms: np.ndarray) -> dict:
    """The retest and the predictor's errors in both sessions, overall and per model and size."""
    # Each session's level as the product reads it off the references (``--calibrate-host``).
    then_level = HostLevel.from_references(references).ratio
    now_level = HostLevel.from_references([r | {"measured_ms": float(ms)}
                                           for r, ms in zip(references, now_references_ms)]).ratio
    then_ms = np.array([r["measured_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    common = float(np.median(now_ms / then_ms))

    def figures(index: np.ndarray) -> dict:
        own = np.log(now_ms[index] / then_ms[index] / common)  # the candidate against itself
        error_then = np.log(predicted[index] * then_level / then_ms[index])
        error_now = np.log(predicted[index] * now_level / now_ms[index])
        return {"candidates": int(len(index)),
                "retest_within_5pct": float(np.mean(np.abs(np.expm1(own)) <= 0.05)),
                "retest_within_10pct": float(np.mean(np.abs(np.expm1(own)) <= 0.10)),
                "retest_sd_log": float(np.std(own)),
                "then_at_host_level": accuracy_figures(predicted[index] * then_level, then_ms[index]).to_dict(),
                "now_at_host_level": accuracy_figures(predicted[index] * now_level, now_ms[index]).to_dict(),
                "error_sd_log": [float(np.std(error_then)), float(np.std(error_now))],
                "error_correlation": float(np.corrcoef(error_then, error_now)[0, 1])}

    groups = sorted({(r["model"], int(r["input_size"])) for r in rows})
    return {"then_host_level": then_level, "now_host_level": now_level, "now_over_then": common,
            "overall": figures(np.arange(len(rows))),
            "by_model": {f"{m}@{s}": figures(np.array([i for i, r in enumerate(rows)
                                                       if (r["model"], int(r["input_size"])) == (m, s)]))
                         for m, s in groups}}


def markdown(result: dict) -> list[str]:
    lines = [f"# Validation retest: {result['report']} (seed {result['seed']})", "",
             f"Every candidate of the report re-timed in a new session with the same protocol ({result['sweeps']} "
             f"sweeps; {_batches(result.get('shuffle'))}; `python benchmarks/validation_retest.py`). "
             "Retest: the candidate now against itself then, "
             f"after the sessions' common factor ({result['now_over_then']:.3f}, the median of now / then). "
             "The predictions are the report's own, each session's scaled by its host level (the median over its "
             f"re-timed references of measured / predicted: {result['then_host_level']:.3f} then, "
             f"{result['now_host_level']:.3f} now). Correlation: of each candidate's log error then and now.", "",
             "| candidates | retest within 5% | retest within 10% | retest sd | predictor within 10% then | "
             "now | RMSPE then | now | error sd then | now | error correlation |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, figures in [("all", result["overall"]), *result["by_model"].items()]:
        then, now = figures["then_at_host_level"], figures["now_at_host_level"]
        lines.append(f"| {name} ({figures['candidates']}) | {100 * figures['retest_within_5pct']:.1f}% | "
                     f"{100 * figures['retest_within_10pct']:.1f}% | {100 * figures['retest_sd_log']:.1f}% | "
                     f"{100 * then['within_10pct']:.1f}% | {100 * now['within_10pct']:.1f}% | {then['rmspe']:.1f}% | "
                     f"{now['rmspe']:.1f}% | {100 * figures['error_sd_log'][0]:.1f}% | "
                     f"{100 * figures['error_sd_log'][1]:.1f}% | {figures['error_correlation']:.2f} |")
    return lines


def _batches(shuffle: int | None) -> str:
    if shuffle is None:
        return "the report's own batches and order in each sweep"
    return f"batches and order shuffled with seed {shuffle}, so each candidate met other batch-mates"


if __name__ == "__main__":
    main()
