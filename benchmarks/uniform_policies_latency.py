"""How well a hardware model predicts the uniform policies a search starts from, and their kin.

The search seeds every study with uniform policies (``core.policies.warm_start_policies``: all int8, and
uniform pruning by 25-75% in int8 and in float) and exports what wins, yet random candidates, on
which ``validate-predictor`` scores the predictor, never come near them: every layer pruned alike
and long chains of one precision. This times, with the shared protocol, two sets of each model and
input size:

- ``warm-start``: the search's own policies. The default profile plan measures them too, so for a
  hardware model profiled with that plan these are candidates it was fit on (an in-sample check
  that the fit reaches them);
- ``held-out``: uniform policies the plan does not hold: uniform pruning by 12.5-75% in float16
  and int4, and by 12.5% in float and int8.

Writes results/uniform_policies_latency[_SUFFIX].{md,json}: per set and model, the share within
±10%, RMSPE and median error, and every candidate's figures.

    python benchmarks/uniform_policies_latency.py hardware_models/ort-cpu-1t-amx --suffix amx
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.hardware import load_hardware_model, machine_info
from autocompress.hardware.candidates import CANDIDATES_PER_BATCH, measure_candidates, model_under_test
from autocompress.hardware.validation import accuracy_figures
from autocompress.core.policies import warm_start_policies
from autocompress.core.space import Space, SpaceOptions

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
SIZES = (32, 64)
# (prune ratio, bits) of the held-out set: none of them is a warm-start policy
HELD_OUT = ((0.125, 32), (0.125, 8), (0.125, 16), (0.25, 16), (0.375, 16), (0.5, 16), (0.75, 16), (0.25, 4),
            (0.5, 4), (0.75, 4))


def policies(space: Space) -> list[tuple[str, str, dict]]:
    """(set, name, trial parameters) of every policy timed for one model and size."""
    out = [("warm-start", name, params) for name, params in warm_start_policies(space).items()]
    prune = [v for v in space.variables if v.kind == "prune"]
    bits = [v for v in space.variables if v.kind == "bits"]
    for ratio, width in HELD_OUT:
        params = {v.name: ratio for v in prune if ratio in v.choices}
        params |= {v.name: width for v in bits if width in v.choices and width != 32}
        out.append(("held-out", f"uniform-{ratio:g}-{'fp32' if width == 32 else f'b{width}'}", params))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hardware_model", type=Path)
    parser.add_argument("--suffix", default="", help="appended to the report's file name (a machine class)")
    parser.add_argument("--sweeps", type=int, default=3, help="sweeps over all candidates; the fastest counts")
    args = parser.parse_args()
    if args.sweeps < 1:
        parser.error(f"--sweeps must be 1 or more, got {args.sweeps}")
    try:
        hardware = load_hardware_model(args.hardware_model)
    except AutocompressError as exc:
        parser.error(str(exc))
    items, rows = [], []
    for spec in MODELS:
        for size in SIZES:
            target = model_under_test(spec, size)
            space = Space(target.analysis, SpaceOptions(cells=False))  # the hand policies, as before cells
            for which, name, params in policies(space):
                candidate = space.from_params(params)
                predicted = hardware.predict_candidate(target.analysis, candidate).ms
                items.append((target, candidate))
                rows.append({"set": which, "model": spec, "input_size": size, "policy": name,
                             "predicted_ms": predicted})
    started = time.monotonic()
    # As profiling and validation time candidates: in their batches, in several sweeps over all of
    # them, the fastest sweep counting (single sweeps of the same batches differed by up to 25%
    # on EfficientNet-B0).
    for sweep in range(args.sweeps):
        timings = [t for start in range(0, len(items), CANDIDATES_PER_BATCH)
                   for t in measure_candidates(items[start:start + CANDIDATES_PER_BATCH])]
        for row, timing in zip(rows, timings):
            row.setdefault("sweeps_ms", []).append(timing.best_ms)
    for row in rows:
        row["measured_ms"] = min(row["sweeps_ms"])
        row["error"] = row["predicted_ms"] / row["measured_ms"] - 1.0
    minutes = (time.monotonic() - started) / 60

    summary = []
    for which in ("warm-start", "held-out"):
        for spec in (*MODELS, "all"):
            subset = [r for r in rows if r["set"] == which and spec in (r["model"], "all")]
            figures = accuracy_figures([r["predicted_ms"] for r in subset], [r["measured_ms"] for r in subset])
            summary.append({"set": which, "model": spec, "n": len(subset), "within_10": figures.within_10pct,
                            "rmspe": figures.rmspe, "median_error": float(np.median([r["error"] for r in subset])),
                            "worst_error": max((r["error"] for r in subset), key=abs)})
    name = "uniform_policies_latency" + (f"_{args.suffix}" if args.suffix else "")
    out = Path("results")
    out.mkdir(exist_ok=True)
    machine = machine_info()
    report = {"hardware_model": str(args.hardware_model), "machine": machine, "minutes": minutes,
              "summary": summary, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Uniform policies: {args.hardware_model} predicted against measured", "",
             f"Machine: {machine.get('cpu')}; {len(rows)} candidates timed in {args.sweeps} sweeps, "
             f"the fastest counting, in {minutes:.1f} min "
             "(`python benchmarks/uniform_policies_latency.py`). `warm-start`: the search's own policies "
             "(in the default profile plan); `held-out`: uniform policies the plan does not hold.", "",
             "| set | model | n | within ±10% | RMSPE % | median error % | worst error % |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['set']} | {s['model']} | {s['n']} | {100 * s['within_10']:.1f}% | {s['rmspe']:.1f} | "
              f"{100 * s['median_error']:+.1f} | {100 * s['worst_error']:+.1f} |" for s in summary]
    lines += ["", "| set | model @ input | policy | predicted ms | measured ms | error % |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['model']}@{r['input_size']} | {r['policy']} | {r['predicted_ms']:.3f} | "
              f"{r['measured_ms']:.3f} | {100 * r['error']:+.1f} |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4 + 2 + len(summary)]))


if __name__ == "__main__":
    main()
