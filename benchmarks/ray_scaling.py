"""Trials per hour with 1 and 2 Ray workers, against the in-process executor, on the same candidates.

The trials are fine-tune-bound: N sparse random candidates of ResNet-18 on digits (32x32), each
fine-tuned ``--steps`` distillation steps with early stopping off, so every run does the same
work. Every executor uses one torch thread per trial. Reports trials per hour, the 2-worker
speed-up, Ray's start-up time, and the per-trial overhead Ray adds (wall time per trial with one
Ray worker minus with the in-process executor). Writes results/ray_scaling.{md,json}.

    python benchmarks/ray_scaling.py [--trials 16] [--steps 60] [--work runs/bench/resnet18]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from autocompress.search.executors import LocalExecutor, TrialJob
from autocompress.search.executors.ray_pool import RayExecutor
from autocompress.train.finetune import DistillationConfig
from autocompress.hardware import machine_info
from autocompress.search.problem import ProblemSpec, build_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/resnet18"), help="baseline cache folder")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    problem = build_problem(ProblemSpec(model=args.model), cache_dir=args.work)
    rng = random.Random("ray-scaling")
    candidates = [problem.space.sample(rng, density=rng.uniform(0.15, 0.6)) for _ in range(args.trials)]
    config = DistillationConfig(steps=args.steps, checkpoints=())
    jobs = [TrialJob(i, c.to_dict(), config, problem.predict(c).ms, problem.size_bytes(c))
            for i, c in enumerate(candidates)]
    assert len({json.dumps(problem.space.params_of(c), sort_keys=True) for c in candidates}) == len(jobs)

    runs = {}
    torch.set_num_threads(1)
    runs["local (in-process, 1 thread)"] = timed(LocalExecutor(problem), jobs)
    for workers in (1, 2):
        started = time.perf_counter()
        executor = RayExecutor(problem, workers=workers, cpus_per_trial=1)
        startup = time.perf_counter() - started
        runs[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = timed(executor, jobs) | {"startup_s": startup}
        executor.close()

    local, one, two = runs.values()
    report = {
        "model": args.model, "trials": args.trials, "steps": args.steps, "machine": machine_info(), "runs": runs,
        "speedup_2_vs_1_workers": two["trials_per_hour"] / one["trials_per_hour"],
        "ray_overhead_per_trial_s": (one["wall_s"] - local["wall_s"]) / args.trials,
        "gpu": "not measured: no GPU was lent to this issue",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Distributed search: trials per hour", "",
             f"{args.trials} fine-tune-bound trials ({args.model} on digits 32x32, {args.steps} distillation steps each, "
             f"no early stopping), the same candidates in every run, one torch thread per trial, on "
             f"{report['machine']['cpu']} with {report['machine'].get('cores', '?')} cores. Command: "
             "`python benchmarks/ray_scaling.py`.", "",
             "| executor | wall (s) | trials per hour | median trial (s, on the worker) | start-up (s) |",
             "|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | {r['median_trial_s']:.1f} | "
                     f"{r.get('startup_s', 0):.1f} |")
    lines += ["", f"2 workers reach **{report['speedup_2_vs_1_workers']:.2f}x** the trials per hour of 1 worker. "
              f"Ray adds {report['ray_overhead_per_trial_s']:.2f} s per trial over the in-process executor "
              "(1 worker against in-process, start-up excluded).", "", f"GPU: {report['gpu']}.", ""]
    (args.out / "ray_scaling.md").write_text("\n".join(lines))
    print("\n".join(lines))


def timed(executor, jobs: list[TrialJob]) -> dict:
    """Run every job, keeping every worker busy; wall time from the first submit to the last result."""
    pending, in_flight, seconds = list(jobs), {}, []
    started = time.perf_counter()
    while pending or in_flight:
        while pending and len(in_flight) < executor.slots:
            job = pending.pop(0)
            in_flight[executor.submit(job)] = job
        for handle, outcome in executor.wait(list(in_flight)):
            in_flight.pop(handle)
            if isinstance(outcome, Exception):
                raise outcome
            seconds.append(outcome.seconds)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "trials_per_hour": 3600 * len(jobs) / wall, "median_trial_s": statistics.median(seconds)}


if __name__ == "__main__":
    main()
