"""The command line: a thin layer over the API. Every user error is one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .errors import AutocompressError

__all__ = ["main"]



def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except AutocompressError as exc:
        print(f"autocompress: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable --out, a full disk: say which path
        print(f"autocompress: error: {exc.strerror or exc} ({exc.filename or 'no path'}); "
              "choose a writable --out folder", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autocompress: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocompress", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="list every compressible unit of a model")
    _model_arguments(inspect)
    inspect.add_argument("--input-shape", default="1,3,32,32", help="example input shape, e.g. 1,3,32,32")
    inspect.add_argument("--json", action="store_true", help="print the full analysis and space as JSON")
    inspect.set_defaults(run=_inspect)

    apply = sub.add_parser("apply", help="apply one Candidate, export it to ONNX and check it against ORT")
    _model_arguments(apply)
    apply.add_argument("--candidate", required=True,
                       help="a Candidate JSON file, uniform:RATIO[,fp16|int8|int4] (every group pruned at RATIO, "
                            "every layer at those bits), or random[:SEED] for a random point of the space")
    apply.add_argument("--dataset", default="digits", help="digits (default), cifar10 or imagefolder:PATH")
    apply.add_argument("--input-size", type=_count, default=32, help="image side length (default 32)")
    apply.add_argument("--train-steps", type=_count, default=0,
                       help="without --weights, train the baseline this many steps first (cached in --out)")
    apply.add_argument("--finetune-steps", type=_count, default=0,
                       help="fine-tune the compressed model this many steps before export (default 0)")
    apply.add_argument("--out", required=True, type=Path, help="folder for candidate.json, model.onnx, report.json")
    apply.set_defaults(run=_apply)
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="torchvision name (resnet18, torchvision:mobilenet_v2) or package.module:factory")
    parser.add_argument("--weights", type=Path, help="state dict file (loaded with weights_only=True)")
    parser.add_argument("--num-classes", type=_count, default=None, help="classes of the model's head (default 10, "
                        "or the data set's)")


def _count(text: str) -> int:
    """argparse type for step counts and sizes: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise AutocompressError(f"--input-shape {text!r} is not a shape; write positive integers like 1,3,32,32")
    return shape


def _inspect(args) -> int:
    from .analysis import analyze
    from .inspection import format_inspection, inspection_rows
    from .models import resolve_model
    from .space import Space

    shape = _parse_shape(args.input_shape)
    model = resolve_model(args.model, num_classes=args.num_classes or 10, weights=args.weights)
    try:
        analysis = analyze(model, torch.randn(shape))
    except RuntimeError as exc:
        raise AutocompressError(f"model {args.model!r} cannot run on an input of shape {shape} "
                                f"({str(exc).splitlines()[0]}); fix --input-shape") from exc
    space = Space(analysis)
    if args.json:
        print(json.dumps({"model": args.model, "analysis": analysis.to_dict(), "space": space.to_dict(),
                          "units": inspection_rows(analysis, space)}, indent=2))
    else:
        print(format_inspection(args.model, analysis, space))
    return 0


def _apply(args) -> int:
    from .apply_run import run_apply

    report = run_apply(
        model_spec=args.model, candidate_arg=args.candidate, dataset=args.dataset, input_size=args.input_size,
        weights=args.weights, num_classes=args.num_classes, train_steps=args.train_steps,
        finetune_steps=args.finetune_steps, out=args.out,
    )
    fp_c, fp_m = report["footprint_from_candidate"], report["footprint_from_model"]
    base = report["baseline"]
    print(f"candidate: {report['decisions']} decisions changed of {report['space_size']}; written to {args.out / 'candidate.json'}")
    print(f"size: {fp_m['bytes']:,} bytes ({fp_m['bytes'] / base['bytes']:.3f}x baseline), params {fp_m['params']:,}, "
          f"MACs {fp_m['macs']:,} ({fp_m['macs'] / base['macs']:.3f}x); candidate-only accounting "
          f"{'agrees' if fp_c == fp_m else 'DISAGREES'}")
    print(f"accuracy on {report['dataset']} validation: baseline {base['accuracy']:.4f}, compressed (PyTorch) "
          f"{report['accuracy_torch']:.4f}, exported (ONNX Runtime) {report['accuracy_onnx']:.4f}; "
          f"top-1 agreement {report['top1_agreement']:.4f}")
    latency = report["latency_ms"]
    print(f"ONNX Runtime latency (1 thread, median): baseline {latency['baseline']:.3f} ms, compressed "
          f"{latency['compressed']:.3f} ms ({latency['compressed'] / latency['baseline']:.3f}x)")
    print(f"ONNX: {report['onnx_path']} ({report['onnx_bytes']:,} bytes); layers by bits {report['onnx_nodes_by_bits']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
