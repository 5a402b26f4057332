"""The search against the hand policy (uniform channel pruning + int8), on digits at 32x32.

For each model: run ``autocompress search`` (budget 0.5x, 100 trials by default), then

- fine-tune every hand policy (every channel group pruned at one ratio, every layer int8) the
  same way as a search trial, and compare it with the front at matched latency;
- export the best front point under the budget (``export --best-under``: the front points predicted
  near it are timed first, and the most accurate that measures within it is chosen) and the hand
  policy closest under the budget, both fine-tuned longer the same way, and measure them with the
  hardware protocol next to the baseline.

Writes results/search_vs_hand_policy.{md,json} and each model's pareto.png into results/.

    python benchmarks/search_vs_hand_policy.py [--models resnet18 mobilenet_v2] [--trials 100] [--work runs/bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from autocompress.export.card import export_from_search
from autocompress.train.finetune import DistillationConfig
from autocompress.hardware import machine_info
from autocompress.search.pareto import best_under
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.search.run import SearchSettings, run_search, warm_start_policies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--budget", default="0.5x")
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--export-steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("runs/bench"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    report = {"budget": args.budget, "trials": args.trials, "finetune_steps": args.finetune_steps,
              "export_steps": args.export_steps, "machine": machine_info(), "models": {}}
    for spec in args.models:
        report["models"][spec] = one_model(spec, args)
        write(report, args.out)  # after each model, so a long run leaves something behind
    print(f"written: {args.out / 'search_vs_hand_policy.md'}")


def one_model(spec: str, args) -> dict:
    work = args.work / spec
    settings = SearchSettings(problem=ProblemSpec(model=spec), budget=args.budget, out=work, trials=args.trials,
                              finetune=DistillationConfig(steps=args.finetune_steps))
    problem = build_problem(settings.problem, cache_dir=work)
    started = time.perf_counter()
    outcome = run_search(settings, problem=problem)
    search_minutes = (time.perf_counter() - started) / 60
    budget_ms = outcome.budget_ms
    front = outcome.front

    # The hand policies, fine-tuned exactly like a search trial (same steps, seed and data).
    hand = []
    for name, params in warm_start_policies(problem.space).items():
        if not name.startswith("uniform"):
            continue
        candidate = problem.space.from_params(params)
        ms, size = problem.predict(candidate).ms, problem.size_bytes(candidate)
        _, result = problem.finetune(candidate, settings.finetune)
        matched = best_under(front, ms)
        found = best_under([p for p in front if not p.origin.startswith("warm_start")], ms)
        hand.append({
            "policy": name, "accuracy": result.accuracy, "latency_ms": ms, "size_bytes": size,
            "under_budget": ms <= budget_ms,
            "front_best_at_or_below_latency": matched.accuracy if matched else None,
            "front_point": matched.number if matched else None,
            "search_found_best_at_or_below_latency": found.accuracy if found else None,
            "dominated_by_front": bool(matched and matched.accuracy >= result.accuracy),
        })

    under = [p for p in front if p.latency_ms <= budget_ms]
    best = best_under(front, budget_ms)
    export_best = export_from_search(work, work / "export_best", best_under_budget=args.budget,
                                     finetune_steps=args.export_steps, passes=15)
    hand_under = [h for h in hand if h["under_budget"]]
    hand_pick = max(hand_under, key=lambda h: h["latency_ms"]) if hand_under else None
    export_hand = None
    if hand_pick is not None:
        trial = next(r.number for r in outcome.records if r.origin == f"warm_start:{hand_pick['policy']}")
        export_hand = export_from_search(work, work / "export_hand", trial=trial, finetune_steps=args.export_steps,
                                         passes=15)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "pareto.png", args.out / f"search_{spec}_pareto.png")
    statuses = {}
    for r in outcome.records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "baseline": outcome.baseline, "budget_ms": budget_ms, "search_minutes": search_minutes,
        "trials_by_status": statuses,
        "origins_on_front": sorted({p.origin for p in front}),
        "front_points": len(front), "front_points_under_budget": len(under),
        "front": [{"trial": p.number, "accuracy": p.accuracy, "latency_ms": p.latency_ms, "size_bytes": p.size_bytes,
                   "origin": p.origin} for p in front],
        "hand_policies": hand,
        "best_predicted_under_budget": best.number,
        "selection": export_best["selection"],
        "export_best": _card_summary(export_best),
        "export_hand": _card_summary(export_hand) if export_hand else None,
        "hand_policy_exported": hand_pick["policy"] if hand_pick else None,
        "finetune": asdict(settings.finetune),
    }


def _card_summary(card: dict) -> dict:
    lat, acc = card["latency"], card["accuracy"]
    return {"trial": card["trial"], "predicted_ms": lat["predicted_ms"], "measured_ms": lat["measured_ms"],
            "prediction_error": lat["prediction_error"], "measured_over_budget": lat["measured_over_budget"],
            "baseline_measured_ms": lat["baseline_measured_ms"], "ratio_to_baseline": lat["ratio_to_baseline"],
            "accuracy_onnx": acc["after_finetune_onnx"], "accuracy_torch": acc["after_finetune_torch"],
            "baseline_accuracy": acc["baseline"], "drop_points": acc["drop_points"],
            "size_ratio": card["size"]["ratio_to_baseline"]}


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_vs_hand_policy.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Search against the hand policy (uniform pruning + int8)", "",
             f"digits at 32x32, budget {report['budget']} of the baseline's predicted latency, {report['trials']} "
             f"trials of {report['finetune_steps']} distillation steps; exports fine-tuned {report['export_steps']} "
             f"steps and measured with the hardware protocol (fastest run of 3 sweeps 20 s apart, each of 15 "
             f"interleaved passes, next to the baseline). Machine: {report['machine']['cpu']}. Command: "
             "`python benchmarks/search_vs_hand_policy.py`.",
             ""]
    for spec, m in report["models"].items():
        b = m["baseline"]
        lines += [f"## {spec}", "",
                  f"Baseline: accuracy {100 * b['accuracy']:.2f}%, predicted {b['latency_ms']:.3f} ms; budget "
                  f"{m['budget_ms']:.3f} ms. Search: {m['search_minutes']:.1f} min, trials by status "
                  f"{m['trials_by_status']}; front {m['front_points']} points, {m['front_points_under_budget']} "
                  f"under budget (origins: {', '.join(m['origins_on_front'])}).", "",
                  "| hand policy | accuracy | predicted ms | under budget | best front accuracy at <= that latency "
                  "| best search-found (not warm start) | dominated |",
                  "|---|---|---|---|---|---|---|"]
        for h in m["hand_policies"]:
            front_acc = _pct(h["front_best_at_or_below_latency"])
            found_acc = _pct(h["search_found_best_at_or_below_latency"])
            lines.append(f"| {h['policy']} | {_pct(h['accuracy'])} | {h['latency_ms']:.3f} | "
                         f"{'yes' if h['under_budget'] else 'no'} | {front_acc} | {found_acc} | "
                         f"{'yes' if h['dominated_by_front'] else 'no'} |")
        lines += ["", "| exported | trial | predicted ms | measured ms | error | measured / budget | x baseline "
                  "(measured) | ONNX accuracy | drop (points) | size x baseline |", "|---|---|---|---|---|---|---|---|---|---|"]
        for label, e in (("best under budget", m["export_best"]), (f"hand: {m['hand_policy_exported']}",
                                                                    m["export_hand"])):
            if e:
                lines.append(f"| {label} | {e['trial']} | {e['predicted_ms']:.3f} | {e['measured_ms']:.3f} | "
                             f"{100 * e['prediction_error']:+.1f}% | {e['measured_over_budget']:.2f} | "
                             f"{e['ratio_to_baseline']:.3f} | {_pct(e['accuracy_onnx'])} | {e['drop_points']:+.2f} | "
                             f"{e['size_ratio']:.3f} |")
        sel = m["selection"]
        lines += ["", f"Best under budget, chosen by measurement (`export --best-under`): {len(sel['timed'])} front "
                  f"points timed untrained beside the baseline, most accurate first: "
                  + ", ".join(f"trial {t['trial']} {t['predicted_ms']:.3f} predicted / {t['measured_ms']:.3f} "
                              f"measured ms" for t in sel["timed"])
                  + f"; limit {sel['limit_ms']:.3f} ms. The most accurate point predicted under budget was trial "
                  f"{m['best_predicted_under_budget']}.",
                  "", f"![{spec} front](search_{spec}_pareto.png)", ""]
    (out / "search_vs_hand_policy.md").write_text("\n".join(lines))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


if __name__ == "__main__":
    main()
