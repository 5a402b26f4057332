"""The same search with NAS cell choices on and off, on digits at 32x32: does adding cells move the front?

For each model the baseline is trained once (``work/<model>/baseline``) and copied into every search
folder, so both arms start from the same weights and no search pays for training it. Then, for each
budget, two searches that differ only in ``ProblemSpec.search_space``: cells off ("none": pruning,
quantization, low rank, ... only) and cells on (``--space``, by default "auto": the model family's
shipped space file). Same trials, seed, sampler, fine-tune and hardware model, so any difference in
the fronts is the cells'. Blockwise distillation of the cells depends on the model, not on the
budget, so the first cells-on search of a model distills them and the later ones copy its
``cells/`` folder; the cost is read from ``cells/losses.csv`` and reported once per model (the
first cells-on search's wall time includes it, the later ones' do not).

Compared per budget:

- the hypervolume of the feasible trials under the budget (accuracy x ms, reference: the budget and
  accuracy 0), the same reference for both arms, so the ratio on/off is meaningful;
- the most accurate front point under the budget, as the search predicted it, and as exported:
  ``export --best-under`` (the front points predicted near the budget are timed first, the most
  accurate that measures within it is fine-tuned longer, exported to ONNX and measured next to the
  baseline);
- which cells the front points under the budget use, and whether the best one uses a cell that
  computes something (not just the original block or a skip).

Writes results/nas_cells.{md,json}, after each search so a long run leaves something behind.

    python benchmarks/nas_cells.py [--models mobilenet_v2 resnet18] [--budgets 0.5x 0.25x] [--trials 30]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

from autocompress.core.analysis import analyze
from autocompress.core.candidate import candidate_summary
from autocompress.core.cell_choices import ORIGINAL, SKIP
from autocompress.core.search_space import resolve_search_space
from autocompress.errors import AutocompressError
from autocompress.export.card import export_from_search
from autocompress.hardware import machine_info
from autocompress.search.pareto import best_under, hypervolume_2d
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.search.folder import SearchFolder
from autocompress.search.run import LatencySettings, SearchSettings, run_search
from autocompress.train.finetune import DistillationConfig

ARMS = (("off", "none"), ("on", None))  # None: --space
TOP_CELLS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--budgets", nargs="+", default=["0.5x", "0.25x"])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--export-steps", type=int, default=150)
    parser.add_argument("--train-steps", type=int, default=400, help="baseline training steps")
    parser.add_argument("--space", default="auto",
                        help="search-space file for cells on (auto: the model family's; a user model needs a file, "
                             "e.g. search_spaces/example_user.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/nas_cells"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    report = {"settings": {"dataset": "digits", "input_size": 32, "budgets": args.budgets, "trials": args.trials,
                           "finetune_steps": args.finetune_steps, "export_steps": args.export_steps,
                           "train_steps": args.train_steps, "space": args.space, "seed": args.seed},
              "machine": machine_info(), "models": _earlier_models(args)}
    for spec in args.models:
        report["models"][spec] = {}
        one_model(spec, args, report["models"][spec], save=lambda: write(report, args.out))
    write(report, args.out)
    print(f"written: {args.out / 'nas_cells.md'}")


def _earlier_models(args) -> dict:
    """The models an earlier run with the same settings reported and this one does not redo.

    A run over one model (say a budget that was cut short) then adds to the report instead of erasing
    the others' sections; a change of settings starts the report afresh, as the figures would not compare.
    """
    earlier = args.out / "nas_cells.json"
    if not earlier.is_file():
        return {}
    old = json.loads(earlier.read_text())
    same = {k: v for k, v in old.get("settings", {}).items() if k != "budgets"} == {
        "dataset": "digits", "input_size": 32, "trials": args.trials, "finetune_steps": args.finetune_steps,
        "export_steps": args.export_steps, "train_steps": args.train_steps, "space": args.space, "seed": args.seed}
    return {m: e for m, e in old.get("models", {}).items() if same and m not in args.models}


def one_model(spec: str, args, entry: dict, *, save) -> None:
    """Fill ``entry`` for one model, calling ``save`` after each search."""
    work = args.work / _folder_name(spec)
    started = time.perf_counter()
    base_spec = ProblemSpec(model=spec, dataset="digits", input_size=32, train_steps=args.train_steps,
                            search_space="none")
    base = build_problem(base_spec, cache_dir=work / "baseline", progress=False)
    space_file = resolve_search_space(args.space, base.baseline)
    if space_file is None:
        raise SystemExit(f"{spec}: --space {args.space} gives this model no cells, so on and off would be the same "
                         "search; pass a space file whose blocks match it (e.g. search_spaces/example_user.yaml)")
    cell_blocks = len(analyze(base.baseline, base.example, space=space_file).cells)
    entry.update({"baseline": base.baseline_summary(), "baseline_minutes": (time.perf_counter() - started) / 60,
                  "space": space_file.name, "blocks_with_cells": cell_blocks, "distillation": None, "budgets": {}})
    del base
    print(f"{spec}: baseline accuracy {100 * entry['baseline']['accuracy']:.2f}%, predicted "
          f"{entry['baseline']['latency_ms']:.3f} ms; space {space_file.name}: {cell_blocks} blocks with cells",
          flush=True)

    cells_from = None  # the first cells-on folder: its distilled cells serve every later budget
    for budget in args.budgets:
        runs, outcomes = {}, {}
        entry["budgets"][budget] = {"runs": runs}
        for arm, search_space in ARMS:
            folder = work / f"{budget}-cells-{arm}"
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("baseline.pt", "baseline.json"):  # same cache key (model, data, steps): not retrained
                if (work / "baseline" / name).is_file():  # absent only with --train-steps 0 (nothing to train)
                    shutil.copy2(work / "baseline" / name, folder / name)
            reused = str(cells_from) if arm == "on" and cells_from is not None else None
            if reused and not (folder / "cells").exists():  # present when a rerun resumes this search
                shutil.copytree(cells_from / "cells", folder / "cells")
            problem = ProblemSpec(model=spec, dataset="digits", input_size=32, train_steps=args.train_steps,
                                  search_space=search_space or args.space)
            settings = SearchSettings(problem=problem, budget=budget, out=folder, trials=args.trials, seed=args.seed,
                                      finetune=DistillationConfig(steps=args.finetune_steps, seed=args.seed),
                                      guide="macs", latency=LatencySettings.predicted_only())
            outcome = run_search(settings, progress=False)
            runs[arm] = {"wall_minutes": study_minutes(folder), **one_search(outcome, folder, budget, args)}
            if arm == "on":
                runs[arm]["cells"] = distillation_cost(folder / "cells" / "losses.csv", reused)
                if cells_from is None:
                    cells_from = folder
                    entry["distillation"] = runs[arm]["cells"]
            outcomes[arm] = outcome
            r = runs[arm]
            print(f"{spec} {budget} cells {arm}: {r['wall_minutes']:.1f} min, best under budget "
                  f"{_pct(r['best_accuracy_under_budget'])}, exported {_export_line(r['export'])}", flush=True)
            save()
        entry["budgets"][budget].update(compare(outcomes["off"], outcomes["on"]))
        c = entry["budgets"][budget]
        print(f"{spec} {budget}: hypervolume off {c['hypervolume']['off']:.4g}, on {c['hypervolume']['on']:.4g}; "
              f"{c['verdict']}", flush=True)
        save()


def one_search(outcome, folder: Path, budget: str, args) -> dict:
    """What one search found under its budget, and its best point exported and measured."""
    budget_ms = outcome.budget_ms
    under = [p for p in outcome.front if p.latency_ms <= budget_ms]
    best = best_under(outcome.front, budget_ms)
    try:
        card = export_from_search(folder, folder / "export", best_under_budget=budget,
                                  finetune_steps=args.export_steps)
        export = _card_summary(card)
    except AutocompressError as exc:  # no front point near the budget: the other arm still counts
        export = {"error": str(exc)}
    return {
        "folder": str(folder), "budget_ms": budget_ms, "interrupted": outcome.interrupted,
        "trials_by_status": dict(Counter(r.status for r in outcome.records)),
        "feasible_trials": sum(1 for r in outcome.records if r.feasible),
        "front_points": len(outcome.front), "front_points_under_budget": len(under),
        "best_accuracy_under_budget": best.accuracy if best else None,
        "best_trial_under_budget": best.number if best else None,
        "best_latency_ms": best.latency_ms if best else None,
        "best_candidate": candidate_summary(best.candidate) if best else None,
        "front_under_budget": [{"trial": p.number, "accuracy": p.accuracy, "latency_ms": p.latency_ms,
                                "size_bytes": p.size_bytes, "origin": p.origin,
                                "cells": {b: c for b, c in (p.candidate.get("cell") or {}).items() if c != ORIGINAL}}
                               for p in under],
        "export": export,
    }


def study_minutes(folder: Path) -> float:
    """From the first trial's start to the last one's end, read from the study: a search resumed by a
    rerun of this script keeps its wall time, which a clock around ``run_search`` would lose."""
    study = SearchFolder(folder).load_study()
    times = [(t.datetime_start, t.datetime_complete) for t in study.trials if t.datetime_complete]
    return (max(end for _, end in times) - min(start for start, _ in times)).total_seconds() / 60 if times else 0.0


def compare(off, on) -> dict:
    """Hypervolumes under one shared reference, and the cells the cells-on front uses under the budget."""
    # Both arms predict the same baseline, so their budgets agree; the smaller one keeps the reference
    # honest should they ever differ.
    ref_ms = min(off.budget_ms, on.budget_ms)
    volumes = {arm: hypervolume_2d([r for r in o.records if r.feasible and r.latency_ms is not None
                                    and r.latency_ms <= ref_ms], ref_latency_ms=ref_ms, ref_accuracy=0.0)
               for arm, o in (("off", off), ("on", on))}
    ratio = volumes["on"] / volumes["off"] if volumes["off"] > 0 else None
    difference = volumes["on"] - volumes["off"]
    if volumes["on"] >= volumes["off"]:
        verdict = (f"cells on gave a hypervolume at least that of cells off: {difference:+.4g} acc x ms"
                   + (f" ({100 * (ratio - 1):+.1f}%)" if ratio is not None else ""))
    else:
        verdict = (f"cells on gave a smaller hypervolume than cells off: {difference:+.4g} acc x ms"
                   + (f" ({100 * (ratio - 1):+.1f}%)" if ratio is not None else ""))

    front_under = [p for p in on.front if p.latency_ms <= ref_ms]
    counts = Counter(c for p in front_under for c in (p.candidate.get("cell") or {}).values() if c != ORIGINAL)
    best = best_under(on.front, on.budget_ms)
    best_cells = {b: c for b, c in ((best.candidate.get("cell") or {}) if best else {}).items() if c != ORIGINAL}
    return {
        "reference_ms": ref_ms, "budget_ms_differ": off.budget_ms != on.budget_ms,
        "hypervolume": volumes, "hypervolume_ratio": ratio, "hypervolume_difference": difference,
        "verdict": verdict,
        "cells_on_front_under_budget": dict(counts.most_common()),
        "top_cells": [name for name, _ in counts.most_common(TOP_CELLS)],
        "front_points_with_cells": sum(1 for p in front_under if any(
            c != ORIGINAL for c in (p.candidate.get("cell") or {}).values())),
        "front_points_under_budget": len(front_under),
        "best_cells": best_cells,
        "best_uses_computing_cell": any(c not in (ORIGINAL, SKIP) for c in best_cells.values()),
    }


def distillation_cost(losses_csv: Path, reused_from: str | None) -> dict:
    """The blockwise distillation's cost, from the table it leaves (one row per distilled cell)."""
    if not losses_csv.is_file():  # every cell of the space is exact: nothing was distilled
        return {"cells_distilled": 0, "seconds": 0.0, "kept_distilled": 0, "reused_from": reused_from}
    with open(losses_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"cells_distilled": len(rows), "seconds": sum(float(r["seconds"]) for r in rows),
            "kept_distilled": sum(1 for r in rows if r["kept"] == "distilled"), "reused_from": reused_from}


