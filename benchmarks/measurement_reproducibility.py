"""How well a latency measurement reproduces on this machine: the previous protocol against the current one.

A predictor cannot be checked to +-10% against a measurement that does not itself reproduce to
+-10%. This benchmark measures the same candidates twice (measurement A, then measurement B, each
two sweeps whose faster one counts, as profiling and validation do) with three protocols, their
sweeps alternating so the machine's state over the run hits both alike:

- previous: a fresh ONNX Runtime session for each of 5 passes of 20 runs;
- one session per model kept across 5 passes (to tell the effect of the session from that of
  the number of passes);
- current (``measure_interleaved``): one session per model kept across 12 passes.

Each takes the fastest run of all passes.

For each it reports the share of candidates whose A and B came within 10% of each other, and the
median and 90th percentile of |A/B - 1|. Writes results/measurement_reproducibility.{md,json}.

    python benchmarks/measurement_reproducibility.py [--per-group 8] [--out results]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from autocompress.hardware import machine_info
from autocompress.hardware.candidates import export_candidate, model_under_test, random_candidate
from autocompress.hardware.measure import PASSES, measure_interleaved, measure_latency

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
SIZES = (32, 64)
PROTOCOLS = {"previous": "previous: a fresh session for each of 5 passes",
             "kept5": "one session kept across 5 passes",
             "current": f"current: one session kept across {PASSES} passes"}


def previous_protocol(models: list[tuple[Path, tuple[int, ...]]]) -> list[float]:
    """The protocol before this benchmark: each pass opens a fresh session (5 warm-up runs, 20
    timed), 5 passes interleaved over the models; the fastest run of all."""
    bests = [[] for _ in models]
    for _ in range(5):
        for index, (path, shape) in enumerate(models):
            bests[index].append(measure_latency(path, shape, warmup=5, runs=20).best_ms)
    return [min(b) for b in bests]


def one_sweep(models) -> dict:
    """One sweep of each protocol over all models, in turn, with how long each took."""
    protocols = {"previous": lambda: previous_protocol(models),
                 "kept5": lambda: [m.best_ms for m in measure_interleaved(models, passes=5)],
                 "current": lambda: [m.best_ms for m in measure_interleaved(models)]}
    sweep: dict = {"seconds": {}}
    for name, measure in protocols.items():
        start = time.perf_counter()
        sweep[name] = measure()
        sweep["seconds"][name] = time.perf_counter() - start
    return sweep


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    gap = np.abs(a / b - 1.0)
    return {"within_10pct": float(np.mean(gap <= 0.10)), "median_gap": float(np.median(gap)),
            "p90_gap": float(np.percentile(gap, 90)), "n": len(gap)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-group", type=int, default=8, help="candidates per model and input size")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    if args.per_group < 1:
        parser.error(f"--per-group must be at least 1, got {args.per_group}")

    groups, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in MODELS:
            for size in SIZES:
                target = model_under_test(spec, size)
                for i in range(args.per_group):
                    candidate = random_candidate(target, random.Random(f"reproducibility-{spec}-{size}-{i}"))
                    path = export_candidate(target, candidate, Path(tmp) / f"{len(models)}.onnx")
                    models.append((path, target.input_shape))
                    groups.append(f"{spec}@{size}")
        print(f"exported {len(models)} candidates; measuring A then B, two sweeps each per protocol")
        sweeps = []
        for name in ("A1", "A2", "B1", "B2"):
            sweeps.append(one_sweep(models))
            print(f"sweep {name}: " + ", ".join(f"{p} {s:.0f} s" for p, s in sweeps[-1]["seconds"].items()))

    groups = np.array(groups)
    measured = {p: (np.minimum(sweeps[0][p], sweeps[1][p]), np.minimum(sweeps[2][p], sweeps[3][p])) for p in PROTOCOLS}
    rows = []
    for protocol, label in PROTOCOLS.items():
        a, b = measured[protocol]
        rows.append({"protocol": label, "all": agreement(a, b),
                     "groups": {g: agreement(a[groups == g], b[groups == g]) for g in sorted(set(groups))}})
    seconds = {p: statistics.median(s["seconds"][p] for s in sweeps) for p in PROTOCOLS}
    report = {"candidates": len(models), "per_group": args.per_group, "rows": rows,
              "sweep_seconds_median": seconds, "machine": machine_info(),
              "measurements": {p: {"A": a.tolist(), "B": b.tolist()} for p, (a, b) in measured.items()},
              "groups": groups.tolist()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measurement_reproducibility.json").write_text(json.dumps(report, indent=2) + "\n")
    names = sorted(set(groups))
    lines = ["# How well a latency measurement reproduces", "",
             (f"{len(models)} random candidates ({args.per_group} per model and input size), each measured twice "
              f"(A, then B; each the faster of two sweeps) by each protocol, sweeps alternating, on "
              f"{report['machine']['cpu']}, ONNX Runtime {report['machine']['onnxruntime']}, 1 thread. "
              "Command: `python benchmarks/measurement_reproducibility.py`."), "",
             "Share of candidates whose A and B agree within 10%, then the median and 90th percentile of |A/B - 1|.",
             "", "| protocol (fastest run) | all: within 10% | median gap | p90 gap | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for row in rows:
        overall = row["all"]
        lines.append(f"| {row['protocol']} | {overall['within_10pct']:.0%} | {overall['median_gap']:.1%} | "
                     f"{overall['p90_gap']:.1%} | "
                     + " | ".join(f"{row['groups'][g]['within_10pct']:.0%}" for g in names) + " |")
    lines += ["", f"One sweep over all {len(models)} candidates took (median of 4 sweeps): "
              + ", ".join(f"{PROTOCOLS[p]} {s:.0f} s" for p, s in seconds.items()) + "."]
    (args.out / "measurement_reproducibility.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
