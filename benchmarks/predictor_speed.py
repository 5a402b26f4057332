"""How fast the latency predictor scores candidates, one at a time and in batches.

A search scores candidates one at a time (each trial) and in batches (boundary repair's moves).
Goals: one candidate in at most 2 ms, at most 0.5 ms per candidate in batches of 1,000, and the
same predictions as scikit-learn's own predict to 1e-9 (relative). Times the whole path a search
pays, Candidate -> kernels (``candidate_table``) -> predicted latency, through the compiled
forests (the default) and through scikit-learn (``compiled=False``, the path before them), one
after the other in the same run; also the kernels step alone, which is part of both; and what a
search pays per new candidate once it priced its space's kernels at its start. Each path is
timed in a block of its own after an untimed call, as a search calling it over and over runs it
(timed alternately, each call of one path would start with the caches the other's hundred-odd MB
of trees left behind). One at a time, each repeat prices another candidate. Then the largest
relative difference between the two paths' predictions (ms and std_ms of every candidate,
per_layer_ms of the first ``--per-layer``). Writes results/predictor_speed.{md,json}.

    python benchmarks/predictor_speed.py [--hardware-model auto] [--repeats 5] [--repeats-one 21]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np

from autocompress.hardware import kernels_of_candidate, load_hardware_model, machine_info
from autocompress.hardware.kernels import candidate_table
from autocompress.hardware.candidates import model_under_test, random_candidate
from autocompress.core.space import Space, SpaceOptions
from autocompress.search.problem import hardware_folder, kernel_sample

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
BATCHES = (1, 100, 1000)


def _paths(hardware, analysis, candidates, kernel_lists):
    """name -> a function of candidate indices: the whole path through scikit-learn (what
    ``HardwareModel.predict_candidate(s)`` did before the compiled forests) and through the compiled
    forests (``HardwareModel`` now), the kernels step alone, and the predictor alone on kernels
    computed beforehand (both ways)."""
    predictor = hardware.predictor

    def predict(kernels, compiled):
        if len(kernels) == 1:
            return predictor.predict(kernels[0], compiled=compiled)
        return predictor.predict_many(kernels, compiled=compiled)

    def compiled_path(chosen):
        if len(chosen) == 1:
            return hardware.predict_candidate(analysis, candidates[chosen[0]])
        return hardware.predict_candidates(analysis, [candidates[i] for i in chosen])

    return {
        "kernels": lambda chosen: [candidate_table(analysis, candidates[i]) for i in chosen],
        "sklearn": lambda chosen: predict([kernels_of_candidate(analysis, candidates[i]) for i in chosen], False),
        "compiled": compiled_path,
        "sklearn_predictor": lambda chosen: predict([kernel_lists[i] for i in chosen], False),
        "compiled_predictor": lambda chosen: predict([kernel_lists[i] for i in chosen], True),
    }


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b))) if a.size else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware-model", default="auto",
                        help="hardware model folder, or auto (default): the one measured on a machine like this")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (median reported)")
    parser.add_argument("--repeats-one", type=int, default=21, help="timed repeats one candidate at a time")
    parser.add_argument("--per-layer", type=int, default=20,
                        help="candidates per model whose per_layer_ms are compared")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    args.hardware_model = hardware_folder(args.hardware_model)  # "auto": the one measured on this machine class
    hardware = load_hardware_model(args.hardware_model)
    load_before = os.getloadavg()
    rows, differences = [], {}
    for spec in MODELS:
        target = model_under_test(spec, 32)
        candidates = [random_candidate(target, random.Random(f"speed-{i}")) for i in range(max(BATCHES))]
        kernel_lists = [kernels_of_candidate(target.analysis, c) for c in candidates]
        start = time.perf_counter()
        hardware.predict_candidate(target.analysis, candidates[0])  # the first model's compiles the forests
        first_call_s = time.perf_counter() - start
        paths = _paths(hardware, target.analysis, candidates, kernel_lists)
        everyone = list(range(len(candidates)))
        for batch in BATCHES:
            repeats = args.repeats_one if batch == 1 else args.repeats
            draws = [[i] for i in range(repeats)] if batch == 1 else [everyone[:batch]] * repeats
            times = {name: [] for name in paths}
            for name, path in paths.items():
                path(everyone[-batch:])
                for chosen in draws:
                    start = time.perf_counter()
                    path(chosen)
                    times[name].append(time.perf_counter() - start)
            ms = {name: 1e3 * statistics.median(t) / batch for name, t in times.items()}
            rows.append({"model": spec, "layers": len(target.analysis.layers), "batch": batch,
                         **{f"{name}_ms_per_candidate": round(v, 4) for name, v in ms.items()},
                         "speedup": round(ms["sklearn"] / ms["compiled"], 1),
                         "predictor_speedup": round(ms["sklearn_predictor"] / ms["compiled_predictor"], 1)})
            print(f"{spec:16s} batch {batch:5d}: " + "  ".join(f"{name} {v:.3f}" for name, v in ms.items())
                  + f" ms per candidate ({ms['sklearn'] / ms['compiled']:.1f}x)")
        # A search prices candidates that share most kernels with those it priced before (the
        # sampler's offspring, repair's one-move variants): once the 1,000 above are priced, new
        # random candidates, one at a time, each never priced before.
        fresh = [random_candidate(target, random.Random(f"speed-new-{i}")) for i in range(args.repeats_one)]
        warm_times = []
        for candidate in fresh:
            start = time.perf_counter()
            hardware.predict_candidate(target.analysis, candidate)
            warm_times.append(time.perf_counter() - start)
        rows[-len(BATCHES)]["compiled_after_1000_ms_per_candidate"] = round(1e3 * statistics.median(warm_times), 4)
        print(f"{spec:16s} one new candidate after 1,000 priced: {1e3 * statistics.median(warm_times):.3f} ms")
        # As a search runs it: a hardware model loaded afresh, the kernels of its space's sample
        # priced at its start (``SearchProblem.learn_kernels``, which ``run_search`` calls), then
        # new candidates of that space one at a time.
        searching = load_hardware_model(args.hardware_model)
        space = Space(target.analysis, SpaceOptions())
        start = time.perf_counter()
        searching.predict_candidate(target.analysis, space.default())  # compiles the forests
        searching.learn_kernels(target.analysis, kernel_sample(space))
        learn_s = time.perf_counter() - start
        rng = random.Random("speed-search")
        search_times = []
        for _ in range(args.repeats_one):
            candidate = space.sample(rng, density=rng.uniform(0.1, 1.0))
            start = time.perf_counter()
            searching.predict_candidate(target.analysis, candidate)
            search_times.append(time.perf_counter() - start)
        rows[-len(BATCHES)] |= {"search_start_s": round(learn_s, 3),
                                "search_ms_per_candidate": round(1e3 * statistics.median(search_times), 4)}
        print(f"{spec:16s} one new candidate of its space after a search's start ({learn_s:.2f} s): "
              f"{1e3 * statistics.median(search_times):.3f} ms")
        fast = paths["compiled"](everyone)
        slow = paths["sklearn_predictor"](everyone)
        layer_differences = []
        for i in range(args.per_layer):
            one, reference = paths["compiled"]([i]), paths["sklearn_predictor"]([i])
            assert list(one.per_layer_ms) == list(reference.per_layer_ms)
            layer_differences.append(_relative(list(one.per_layer_ms.values()), list(reference.per_layer_ms.values())))
        differences[spec] = {"ms": _relative(fast[0], slow[0]), "std_ms": _relative(fast[1], slow[1]),
                             "per_layer_ms": max(layer_differences), "candidates": len(candidates),
                             "first_call_s": round(first_call_s, 3)}
        print(f"{spec:16s} largest relative difference: {differences[spec]}")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"hardware_model": str(args.hardware_model), "repeats": args.repeats, "repeats_one": args.repeats_one,
              "rows": rows,
              "max_relative_difference": differences, "load_average": {"before": load_before, "after": os.getloadavg()},
              "machine": machine_info()}
    (args.out / "predictor_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    worst = max(max(d["ms"], d["std_ms"], d["per_layer_ms"]) for d in differences.values())
    lines = ["# Latency predictor speed", "",
             (f"Candidate -> kernels -> predicted latency in ms per candidate, median of {args.repeats} repeats "
              f"({args.repeats_one} one at a time, each another candidate), on "
              f"{report['machine']['cpu']} (1 process; load average {load_before[0]:.1f} before, "
              f"{report['load_average']['after'][0]:.1f} after; other jobs may share the machine, so read the "
              "side-by-side ratios rather than the absolute times). sklearn: scikit-learn's own predict (the path "
              "before the compiled forests); compiled: the default path; kernels: ``candidate_table`` alone (the kernels as the "
              "default path builds them), "
              "part of both; predictor alone: the same two without it, on kernels computed beforehand. Goals: one "
              "candidate in <= 2 ms, <= 0.5 ms per candidate in batches of 1,000. Each distinct kernel's stage-1 "
              "prediction is kept once computed, so a path that has priced candidates of a model before walks only "
              "the kernels it has not seen (the batch rows time the same candidates again after an untimed call, so "
              "their kernels are all known; one at a time, each candidate is new): the last column prices new random candidates one at a time once the "
              "1,000 of the batch rows were priced, as a search has after its first repairs. The last two columns are "
              "what a search pays: at its start it prices the kernels of 2,000 random candidates of its space in "
              "one batch (``learn_kernels``; the seconds that took, compiling the forests included), then each new "
              "candidate of that space, one at a time, costs the last column."), "",
             "| model | layers | batch | kernels | sklearn | compiled | speed-up | predictor alone: sklearn | compiled "
             "| speed-up | compiled, after 1,000 priced | search start (s) | one new candidate of the space after it |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['layers']} | {r['batch']} | {r['kernels_ms_per_candidate']:.3f} | "
              f"{r['sklearn_ms_per_candidate']:.3f} | {r['compiled_ms_per_candidate']:.3f} | {r['speedup']:.1f}x | "
              f"{r['sklearn_predictor_ms_per_candidate']:.3f} | {r['compiled_predictor_ms_per_candidate']:.3f} | "
              f"{r['predictor_speedup']:.1f}x | "
              + (f"{r['compiled_after_1000_ms_per_candidate']:.3f} | {r['search_start_s']:.2f} | "
                 f"{r['search_ms_per_candidate']:.3f} |" if "search_start_s" in r else "| | |") for r in rows]
    lines += ["", (f"Largest relative difference between the two paths' predictions: {worst:.1e} (ms and std_ms of "
                   f"{max(BATCHES)} candidates per model, per_layer_ms of {args.per_layer}; goal <= 1e-9)."), "",
              "Regenerate: `python benchmarks/predictor_speed.py`"]
    (args.out / "predictor_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