def _card_summary(card: dict) -> dict:
    lat, acc = card["latency"], card["accuracy"]
    return {"trial": card["trial"], "candidate": candidate_summary(card["candidate"]),
            "cells": {b: c for b, c in (card["candidate"].get("cell") or {}).items() if c != ORIGINAL},
            "predicted_ms": lat["predicted_ms"], "measured_ms": lat["measured_ms"],
            "baseline_measured_ms": lat["baseline_measured_ms"], "ratio_to_baseline": lat["ratio_to_baseline"],
            "measured_over_budget": lat["measured_over_budget"],
            "accuracy_torch": acc["after_finetune_torch"], "accuracy_onnx": acc["after_finetune_onnx"]}


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "nas_cells.json").write_text(json.dumps(report, indent=2) + "\n")
    s, machine = report["settings"], report["machine"]
    lines = ["# NAS cell choices on and off", "",
             f"{s['dataset']} at {s['input_size']}x{s['input_size']}, baseline trained {s['train_steps']} steps once "
             f"per model and shared by every search; per budget, two searches of {s['trials']} trials "
             f"({s['finetune_steps']} distillation steps each, seed {s['seed']}) that differ only in the search "
             f"space: cells off (none) and cells on ({s['space']}). Hypervolume: feasible trials under the budget, "
             "accuracy x ms, reference (budget, accuracy 0), the same for both arms. Export: `--best-under` the "
             f"budget, fine-tuned {s['export_steps']} steps, ONNX Runtime, measured next to the baseline. "
             f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, onnxruntime {machine.get('onnxruntime')}. "
             "Command: `python benchmarks/nas_cells.py`.", "",
             "Latencies are single measurements on a shared host: expect 5-15% drift between hours, so compare "
             "the two arms' measured latencies through their ratio to the baseline measured beside each. "
             "Search wall minutes run from the study's first trial start to its last trial end: a search cut "
             "short and resumed by a rerun counts the pause, and searches run beside other jobs count their load.",
             ""]
    verdicts = []
    for spec, m in report["models"].items():
        if "baseline" not in m:
            continue
        b, d = m["baseline"], m.get("distillation")
        lines += [f"## {spec}", "",
                  f"Baseline: accuracy {_pct(b['accuracy'])}, predicted {b['latency_ms']:.3f} ms (ready in "
                  f"{m['baseline_minutes']:.1f} min: trained, or read back when a rerun found it trained). Space {m['space']}: {m['blocks_with_cells']} blocks with cell "
                  "choices."]
        if d is not None:
            lines += ["", f"Blockwise distillation (once per model, inside the first cells-on search's wall time): "
                      f"{d['cells_distilled']} cells in {d['seconds'] / 60:.1f} min; {d['kept_distilled']} of them "
                      "keep their distilled weights, the others their inherited ones (which imitated the block "
                      "better)."]
        lines.append("")
        for budget, entry in m["budgets"].items():
            runs = entry["runs"]
            lines += [f"### {spec}, budget {budget}", "", "| | cells off | cells on |", "|---|---|---|"]
            hv = entry.get("hypervolume")
            rows = [("budget (ms)", lambda r, arm: f"{r['budget_ms']:.3f}"),
                    ("feasible trials / front points under budget",
                     lambda r, arm: f"{r['feasible_trials']} / {r['front_points_under_budget']}"),
                    ("best accuracy under budget (search)", lambda r, arm: _pct(r["best_accuracy_under_budget"])),
                    ("hypervolume under budget (acc x ms)", lambda r, arm: f"{hv[arm]:.4g}" if hv else "-"),
                    ("exported trial", lambda r, arm: _export(r, lambda e: str(e["trial"]))),
                    ("exported: predicted / measured ms", lambda r, arm: _export(
                        r, lambda e: f"{e['predicted_ms']:.3f} / {e['measured_ms']:.3f}")),
                    ("exported measured x baseline measured", lambda r, arm: _export(
                        r, lambda e: f"{e['ratio_to_baseline']:.3f} (baseline {e['baseline_measured_ms']:.3f} ms)")),
                    ("exported accuracy PyTorch / ONNX", lambda r, arm: _export(
                        r, lambda e: f"{_pct(e['accuracy_torch'])} / {_pct(e['accuracy_onnx'])}")),
                    ("exported candidate", lambda r, arm: _export(r, lambda e: e["candidate"])),
                    ("search wall minutes", lambda r, arm: f"{r['wall_minutes']:.1f}")]
            for label, cell in rows:
                values = [cell(runs[arm], arm) if arm in runs else "-" for arm in ("off", "on")]
                lines.append(f"| {label} | {values[0]} | {values[1]} |")
            lines.append("")
            if "hypervolume" in entry:
                ratio = entry["hypervolume_ratio"]
                counts = entry["cells_on_front_under_budget"]
                top = ", ".join(f"`{name}` ({counts[name]})" for name in entry["top_cells"]) or "none"
                best_cells = "; ".join(f"{b}: {c}" for b, c in sorted(entry["best_cells"].items())) or "none"
                lines += [f"Hypervolume on / off: {'-' if ratio is None else f'{ratio:.3f}'}, difference "
                          f"{entry['hypervolume_difference']:+.4g}"
                          + (" (the two arms' budgets differed; reference: the smaller)"
                             if entry["budget_ms_differ"] else "") + ".", "",
                          f"Cells on the cells-on front under the budget ({entry['front_points_with_cells']} of "
                          f"{entry['front_points_under_budget']} points use one): {top}. The best point under the "
                          f"budget uses {best_cells}: "
                          + ("a cell that computes (not original, not skip)." if entry["best_uses_computing_cell"]
                             else "no cell other than original or skip."), "",
                          f"Verdict: {entry['verdict']}.", ""]
                verdicts.append(f"{spec} at {budget}: {entry['verdict']}")
    if verdicts:
        lines += ["## Verdict", "", *(f"- {v}." for v in verdicts), ""]
    (out / "nas_cells.md").write_text("\n".join(lines))


def _export(run: dict, fmt) -> str:
    export = run.get("export") or {}
    return "failed: " + export["error"].replace("|", "/") if "error" in export else fmt(export)


def _export_line(export: dict) -> str:
    if "error" in export:
        return f"failed ({export['error']})"
    return (f"trial {export['trial']} {export['measured_ms']:.3f} ms measured ({export['ratio_to_baseline']:.3f}x "
            f"baseline), ONNX accuracy {_pct(export['accuracy_onnx'])}")


def _folder_name(spec: str) -> str:
    """A model spec (``autocompress.zoo:small_resnet``, a path) as one folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


if __name__ == "__main__":
    main()
