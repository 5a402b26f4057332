"""How closely ONNX Runtime reproduces the PyTorch simulation of a trained ViT's candidates.

Trains a ViT on Fashion-MNIST (32 px), then exports fp32, fp16, int8 (dynamic MatMuls, static
patch embedding and classifier) and int4 (weight-only MatMuls) candidates, one with heads, FFN
width and bits cut together, and random candidates, and compares PyTorch's top-1 with ORT's on
the whole validation split. Writes results/vit_export_fidelity.{md,json}.

    python benchmarks/vit_export_fidelity.py [--spec hf:vit,...] [--steps 3000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from autocompress import Candidate, Space, analyze, apply_candidate, calibration_batches, load_dataset, resolve_model
from autocompress.core.accounting import footprint_of_candidate
from autocompress.export.outputs import outputs_beside
from autocompress.hardware import machine_info
from autocompress.hardware.onnx_export import export_onnx
from autocompress.train.training import train_classifier
from autocompress.zoo import small_vit

DEFAULT = "small_vit(depth=4, width=96, heads=3, mlp_dim=384), patch 4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=None, help=f"model spec (default: {DEFAULT})")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of 64 images")
    parser.add_argument("--randoms", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", image_size=32)
    torch.manual_seed(0)
    model = resolve_model(args.spec, image_size=32) if args.spec else small_vit(depth=4, width=96, heads=3, mlp_dim=384)
    start = time.perf_counter()
    model = train_classifier(model, data.train, steps=args.steps, progress=True)
    trained_seconds = time.perf_counter() - start
    example = calibration_batches(data.val, num_samples=1)[0]
    calibration = calibration_batches(data.train)
    analysis = analyze(model, example)
    space = Space(analysis)
    layers = [u.name for u in analysis.layers]
    over_tokens = [u.name for u in analysis.layers if u.kind == "linear" and u.positions > 1]
    cases = {
        "fp32": Candidate(),
        "fp16, every layer": Candidate(bits={n: 16 for n in layers}),
        "int8, every layer": Candidate(bits={n: 8 for n in layers}),
        "int4 weight-only, every linear over tokens": Candidate(bits={n: 4 for n in over_tokens}),
        "one head less per block, FFN 0.5, int8": Candidate(
            heads={a.name: 1 for a in analysis.attention},
            prune={v.unit: 0.5 for v in space.variables if v.kind == "prune"},
            bits={n: 8 for n in layers}, channel_multiple=space.options.channel_multiple),
    }
    rng = random.Random("vit-fidelity")
    cases |= {f"random {i + 1}": space.sample(rng) for i in range(args.randoms)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, candidate in cases.items():
            built = apply_candidate(model, candidate, analysis, example)
            path = export_onnx(built, example, Path(tmp) / "m.onnx", calibration=calibration).path
            side = outputs_beside(built, path, data.val)
            torch_top1, onnx_top1 = side.torch.argmax(1), side.onnx.argmax(1)
            rows.append({
                "case": name, "candidate": json.loads(candidate.to_json()),
                "bytes_ratio": footprint_of_candidate(analysis, candidate).bytes
                / footprint_of_candidate(analysis, Candidate()).bytes,
                "accuracy_torch": float((torch_top1 == side.targets).float().mean()),
                "accuracy_onnx": float((onnx_top1 == side.targets).float().mean()),
                "agreement": float((torch_top1 == onnx_top1).float().mean()),
                "max_abs_logit_diff": float((side.torch - side.onnx).abs().max()),
                "items": len(side.targets),
            })
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "candidate"}), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"machine": machine_info(), "commit": commit, "model": args.spec or DEFAULT, "steps": args.steps,
              "training_seconds": round(trained_seconds), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vit_export_fidelity.json").write_text(json.dumps(report, indent=2))
    (args.out / "vit_export_fidelity.md").write_text(_markdown(report))


def _markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [f"# ViT export fidelity: PyTorch simulation vs ONNX Runtime (Fashion-MNIST validation, "
             f"{rows[0]['items']} images, 32 px)", "",
             f"Model: {report['model']}, trained {report['steps']} steps of 64 images "
             f"({report['training_seconds']} s). Machine: {report['machine']['cpu']}, ORT "
             f"{report['machine']['onnxruntime']}, commit {report['commit']}. Produced by "
             "`python benchmarks/vit_export_fidelity.py`. No candidate is fine-tuned: the figures compare "
             "the two runtimes on the same weights, not the candidates' accuracy after recovery.", "",
             "| case | bytes vs fp32 | acc PyTorch | acc ORT | top-1 agreement | max abs logit diff |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['bytes_ratio']:.3f} | {r['accuracy_torch']:.4f} | {r['accuracy_onnx']:.4f} | "
                     f"{r['agreement']:.4f} | {r['max_abs_logit_diff']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
