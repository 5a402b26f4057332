"""The search against the simple policies, and its guides against each other, on digits at 32x32.

Cells: resnet18 and mobilenet_v2, each at 0.5x and at a tight budget where uniform policies lose
accuracy (0.05x for ResNet-18, 0.25x for MobileNet-V2). In each cell the same search (100 trials,
seed 0, the CLI's defaults) runs once per guide (``--guide``): ``macs`` (repair ranked by the MAC
share a decision touches, no allocations), ``sensitivity`` (measured damages: repair and
allocations under rungs of the budget) and ``surrogate`` (those and the learned accuracy model
that screens proposals). The baseline and the sensitivities are computed once per model and
shared by its searches (each copies them into its folder), so the guides differ in nothing else. Per search:

- the hypervolume under the budget (accuracy above chance, latency below the budget, as the study
  was told: predicted, or measured near the budget) after each fine-tune, and the fine-tunes it
  took to reach 99% of its final value;
- for the guide named by ``--measure-guide`` (default surrogate): every warm start (those told over
  the budget fine-tuned here as the search would have) and every front point the search found
  itself, exported untrained and timed together with the baseline by the export card's protocol;
  the best search-found point is compared with the best warm start at no more measured latency;
- for that guide: ``export --best-under`` (front points timed, the most accurate that measures
  within the budget fine-tuned longer, exported and measured by the card).

Writes results/search_vs_hand_policy.{md,json} after every search (a run that stops leaves what it
finished; run again to go on: searches already in the JSON are kept unless ``--redo``).

    python benchmarks/search_vs_hand_policy.py [--cells resnet18@0.5x ...] [--guides surrogate macs sensitivity]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from search_report import write_report

from autocompress.core.space import Candidate
from autocompress.export.card import export_from_search
from autocompress.export.confirm import export_untrained
from autocompress.hardware import machine_info
from autocompress.hardware.measure import measure_in_sweeps
from autocompress.hardware.onnx_export import export_onnx
from autocompress.search.folder import SearchFolder
from autocompress.search.pareto import hypervolume_2d, pareto_front, records_from_study
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.search.run import SearchSettings, run_search
from autocompress.train.finetune import DistillationConfig

CELLS = ("mobilenet_v2@0.25x", "resnet18@0.05x", "mobilenet_v2@0.5x", "resnet18@0.5x")
GUIDES = ("surrogate", "macs", "sensitivity")
FINETUNED = ("evaluated", "stopped_early")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), help="model@budget, e.g. resnet18@0.5x")
    parser.add_argument("--guides", nargs="+", default=list(GUIDES), choices=GUIDES)
    parser.add_argument("--measure-guide", default="surrogate", choices=GUIDES,
                        help="the guide whose points are timed and whose best-under-budget point is exported")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--export-steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("runs/bench"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--redo", action="store_true",
                        help="rerun the named cells' searches of the named guides (their folders cleared); the "
                             "report keeps the others")
    parser.add_argument("--rescore", action="store_true",
                        help="score the searches already in the report again from their folders (and time their "
                             "points again)")
    args = parser.parse_args()

    path = args.out / "search_vs_hand_policy.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    report = {"trials": args.trials, "finetune_steps": args.finetune_steps, "export_steps": args.export_steps,
              "hv_floor": "chance (1 / classes)", "machine": machine_info(),
              "cells": old.get("cells", {}) if old.get("trials") == args.trials else {}}
    problems = {}

    def problem_of(spec):  # trains the baseline and distils the cells once, into work/MODEL
        if spec not in problems:
            problems[spec] = build_problem(ProblemSpec(model=spec), cache_dir=args.work / spec)
        return problems[spec]

    for cell in args.cells:
        spec, budget = cell.split("@")
        for guide in args.guides:
            done = None if args.redo else report["cells"].get(cell, {}).get(guide)
            if done and (guide != args.measure_guide or done.get("export_best")):
                if args.rescore:
                    rescore(done, problem_of(spec), args.work / spec / budget / guide, guide == args.measure_guide,
                            args)
                    write_report(report, args.out)
                continue
            entry = one_search(problem_of(spec), spec, budget, guide, args)
            report["cells"].setdefault(cell, {})[guide] = entry
            write_report(report, args.out)  # after each search, so a long run leaves something behind
    print(f"written: {args.out / 'search_vs_hand_policy.md'}")


def one_search(problem, spec: str, budget: str, guide: str, args) -> dict:
    work = args.work / spec / budget / guide
    if args.redo:
        shutil.rmtree(work, ignore_errors=True)  # a folder left there would be resumed, not searched afresh
    work.mkdir(parents=True, exist_ok=True)
    # What the model's searches share, where a search finds it cached: the trained baseline, the
    # distilled cells and the measured sensitivities (the export rebuilds the problem from here too).
    shared = args.work / spec
    for name in ("baseline.pt", "baseline.json"):
        shutil.copy(shared / name, work / name)
    for name in ("cells", "sensitivity"):
        if (shared / name).is_dir():
            shutil.copytree(shared / name, work / name, dirs_exist_ok=True)
    settings = SearchSettings(problem=ProblemSpec(model=spec), budget=budget, out=work, trials=args.trials,
                              finetune=DistillationConfig(steps=args.finetune_steps), guide=guide)
    started = time.perf_counter()
    outcome = run_search(settings, progress=False)  # as the CLI runs it: times own candidates, then searches
    minutes = (time.perf_counter() - started) / 60
    if (work / "sensitivity").is_dir() and not (shared / "sensitivity").is_dir():
        shutil.copytree(work / "sensitivity", shared / "sensitivity")
    entry = {"model": spec, "budget": budget, "guide": guide, "baseline": outcome.baseline,
             "budget_ms": outcome.budget_ms, "search_minutes": minutes, "near_budget": outcome.near_budget,
             "finetune": asdict(settings.finetune), "commit": _commit()}
    rescore(entry, problem, work, guide == args.measure_guide, args)
    if guide == args.measure_guide:
        card = export_from_search(work, work / "export_best", best_under_budget=budget,
                                  finetune_steps=args.export_steps, passes=15)
        entry["export_best"] = _card_summary(card)
        entry["selection"] = card["selection"]
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "pareto.png", args.out / f"search_{spec}_{budget}_pareto.png")
    return entry


def rescore(entry: dict, problem, work: Path, measure: bool, args) -> None:
    """The figures read from a finished search's folder (into ``entry``); with ``measure``, its
    warm starts and search-found front points timed."""
    study = SearchFolder(work).load_study()
    records = records_from_study(study)
    budget_ms = entry["budget_ms"]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    curve = _hypervolume_curve(records, budget_ms, 1 / problem.splits.num_classes)
    entry.update({
        "trials_by_status": statuses, "finetunes": sum(r.status in FINETUNED for r in records),
        "hypervolume": curve[-1] if curve else 0.0, "hypervolume_curve": curve,
        "finetunes_to_99pct": _first_reaching(curve, 0.99),
        "front": [_point(r) for r in pareto_front(records)],
        "best_warm_start_predicted": _point(_best(records, budget_ms, warm=True)),
        "best_search_found_predicted": _point(_best(records, budget_ms, warm=False)),
        "accuracy_model": study.user_attrs.get("accuracy_model"),  # surrogate guide: how well it ranked
        "recovery_weights": study.user_attrs.get("recovery_weights"),  # surrogate guide: damage kept per technique
        "reallocated_at": study.user_attrs.get("reallocated_at", []),
    })
    if measure:
        entry["measured"] = measure_points(problem, records, budget_ms,
                                           DistillationConfig(**entry["finetune"]))


def _hypervolume_curve(records, budget_ms: float, floor: float) -> list[float]:
    """The hypervolume under the budget after each fine-tune, in trial order: accuracy above
    ``floor`` (chance) times latency below the budget."""
    finetuned = [r for r in records if r.status in FINETUNED]
    return [hypervolume_2d(finetuned[:k], ref_latency_ms=budget_ms, ref_accuracy=floor)
            for k in range(1, len(finetuned) + 1)]


def _first_reaching(curve: list[float], share: float) -> int | None:
    if not curve or curve[-1] <= 0:
        return None
    return next(k + 1 for k, value in enumerate(curve) if value >= share * curve[-1])


def _warm(record) -> bool:
    return record.origin.startswith("warm_start")


def _best(records, budget_ms: float, *, warm: bool):
    pool = [r for r in pareto_front([r for r in records if _warm(r) == warm]) if r.latency_ms <= budget_ms]
    return max(pool, key=lambda r: (r.accuracy, -r.latency_ms), default=None)


def _point(record) -> dict | None:
    if record is None:
        return None
    return {"trial": record.number, "accuracy": record.accuracy, "latency_ms": record.latency_ms,
            "latency_measured_in_search": record.latency_measured, "size_bytes": record.size_bytes,
            "origin": record.origin}


def measure_points(problem, records, budget_ms: float, finetune: DistillationConfig, slack: float = 0.10) -> dict:
    """Every warm start (those told over the budget fine-tuned here as the search would have), and
    every point on the search-found front predicted within the budget (plus ``slack``), exported
    untrained and timed together with the baseline (the card's protocol)."""
    warm = [r for r in records if _warm(r) and r.status in FINETUNED + ("over_budget",)]
    found = [r for r in pareto_front([r for r in records if not _warm(r)]) if r.latency_ms <= budget_ms * (1 + slack)]
    accuracy = {r.number: r.accuracy for r in found}
    for r in warm:
        accuracy[r.number] = (r.accuracy if r.status in FINETUNED
                              else problem.finetune(Candidate.from_dict(r.candidate), finetune)[1].accuracy)
    shape = tuple(problem.example.shape)
    with tempfile.TemporaryDirectory() as tmp:
        models = [(export_onnx(problem.baseline, problem.example, Path(tmp) / "baseline.onnx").path, shape)]
        models += [(export_untrained(problem, r, Path(tmp) / f"trial{r.number}.onnx"), shape) for r in warm + found]
        timings = [fastest.best_ms for fastest, _ in measure_in_sweeps(models, passes=15, runs=30)]
    baseline_ms = timings[0]
    points = [{**_point(r), "accuracy": accuracy[r.number], "measured_ms": ms, "warm_start": _warm(r),
               "told_over_budget": r.status == "over_budget"} for r, ms in zip(warm + found, timings[1:])]
    return {"baseline_measured_ms": baseline_ms, "points": points,
            **compare(points, baseline_ms, problem.baseline_summary()["accuracy"], budget_ms)}


def compare(points: list[dict], baseline_ms: float, baseline_accuracy: float, budget_ms: float) -> dict:
    """The issue's two measured bars: the best search-found point against the best warm start
    (the most accurate that measures within the budget; where none does, the fastest) at no more
    measured latency; the fastest point within half a point of the baseline."""
    warm = [p for p in points if p["warm_start"]]
    found = [p for p in points if not p["warm_start"]]
    fitting = [p for p in warm if p["measured_ms"] <= budget_ms]
    best_warm = (max(fitting, key=lambda p: (p["accuracy"], -p["measured_ms"])) if fitting
                 else min(warm, key=lambda p: p["measured_ms"], default=None))
    verdict = None
    if best_warm is not None:
        more_accurate = [p for p in found if p["measured_ms"] <= best_warm["measured_ms"]
                         and p["accuracy"] >= best_warm["accuracy"] + 0.01]
        faster = [p for p in found if p["accuracy"] >= best_warm["accuracy"]
                  and p["measured_ms"] * 1.3 <= best_warm["measured_ms"]]
        at_most = [p for p in found if p["measured_ms"] <= best_warm["measured_ms"]]
        verdict = {"best_warm_start": best_warm, "warm_start_within_budget": bool(fitting),
                   "best_found_at_no_more_latency": max(at_most, key=lambda p: p["accuracy"], default=None),
                   "fastest_found_at_no_less_accuracy": min(
                       (p for p in found if p["accuracy"] >= best_warm["accuracy"]),
                       key=lambda p: p["measured_ms"], default=None),
                   "one_point_more_accurate": bool(more_accurate), "x1_3_faster": bool(faster)}
        verdict["met"] = verdict["one_point_more_accurate"] or verdict["x1_3_faster"]
    close = [p for p in points if p["accuracy"] >= baseline_accuracy - 0.005]
    fastest_close = min(close, key=lambda p: p["measured_ms"], default=None)
    return {"warm_vs_found": verdict, "fastest_within_half_a_point": fastest_close,
            "speedup_within_half_a_point": baseline_ms / fastest_close["measured_ms"] if fastest_close else None}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def _card_summary(card: dict) -> dict:
    lat, acc = card["latency"], card["accuracy"]
    return {"trial": card["trial"], "predicted_ms": lat["predicted_ms"], "measured_ms": lat["measured_ms"],
            "prediction_error": lat["prediction_error"], "measured_over_budget": lat["measured_over_budget"],
            "baseline_measured_ms": lat["baseline_measured_ms"], "ratio_to_baseline": lat["ratio_to_baseline"],
            "accuracy_onnx": acc["after_finetune_onnx"], "accuracy_torch": acc["after_finetune_torch"],
            "baseline_accuracy": acc["baseline"], "drop_points": acc["drop_points"],
            "size_ratio": card["size"]["ratio_to_baseline"]}


if __name__ == "__main__":
    main()
