"""Architecture search from a supernet against hand-designed networks given the same training budget.

Digits at 32x32, one latency budget. Three arms:

- supernet: ``autocompress search space:search_spaces/mobile_supernet.yaml`` (supernet training,
  then the joint search of subnets with their pruning, bit widths and ranks, NSGA-II with warm
  starts and repair, the CLI's defaults for calibration and measurement near the budget);
- random: the same space and the same trained supernet (its folder copied), random sampling with no
  warm starts and no repair, run until it has fine-tuned as many candidates as the supernet arm;
- hand-designed: MobileNet-V2 at width 0.35, 0.5 and 1.0 and ResNet-18, each trained from scratch
  on the labels for at most as many steps as the supernet arm trained in all (every subnet pass of
  the supernet's training, the largest, the smallest and the random ones of each sandwich step,
  plus every fine-tune step of its trials), stopping earlier when its held-out accuracy reaches a
  plateau and keeping its best weights (``train.plateau``): the strongest use of that budget, not a
  fixed schedule that may overfit or stop short.

Latency is measured, never predicted, for every compared point: each front point of the two search
arms (untrained: latency does not depend on the weights) and each hand-designed network are
exported to ONNX and timed together, interleaved, with the export card's protocol (fastest run of
the sweeps). Accuracy is the held-out accuracy each arm's own training reached (a front point's:
after its trial's fine-tune). Compared: for each hand-designed network, the most accurate front
point of each search arm measuring no slower than it. Then ``export --best-under`` on each search
arm: the point it picks, fine-tuned longer, exported and measured beside the largest subnet.

Writes results/supernet_vs_handdesigned.{md,json} after each arm.

    python benchmarks/supernet_vs_handdesigned.py [--budget 2ms] [--trials 60] [--train-steps 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import torchvision

from autocompress.errors import AutocompressError
from autocompress.export.card import export_from_search
from autocompress.hardware import machine_info
from autocompress.hardware.candidates import ModelUnderTest, export_candidate
from autocompress.hardware.measure import measure_in_sweeps
from autocompress.hardware.onnx_export import export_onnx
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.search.run import SearchSettings, run_search
from autocompress.core.space import Candidate
from autocompress.train.data import load_dataset
from autocompress.train.finetune import DistillationConfig, evaluate_accuracy
from autocompress.train.supernet import SupernetTrainingConfig
from autocompress.train.plateau import PlateauConfig, train_to_plateau

SPACE = "space:search_spaces/mobile_supernet.yaml"
HAND_DESIGNED = {"mobilenet_v2 x0.35": lambda: torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10),
                 "mobilenet_v2 x0.5": lambda: torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10),
                 "mobilenet_v2 x1.0": lambda: torchvision.models.mobilenet_v2(width_mult=1.0, num_classes=10),
                 "resnet18": lambda: torchvision.models.resnet18(num_classes=10)}
SHARED = ("baseline.pt", "baseline.json", "supernet", "latency")  # the random arm starts from the same supernet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="2ms")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--train-steps", type=int, default=400, help="sandwich steps of supernet training")
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--export-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/supernet_vs_handdesigned"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    report = {"budget": args.budget, "trials": args.trials, "train_steps": args.train_steps,
              "finetune_steps": args.finetune_steps, "export_steps": args.export_steps, "machine": machine_info(),
              "command": "python benchmarks/supernet_vs_handdesigned.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("work", "out")),
              "arms": {}}
    save = lambda: write(report, args.out)  # noqa: E731

    supernet = search_arm(args, args.work / "supernet", sampler="nsga2", guided=True)
    report["arms"]["supernet"] = supernet
    save()
    random_folder = args.work / "random"
    random_folder.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        source, target = args.work / "supernet" / name, random_folder / name
        if source.exists() and not target.exists():
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    report["arms"]["random"] = search_arm(args, random_folder, sampler="random", guided=False,
                                          finetunes=supernet["finetunes"])
    save()
    steps = supernet["training_passes"] + supernet["finetune_steps_total"]
    report["hand_designed_steps"] = steps
    report["hand_designed"] = hand_designed(steps, args)
    save()
    report["measured"] = measure_everything(report, args)
    report["comparison"] = compare(report)
    report["predictions"] = predictions(report)
    save()
    for arm in ("supernet", "random"):
        report["arms"][arm]["export"] = export_best(args.work / arm, args)
        save()


def search_arm(args, folder: Path, *, sampler: str, guided: bool, finetunes: int | None = None) -> dict:
    """One search; the random arm runs in rounds until it has fine-tuned ``finetunes`` candidates."""
    started = time.perf_counter()
    trials, tuned_before = args.trials, -1
    while True:
        settings = SearchSettings(problem=ProblemSpec(model=SPACE, train_steps=args.train_steps), budget=args.budget,
                                  out=folder, trials=trials, seed=args.seed, sampler=sampler, warm_start=guided,
                                  repair=guided, finetune=DistillationConfig(steps=args.finetune_steps, seed=args.seed),
                                  guide="macs")
        outcome = run_search(settings, progress=False)
        tuned = [r for r in outcome.records if r.finetune_steps > 0]
        # A round that fine-tuned nothing more drew nothing under the budget: at a tight budget random
        # draws of the joint space may never fit, and more rounds only add proposals told over it.
        if finetunes is None or len(tuned) >= finetunes or trials >= 10 * args.trials or len(tuned) == tuned_before:
            break
        trials, tuned_before = trials + max(10, 2 * (finetunes - len(tuned))), len(tuned)
    sandwich = SupernetTrainingConfig(steps=args.train_steps)
    return {"folder": str(folder), "sampler": sampler, "trials": len(outcome.records), "finetunes": len(tuned),
            "finetune_steps_total": sum(r.finetune_steps for r in tuned),
            "training_passes": args.train_steps * (2 + sandwich.random_subnets),
            "budget_ms": outcome.budget_ms, "minutes": (time.perf_counter() - started) / 60,
            "baseline": outcome.baseline,
            "front": [{"trial": p.number, "accuracy": p.accuracy, "predicted_ms": p.latency_ms, "origin": p.origin,
                       "candidate": p.candidate} for p in outcome.front]}


def hand_designed(steps: int, args) -> dict:
    """Each network trained once (its result cached in the work folder, so a rerun goes on)."""
    splits = load_dataset("digits", image_size=32)
    out = {}
    for name, build in HAND_DESIGNED.items():
        path = args.work / "hand" / f"{name.replace(' ', '_')}.onnx"
        done = path.with_suffix(".json")
        if done.is_file() and json.loads(done.read_text()).get("step_budget") == steps:
            out[name] = json.loads(done.read_text())
            continue
        torch.manual_seed(args.seed)
        model = build()
        run = train_to_plateau(model, splits.train, PlateauConfig(time_cap_s=float("inf"), max_steps=steps,
                                                                  seed=args.seed))
        out[name] = {"accuracy": evaluate_accuracy(model, splits.val), "train_minutes": run.seconds / 60,
                     "steps": run.steps, "best_step": run.best_step, "stopped": run.stopped, "step_budget": steps,
                     "params": sum(p.numel() for p in model.parameters()), "onnx": str(path)}
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model.eval(), splits.val[0][0].unsqueeze(0), path)
        done.write_text(json.dumps(out[name], indent=2) + "\n")
        print(f"{name}: {100 * out[name]['accuracy']:.2f}% after {run.steps} of {steps} steps ({run.stopped})",
              flush=True)
    return out


def measure_everything(report: dict, args) -> dict:
    """Every front point of both arms and every hand-designed network, timed in the same sweeps."""
    problem = build_problem(ProblemSpec(model=SPACE, train_steps=args.train_steps),
                            cache_dir=args.work / "supernet")
    target = ModelUnderTest(SPACE, 32, problem.baseline, problem.analysis, problem.example)
    files = []
    for arm in ("supernet", "random"):
        for point in report["arms"][arm]["front"]:
            path = args.work / "front_onnx" / f"{arm}_{point['trial']}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            export_candidate(target, Candidate.from_dict(point["candidate"]), path)
            files.append((f"{arm}/{point['trial']}", path))
    files += [(f"hand/{name}", Path(h["onnx"])) for name, h in report["hand_designed"].items()]
    shape = tuple(problem.example.shape)
    timings = measure_in_sweeps([(path, shape) for _, path in files])
    return {label: measured.best_ms for (label, _), (measured, _) in zip(files, timings)}


def predictions(report: dict) -> dict:
    """Each measured front point's prediction error: how far the search's prices were from the target."""
    errors = {f"{arm}/{p['trial']}": report["measured"][f"{arm}/{p['trial']}"] / p["predicted_ms"] - 1
              for arm in ("supernet", "random") for p in report["arms"][arm]["front"]}
    within = [abs(e) <= 0.15 for e in errors.values()]
    return {"errors": errors, "within_15_percent": sum(within), "points": len(within)}


def compare(report: dict) -> dict:
    """For each hand-designed network: the best point of each arm measuring no slower than it."""
    measured = report["measured"]
    rows = {}
    for name, hand in report["hand_designed"].items():
        limit = measured[f"hand/{name}"]
        row = {"hand_ms": limit, "hand_accuracy": hand["accuracy"]}
        for arm in ("supernet", "random"):
            fits = [p for p in report["arms"][arm]["front"] if measured[f"{arm}/{p['trial']}"] <= limit]
            best = max(fits, key=lambda p: p["accuracy"], default=None)
            row[arm] = None if best is None else {"trial": best["trial"], "accuracy": best["accuracy"],
                                                  "measured_ms": measured[f"{arm}/{best['trial']}"]}
        rows[name] = row
    return rows


def export_best(folder: Path, args) -> dict:
    try:
        card = export_from_search(folder, folder / "export", best_under_budget=args.budget,
                                  finetune_steps=args.export_steps)
    except AutocompressError as exc:
        return {"error": str(exc)}
    lat, acc = card["latency"], card["accuracy"]
    return {"trial": card["trial"], "predicted_ms": lat["predicted_ms"], "measured_ms": lat["measured_ms"],
            "prediction_error": lat["prediction_error"], "measured_over_budget": lat["measured_over_budget"],
            "accuracy_onnx": acc["after_finetune_onnx"]}


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "supernet_vs_handdesigned.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = ["# Architecture search from a supernet against hand-designed networks", "",
             f"digits at 32x32 (not CIFAR or ImageNet: the figures are not comparable with published ones), "
             f"budget {report['budget']}, {report['trials']} trials of {report['finetune_steps']} distillation "
             f"steps after {report['train_steps']} sandwich steps of supernet training. Machine: "
             f"{report['machine'].get('cpu')}. Command: `{report['command']}`.", ""]
    for arm, a in report["arms"].items():
        lines.append(f"- {arm}: {a['trials']} trials, {a['finetunes']} fine-tuned, {a['minutes']:.1f} min, "
                     f"front {len(a['front'])} points")
    if "hand_designed_steps" in report:
        lines += ["", f"Hand-designed networks trained from scratch for {report['hand_designed_steps']} steps "
                  "at most (the supernet arm's subnet passes plus its fine-tune steps), each stopped at its "
                  "held-out plateau: " + ", ".join(f"{n} {h['steps']} ({h['stopped']})"
                                                   for n, h in report.get("hand_designed", {}).items()) + ".", ""]
    if "comparison" in report:
        lines += ["| hand-designed | measured ms | accuracy | supernet front, best at <= that latency | "
                  "random search, best at <= that latency |", "|---|---|---|---|---|"]
        for name, row in report["comparison"].items():
            cells = [f"{100 * row[a]['accuracy']:.2f}% ({row[a]['measured_ms']:.3f} ms, trial {row[a]['trial']})"
                     if row[a] else "none that fast" for a in ("supernet", "random")]
            lines.append(f"| {name} | {row['hand_ms']:.3f} | {100 * row['hand_accuracy']:.2f}% | {cells[0]} | "
                         f"{cells[1]} |")
    if "predictions" in report:
        p = report["predictions"]
        under = {arm: sum(1 for q in a["front"] if q["predicted_ms"] <= a["budget_ms"]) for arm, a in report["arms"].items()}
        lines += ["", f"Front points measured (untrained exports, the card's protocol): {p['within_15_percent']} of "
                  f"{p['points']} within 15% of their predictions; errors from "
                  f"{100 * min(p['errors'].values()):+.1f}% to {100 * max(p['errors'].values()):+.1f}%. Points "
                  f"predicted under the budget: " + ", ".join(f"{arm} {n}" for arm, n in under.items()) + "."]
    for arm, a in report["arms"].items():
        e = a.get("export")
        if e and "error" not in e:
            lines.append(f"\n`export --best-under {report['budget']}` on {arm}: trial {e['trial']}, predicted "
                         f"{e['predicted_ms']:.3f} ms, measured {e['measured_ms']:.3f} ms "
                         f"({100 * e['prediction_error']:+.1f}%), {100 * e['accuracy_onnx']:.2f}% in ONNX Runtime")
        elif e:
            lines.append(f"\n`export --best-under` on {arm}: {e['error']}")
    (out / "supernet_vs_handdesigned.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
