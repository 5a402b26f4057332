"""How fast the latency predictor scores candidates, one at a time and in batches.

A search scores thousands of candidates; the goal is at most 1 ms per ResNet-18-sized candidate
when many are predicted at once. Times the whole path a search pays: Candidate -> kernels
(``kernels_of_candidate``) -> predicted latency, and writes results/predictor_speed.{md,json}.

    python benchmarks/predictor_speed.py [--hardware-model auto] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from autocompress.hardware import load_hardware_model, machine_info
from autocompress.hardware.candidates import model_under_test, random_candidate
from autocompress.search.problem import hardware_folder

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
BATCHES = (1, 100, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware-model", default="auto",
                        help="hardware model folder, or auto (default): the one measured on a machine like this")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (median reported)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    args.hardware_model = hardware_folder(args.hardware_model)  # "auto": the one measured on this machine class
    hardware = load_hardware_model(args.hardware_model)
    rows = []
    for spec in MODELS:
        target = model_under_test(spec, 32)
        candidates = [random_candidate(target, random.Random(f"speed-{i}")) for i in range(max(BATCHES))]
        for batch in BATCHES:
            chosen = candidates[:batch]
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                if batch == 1:
                    hardware.predict_candidate(target.analysis, chosen[0])
                else:
                    hardware.predict_candidates(target.analysis, chosen)
                times.append(time.perf_counter() - start)
            per_candidate_ms = 1e3 * statistics.median(times) / batch
            rows.append({"model": spec, "layers": len(target.analysis.layers), "batch": batch,
                         "ms_per_candidate": round(per_candidate_ms, 4)})
            print(f"{spec:16s} batch {batch:5d}: {per_candidate_ms:.3f} ms per candidate")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"hardware_model": str(args.hardware_model), "repeats": args.repeats, "rows": rows,
              "machine": machine_info()}
    (args.out / "predictor_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Latency predictor speed", "",
             (f"Candidate -> kernels -> predicted latency, median of {args.repeats} repeats, on "
              f"{report['machine']['cpu']} (1 process). Goal: <= 1 ms per ResNet-18-sized candidate in batches."), "",
             "| model | layers | batch | ms per candidate |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['layers']} | {r['batch']} | {r['ms_per_candidate']:.3f} |" for r in rows]
    lines += ["", "Regenerate: `python benchmarks/predictor_speed.py`"]
    (args.out / "predictor_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
