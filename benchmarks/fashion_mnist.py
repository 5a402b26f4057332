"""The search where compression costs accuracy: ResNet-18 and MobileNet-V2 on all of Fashion-MNIST
at 32 px, scored on its official test split (10,000 images that no choice saw).

Per model, the baseline trains to a plateau (with augmentation; ``--train-minutes`` caps it) and
is cached in ``--work``. Per budget (0.25x and 0.1x of the baseline's measured latency), one search
as the command line runs it (``--guide surrogate``, ``--trials`` fine-tunes), then, timed together
in one sweep with the baseline (the export card's protocol):

- the search's best point under the budget (by the study, validation only), fine-tuned again as the
  search did and scored on test;
- every hand policy the search starts from (uniform pruning in int8 and in float, int8 alone,
  cheapest cells), fine-tuned here as the search fine-tunes, scored on test the same way;
- a small hand-designed CNN (``autocompress.zoo:two_conv_cnn``, the 2-conv kind of the data set's
  own table) trained from scratch for as long as the search took;
- ``export --best-under``: the exported model's test score (ONNX Runtime) from its card.

Floors (issue "your model, your data"): at 0.25x the exported point within 1.0 point of the
baseline's test accuracy; at both budgets the search's best point more accurate on test than every
uniform policy and the small CNN that measure no faster. Writes results/fashion_mnist.{md,json}
after every cell; run it alone on the machine.

    python benchmarks/fashion_mnist.py [--cells resnet18@0.25x ...] [--trials 100] [--work runs/fashion]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from autocompress.core.policies import warm_start_policies
from autocompress.core.space import Candidate
from autocompress.export.card import export_from_search
from autocompress.hardware import machine_info
from autocompress.hardware.measure import measure_in_sweeps
from autocompress.hardware.onnx_export import export_onnx
from autocompress.search.pareto import best_under, records_from_study
from autocompress.search.folder import SearchFolder
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.search.run import SearchSettings, run_search
from autocompress.train.finetune import DistillationConfig, evaluate
from autocompress.train.plateau import PlateauConfig, train_to_plateau
from autocompress.zoo import two_conv_cnn

TITLE = "Fashion-MNIST at 32 px: the search where compression costs accuracy"
CELLS = ("resnet18@0.25x", "resnet18@0.1x", "mobilenet_v2@0.25x", "mobilenet_v2@0.1x")
FINETUNED = ("evaluated", "stopped_early")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), help="model@budget")
    add_common_arguments(parser, work="runs/fashion")
    args = parser.parse_args()
    run_cells({cell: tuple(cell.split("@")) for cell in args.cells}, args, "fashion_mnist", TITLE,
              lambda model, budget: ("two_conv_cnn (from scratch)", two_conv_cnn()), within_1_point_at="0.25x")


def add_common_arguments(parser: argparse.ArgumentParser, *, work: str) -> None:
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--export-steps", type=int, default=300)
    parser.add_argument("--train-minutes", type=float, default=40.0, help="cap on each baseline's training")
    parser.add_argument("--work", type=Path, default=Path(work))
    parser.add_argument("--out", type=Path, default=Path("results"))


def run_cells(cells: dict[str, tuple[str, str]], args, report_name: str, title: str, from_scratch,
              within_1_point_at: str) -> None:
    """Run each cell (name: (model, budget)) and write results/REPORT_NAME.{md,json} after each.
    ``from_scratch(model, budget)``: (name, module) of the small model trained from scratch."""
    report_path = args.out / f"{report_name}.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"cells": {}}
    for cell in report["cells"].values():  # cells written when the commit was recorded once per report
        cell.setdefault("commit", report.get("commit"))
        cell.setdefault("machine", report.get("machine"))
    report.pop("commit", None), report.pop("machine", None)
    report["title"] = title
    commit = _commit()  # the code that runs, read before the hours a cell takes
    for cell, (model, budget) in cells.items():
        # each cell records what produced it: cells of one report may come from different commits
        report["cells"][cell] = one_cell(model, budget, args, from_scratch(model, budget), within_1_point_at) | {
            "commit": commit, "machine": machine_info().get("cpu"), "cores": len(os.sched_getaffinity(0))}
        args.out.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{report_name}.md").write_text(markdown(report))
        print(markdown(report))


def one_cell(model: str, budget: str, args, from_scratch: tuple[str, torch.nn.Module], within_1_point_at: str) -> dict:
    spec = ProblemSpec(model=model, dataset="fashion-mnist", train_time_cap_s=60 * args.train_minutes)
    shared = args.work / model
    problem = build_problem(spec, cache_dir=shared, progress=True)  # the baseline, trained once per model
    work = shared / budget
    work.mkdir(parents=True, exist_ok=True)
    for name in ("baseline.pt", "baseline.json"):
        shutil.copy(shared / name, work / name)
    finetune = DistillationConfig(steps=args.finetune_steps)
    # the library's defaults: the search as the command line runs it
    settings = SearchSettings(problem=spec, budget=budget, out=work, trials=args.trials, finetune=finetune)
    started = time.monotonic()
    outcome = run_search(settings, progress=True)
    search_s = time.monotonic() - started
    records = records_from_study(SearchFolder(work).load_study())
    best = best_under([r for r in records if r.status in FINETUNED], outcome.budget_ms)
    # Every hand policy, built from the space (not read from the study: one told over the budget at
    # once was never fine-tuned there), fine-tuned as the search fine-tunes its trials.
    chosen = [("search best", best.number, Candidate.from_dict(best.candidate))] if best else []
    chosen += [(name, None, problem.space.from_params(params))
               for name, params in warm_start_policies(problem.space).items()]
    rows = []
    for name, trial, candidate in chosen:
        student, result = problem.finetune(candidate, finetune)
        rows.append({"name": name, "trial": trial, "validation": result.accuracy, "test": problem.test_score(student),
                     "predicted_ms": problem.hardware.predict_candidate(problem.analysis, candidate).ms})
    small_name, small = from_scratch
    run = train_to_plateau(small, problem.splits.train, PlateauConfig.for_model(small, time_cap_s=search_s))
    small_row = {"name": small_name, "trial": None, "validation": evaluate(small, problem.splits.val),
                 "test": evaluate(small, problem.splits.test), "train_s": round(run.seconds)}
    shape = tuple(problem.example.shape)
    with tempfile.TemporaryDirectory() as tmp:
        models = [(export_onnx(problem.baseline, problem.example, Path(tmp) / "baseline.onnx").path, shape)]
        models += [(export_onnx(problem.build(candidate), problem.example, Path(tmp) / f"c{i}.onnx",
                                calibration=problem.calibration[:1]).path, shape)
                   for i, (_, _, candidate) in enumerate(chosen)]
        models.append((export_onnx(small.eval(), problem.example, Path(tmp) / "small.onnx").path, shape))
        timings = [fastest.best_ms for fastest, _ in measure_in_sweeps(models, passes=15, runs=30)]
    baseline_ms, measured = timings[0], timings[1:]
    for row, ms in zip(rows + [small_row], measured):
        row["measured_ms"] = ms
    card = export_from_search(work, work / "export_best", best_under_budget=budget, finetune_steps=args.export_steps)
    baseline_test = problem.test_score(problem.baseline)
    return {"model": model, "budget": budget, "budget_ms": outcome.budget_ms, "trials": args.trials,
            "search_minutes": round(search_s / 60, 1), "baseline": {"validation": problem.baseline_accuracy,
                                                                    "test": baseline_test, "measured_ms": baseline_ms,
                                                                    "training": problem.baseline_training},
            "rows": rows + [small_row], "export": {"trial": card["trial"], "measured_ms": card["latency"]["measured_ms"],
                                                   "test_onnx": card["test"]["exported_onnx"],
                                                   "validation_onnx": card["accuracy"]["after_finetune_onnx"]},
            "floors": floors(rows, small_row, baseline_test, card, budget == within_1_point_at)}


def floors(rows: list[dict], small: dict, baseline_test: float, card: dict, within_1_point: bool) -> dict:
    best = next((r for r in rows if r["name"] == "search best"), None)
    rivals = [r for r in rows[1:] + [small] if best and r["measured_ms"] <= best["measured_ms"]]
    beats = best is not None and all(best["test"] > r["test"] for r in rivals)
    out = {"beats_every_rival_no_faster": beats, "rivals_no_faster": [r["name"] for r in rivals]}
    if within_1_point:
        out["export_within_1_point"] = baseline_test - card["test"]["exported_onnx"] <= 0.01
    return out


def markdown(report: dict) -> str:
    lines = [f"# {report.get('title', TITLE)}", "",
             "Scores are top-1 on the official test split (10,000 images) unless marked validation; latency "
             "measured in one sweep per cell (fastest run).", ""]
    for cell, c in report["cells"].items():
        base = c["baseline"]
        training = base.get("training") or {}
        trained = (f" Trained {training['steps']} steps, stopped by {training.get('stopped')}."
                   if training.get("steps") else "")
        cores = f", {c['cores']} core(s)" if c.get("cores") else ""
        lines += [f"## {cell} ({c['budget_ms']:.3f} ms; {c['trials']} fine-tunes, {c['search_minutes']} min)", "",
                  f"Commit {c.get('commit')}, {c.get('machine')}{cores}.", "",
                  f"Baseline: test {100 * base['test']:.2f}%, validation {100 * base['validation']:.2f}%, "
                  f"{base['measured_ms']:.3f} ms.{trained}", "",
                  "| | trial | measured ms | x budget | validation % | test % |", "|---|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['name']} | {r['trial'] if r['trial'] is not None else '-'} | {r['measured_ms']:.3f} | "
                         f"{r['measured_ms'] / c['budget_ms']:.2f} | {100 * r['validation']:.2f} | "
                         f"{100 * r['test']:.2f} |")
        e = c["export"]
        lines += ["", f"`export --best-under {c['budget']}`: trial {e['trial']}, {e['measured_ms']:.3f} ms measured, "
                  f"test {100 * e['test_onnx']:.2f}% (ONNX Runtime; validation {100 * e['validation_onnx']:.2f}%).",
                  "", f"Floors: {json.dumps(c['floors'])}", ""]
    return "\n".join(lines)


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
