"""How closely ONNX Runtime reproduces the PyTorch simulation, per covered model.

For each model: train on digits, then (1) every layer int8, (2) the hand policy "half the channels,
int8" after a short fine-tune, (3) 20 random Candidates (half light, half full compression). Writes
results/export_fidelity.{md,json}.

    python benchmarks/export_fidelity.py [--models resnet18 mobilenet_v2 ...]
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
import torch

from autocompress import (
    Candidate,
    Space,
    analyze,
    apply_candidate,
    calibration_batches,
    footprint_of_candidate,
    load_dataset,
    resolve_model,
)
from autocompress.hardware.onnx_export import export_and_compare
from autocompress.hardware import machine_info
from autocompress.train.training import predict, train_classifier

MODELS = {"resnet18": 120, "mobilenet_v2": 150, "mobilenet_v3_small": 150, "efficientnet_b0": 150,
          "autocompress.zoo:transformer_classifier": 300}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    digits = load_dataset("digits", image_size=32)
    inputs, labels = digits.val.tensors
    calibration = calibration_batches(digits.train)
    example = inputs[:1]
    rows = []
    for spec in args.models:
        torch.manual_seed(0)
        start = time.perf_counter()
        model = train_classifier(resolve_model(spec), digits.train, steps=MODELS.get(spec, 200))
        analysis = analyze(model, example)
        space = Space(analysis)
        base_acc = _acc(predict(model, inputs).numpy(), labels)
        hand = Candidate(prune={v.unit: 0.5 for v in space.variables if v.kind == "prune"},
                         bits={u.name: 8 for u in analysis.layers}, channel_multiple=space.options.channel_multiple)
        cases = {"all int8": (Candidate(bits={u.name: 8 for u in analysis.layers}), 0),
                 "0.5 pruned + int8, 100 fine-tune steps": (hand, 100)}
        rng = random.Random(f"fidelity-{spec}")
        randoms = [space.sample(rng, density=0.1 if i % 2 == 0 else 1.0) for i in range(20)]
        with tempfile.TemporaryDirectory() as tmp:
            fixed = {name: _compare(model, c, analysis, example, steps, digits, calibration, Path(tmp) / "m.onnx")
                     for name, (c, steps) in cases.items()}
            random_stats = [_compare(model, c, analysis, example, 0, digits, calibration, Path(tmp) / "r.onnx")
                            for c in randoms]
        rows.append({
            "model": spec, "baseline_accuracy": base_acc,
            "cases": {name: stats | {"bytes_ratio": footprint_of_candidate(analysis, cases[name][0]).bytes
                                     / footprint_of_candidate(analysis, space.default()).bytes}
                      for name, stats in fixed.items()},
            "random": {
                "count": len(random_stats),
                "median_agreement": statistics.median(s["agreement"] for s in random_stats),
                "min_agreement_when_accuracy_over_half": min(
                    (s["agreement"] for s in random_stats if s["accuracy_torch"] >= 0.5), default=None),
                "classifying_candidates": sum(s["accuracy_torch"] >= 0.5 for s in random_stats),
                "max_q99_diff_over_spread": max(s["q99_diff_over_spread"] for s in random_stats),
            },
            "seconds": round(time.perf_counter() - start, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine_info(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_fidelity.json").write_text(json.dumps(report, indent=2))
    (args.out / "export_fidelity.md").write_text(_markdown(report))


def _compare(model, candidate, analysis, example, finetune_steps, digits, calibration, path) -> dict:
    built = apply_candidate(model, candidate, analysis, example)
    if finetune_steps:
        train_classifier(built, digits.train, steps=finetune_steps, lr=1e-3, seed=1)
    inputs, labels = digits.val.tensors
    _, torch_logits, ort_logits = export_and_compare(built, example, path, inputs, calibration=calibration)
    return {
        "accuracy_torch": _acc(torch_logits, labels), "accuracy_onnx": _acc(ort_logits, labels),
        "agreement": float((torch_logits.argmax(1) == ort_logits.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(torch_logits - ort_logits).max()),
        "q99_diff_over_spread": float(np.quantile(np.abs(torch_logits - ort_logits), 0.99) / torch_logits.std()),
    }


def _acc(logits, labels) -> float:
    return float((logits.argmax(1) == labels.numpy()).mean())


def _markdown(report: dict) -> str:
    lines = ["# Export fidelity: PyTorch simulation vs ONNX Runtime (digits validation, 360 images, 32x32)", "",
             f"Machine: {report['machine']['cpu']}, ORT {report['machine']['onnxruntime']}. "
             "Produced by `python benchmarks/export_fidelity.py`.", "",
             "| model | baseline acc | case | bytes vs fp32 | acc PyTorch | acc ORT | top-1 agreement | max abs logit diff |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        for name, c in row["cases"].items():
            lines.append(f"| {row['model']} | {row['baseline_accuracy']:.4f} | {name} | {c['bytes_ratio']:.3f} | "
                         f"{c['accuracy_torch']:.4f} | {c['accuracy_onnx']:.4f} | {c['agreement']:.4f} | "
                         f"{c['max_abs_logit_diff']:.3f} |")
    lines += ["", "20 random Candidates per model, no fine-tuning (half at density 0.1, half at 1.0; most fully "
              "compressed ones no longer classify, so their top-1 agreement says little):", "",
              "| model | still classifying (acc >= 0.5) | min agreement among those | median agreement, all | "
              "max 99th-pct logit diff / logit std |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        r = row["random"]
        worst = "n/a" if r["min_agreement_when_accuracy_over_half"] is None else \
            f"{r['min_agreement_when_accuracy_over_half']:.4f}"
        lines.append(f"| {row['model']} | {r['classifying_candidates']}/{r['count']} | {worst} | "
                     f"{r['median_agreement']:.4f} | {r['max_q99_diff_over_spread']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
