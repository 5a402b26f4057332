"""Which ranking of moves makes the best boundary repairs: the same over-budget candidates repaired
to one budget by each damage ranking, each repair fine-tuned as a search would, side by side.

A search at a tight budget spends most of its fine-tunes on boundary repairs (``search.boundary``),
so the ranking of the moves a repair takes decides what the front holds. Rankings compared:

- ``macs``: the MAC-share proxy (``--guide macs``);
- ``kl``: the measured damage of each value alone (``--guide sensitivity`` and ``surrogate``).

Each repair's damage is also measured whole (``train.sensitivity.JointDamage``) and set against
its fine-tuned accuracy beside the sum of its decisions' damages (Spearman's rank correlation).

The candidates are sparse random draws of the model's Space (as a search's first generation is)
that the predictor reads over the budget; each is repaired by every ranking from the same start,
and every distinct repair fine-tuned with the search's settings. Reported: each ranking's
accuracies (mean, median, paired wins), and the decisions its repairs changed, by technique.

Writes results/repair_ranking_MODEL_BUDGET.{md,json}.

    python benchmarks/repair_ranking.py --model mobilenet_v2 --budget 0.25x --candidates 16
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from autocompress.hardware import machine_info
from autocompress.search.allocation import expected_damage
from autocompress.search.boundary import repair_to_budget
from autocompress.search.budget import Budget, BudgetError, ChanceConstraint, DEFAULT_CONFIDENCE
from autocompress.search.damage import MAC_SHARE, MeasuredDamage
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.train.finetune import DistillationConfig

RANKINGS = ("macs", "kl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--budget", default="0.25x")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench"), help="shared with search_vs_hand_policy.py")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    if args.candidates < 2:
        parser.error(f"--candidates {args.candidates}: give at least 2 (the report ranks repairs against each other)")
    try:
        budget = Budget.parse(args.budget)
    except BudgetError as exc:  # before the baseline trains
        parser.error(str(exc))

    problem = build_problem(ProblemSpec(model=args.model), cache_dir=args.work / args.model)
    problem.learn_kernels()
    problem = problem.with_sensitivities(args.work / args.model)
    budget_ms = budget.resolve(problem.baseline_ms)
    chance = ChanceConstraint(DEFAULT_CONFIDENCE)
    damages = {"macs": MAC_SHARE, "kl": MeasuredDamage(problem.sensitivities.kl)}
    config = DistillationConfig(steps=args.finetune_steps)
    space = problem.space

    joint_kl = problem.joint_damage()  # does the whole candidate's damage rank repairs better than the sum?
    rng, starts = random.Random(f"repair-ranking-{args.seed}"), []
    while len(starts) < args.candidates:
        candidate = space.sample(rng, density=rng.uniform(0.15, 0.6))
        if float(chance.predict_upper_ms(problem.hardware, problem.analysis, [candidate])[0]) > budget_ms:
            starts.append(candidate)

    accuracy_of: dict[str, float] = {}  # candidate JSON -> fine-tuned accuracy (a repair two rankings share once)
    rows, started = [], time.perf_counter()
    for index, start in enumerate(starts):
        row = {"start": index, "repairs": {}}
        for name in RANKINGS:
            repaired = repair_to_budget(space, problem.hardware, start, budget_ms, damage=damages[name], chance=chance)
            if repaired is None:
                row["repairs"][name] = None
                continue
            candidate, ms = repaired
            key = candidate.to_json()
            if key not in accuracy_of:
                accuracy_of[key] = problem.finetune(candidate, config)[1].accuracy
            row["repairs"][name] = {"accuracy": accuracy_of[key], "predicted_ms": ms, "candidate": candidate.to_dict(),
                                    "joint_kl": joint_kl(candidate),
                                    "changed": _changed_by_kind(space, start, candidate),
                                    "kl_sum": expected_damage(space, candidate, problem.sensitivities.kl)}
        rows.append(row)
        print(index, {n: (r and round(r["accuracy"], 4)) for n, r in row["repairs"].items()}, flush=True)

    report = {"model": args.model, "budget": args.budget, "budget_ms": budget_ms, "candidates": args.candidates,
              "finetune_steps": args.finetune_steps, "seed": args.seed, "minutes": (time.perf_counter() - started) / 60,
              "machine": machine_info(), "baseline_accuracy": problem.baseline_accuracy, "rows": rows,
              "summary": _summary(rows)}
    name = f"repair_ranking_{args.model}_{args.budget}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(_markdown(report))
    print(f"written: {args.out / name}.md")


def _changed_by_kind(space, start, candidate) -> dict[str, int]:
    """How many decisions the repair changed, by technique (prune, bits, rank, cell, ...)."""
    changed: dict[str, int] = {}
    for var in space.variables:
        if start.of(var.kind).get(var.unit, space.neutral(var)) != candidate.of(var.kind).get(var.unit,
                                                                                              space.neutral(var)):
            changed[var.kind] = changed.get(var.kind, 0) + 1
    return changed


def _summary(rows: list[dict]) -> dict:
    repairs = [r for row in rows for r in row["repairs"].values() if r]
    accuracy = [r["accuracy"] for r in repairs]
    out = {"spearman_whole_damage": _spearman([-r["joint_kl"] for r in repairs], accuracy),
           "spearman_summed_damage": _spearman([-r["kl_sum"] for r in repairs], accuracy), "rankings": {}}
    both = [r for r in rows if all(r["repairs"].get(n) for n in RANKINGS)]
    for name in RANKINGS:
        accs = [r["repairs"][name]["accuracy"] for r in both]
        kinds: dict[str, int] = {}
        for r in both:
            for kind, n in r["repairs"][name]["changed"].items():
                kinds[kind] = kinds.get(kind, 0) + n
        others = [n for n in RANKINGS if n != name]
        wins = sum(all(r["repairs"][name]["accuracy"] > r["repairs"][o]["accuracy"] for o in others) for r in both)
        out["rankings"][name] = {"repaired": sum(bool(r["repairs"].get(name)) for r in rows), "paired": len(both),
                     "mean": statistics.fmean(accs) if accs else None,
                     "median": statistics.median(accs) if accs else None,
                     "best": max(accs, default=None), "wins": wins, "changed_by_kind": kinds}
    return out


def _markdown(report: dict) -> str:
    lines = [f"# Boundary repair rankings: {report['model']} at {report['budget']} "
             f"({report['budget_ms']:.3f} ms predicted)", "",
             f"{report['candidates']} sparse random candidates of the Space read over the budget, each repaired "
             f"by every ranking from the same start and fine-tuned {report['finetune_steps']} distillation steps; "
             f"baseline {report['baseline_accuracy']:.2%}. Machine: {report['machine'].get('cpu', '')}. Command: "
             f"`python benchmarks/repair_ranking.py --model {report['model']} --budget {report['budget']} "
             f"--candidates {report['candidates']}`.", "",
             "| ranking | repaired | mean accuracy | median | best | wins (paired) | decisions changed, by technique |",
             "|---|---|---|---|---|---|---|"]
    for name, s in report["summary"]["rankings"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["changed_by_kind"].items()))
        lines.append(f"| {name} | {s['repaired']} | {_pct(s['mean'])} | {_pct(s['median'])} | {_pct(s['best'])} | "
                     f"{s['wins']} of {s['paired']} | {kinds} |")
    summary = report["summary"]
    lines += ["", f"Over all {sum(s['repaired'] for s in summary['rankings'].values())} repairs, Spearman's rank "
              f"correlation of the fine-tuned accuracy with minus the damage of the candidate measured whole: "
              f"{summary['spearman_whole_damage']:.2f}; with minus the sum of its decisions' damages: "
              f"{summary['spearman_summed_damage']:.2f}."]
    lines += ["", "| start | " + " | ".join(RANKINGS) + " |", "|---|" + "---|" * len(RANKINGS)]
    for row in report["rows"]:
        cells = [_pct(r["accuracy"]) + f" ({r['predicted_ms']:.3f} ms)" if r else "-" for r in
                 (row["repairs"][n] for n in RANKINGS)]
        lines.append(f"| {row['start']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


if __name__ == "__main__":
    main()
