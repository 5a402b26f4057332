"""The command line: a thin layer over the API. Every user error is one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..core.target import DEFAULT_TARGET, registered_targets, target
from ..errors import AutocompressError
from ..files import disk_full_message, disk_nearly_full, is_disk_full
from .arguments import (OneLineParser, _count, _parse_shape, _positive, _positive_float, add_baseline_flags,
                        add_model_arguments)
from .front_commands import _export, _pareto
from .search_command import add_search_command
from .hardware_commands import _profile, _profile_defaults, _validate_predictor
from .space_flags import add_space_flags, space_options_from_args

__all__ = ["main"]


# API parameters whose flag is not simply --name-with-dashes
_FLAGS = {"timeout_s": "--timeout", "best_under_budget": "--best-under", "candidate_arg": "--candidate",
          "image_size": "--input-size", "address": "--ray-address", "train_time_cap_s": "--train-time-cap"}


def flag_of(parameter: str) -> str:
    """The command-line flag that sets an API parameter."""
    return _FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = _parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
        _check_out(args)
        return args.run(args)
    except AutocompressError as exc:
        _print_error(exc.in_terms_of(flag_of))
        return 2
    except KeyboardInterrupt:
        print("autocompress: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        out = getattr(args, "out", None)
        # A full disk surfaces as an OSError, an SQLite error or a RuntimeError of torch.save.
        if is_disk_full(exc) or (out is not None and disk_nearly_full(out)):
            _print_error(disk_full_message(out or (exc.filename if isinstance(exc, OSError) else "the output")))
            return 2
        if isinstance(exc, OSError):  # an unwritable --out: say which path
            _print_error(f"{exc.strerror or exc} ({exc.filename or 'no path'}); check that path and that the --out "
                         "folder is writable")
            return 2
        raise


def _print_error(message: str) -> None:
    """One line on stderr, whatever a library put into the message (SQL, a driver's hints)."""
    print("autocompress: error: " + " ".join(message.split()), file=sys.stderr)


def _check_out(args) -> None:
    """Every command writes into its --out folder: an existing file there is refused before any
    work, and left as it is."""
    out = getattr(args, "out", None)
    if out is not None and out.exists() and not out.is_dir():
        raise AutocompressError(f"--out {out} is a file, not a folder; choose another --out (the file is left "
                                "as it is)")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="autocompress", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="list every compressible unit of a model")
    add_model_arguments(inspect)
    inspect.add_argument("--input-shape", default="1,3,32,32", help="example input shape, e.g. 1,3,32,32")
    inspect.add_argument("--json", action="store_true", help="print the full analysis and space as JSON")
    inspect.add_argument("--sensitivity", type=Path, metavar="FOLDER",
                         help="measure the damage of every decision value alone on the trained model (cached in "
                              "FOLDER, a search folder or a new one) and list the most damaging")
    inspect.add_argument("--dataset", default="digits", help="with --sensitivity: the data (default digits)")
    add_baseline_flags(inspect, when="with --sensitivity and no --weights")
    inspect.add_argument("--hardware", default="auto", help="with --sensitivity: the hardware model whose "
                         "quantization rules are simulated (default auto)")
    inspect.add_argument("--top", type=_count, default=25, help="with --sensitivity: variables listed (default 25)")
    add_space_flags(inspect)
    inspect.set_defaults(run=_inspect)

    apply = sub.add_parser("apply", help="apply one Candidate, export it to ONNX and check it against ORT")
    add_model_arguments(apply)
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
    add_space_flags(apply)
    apply.set_defaults(run=_apply)

    profile = sub.add_parser("profile", help="measure a target's kernels and candidates, fit its latency predictor")
    profile.add_argument("--target", default=DEFAULT_TARGET, choices=registered_targets(),
                         help="runtime and device: " + ", ".join(f"{name} ({target(name).description})"
                                                                 for name in registered_targets()))
    profile.add_argument("--threads", type=_positive, default=None,
                         help="intra-op threads (default 1; an existing --out folder keeps the plan it records)")
    profile.add_argument("--out", type=Path, default=None,
                         help="hardware model folder (default hardware_models/ort-cpu-<threads>t); an existing "
                              "folder is resumed: its measurements are kept")
    defaults = _profile_defaults()
    profile.add_argument("--kernels", type=_positive, default=None,
                         help=f"kernels to time (default {defaults.kernels})")
    profile.add_argument("--heavy-kernels", type=_count, default=None,
                         help=f"more kernels of the profiling models, drawn in proportion to their MACs: the big "
                              f"ones that dominate a network's time (default {defaults.heavy_kernels})")
    profile.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                         help=f"the models whose kernels and candidates are timed, at each input size (default "
                              f"{' '.join(defaults.models)}; add autocompress.zoo:small_vit to price transformers)")
    profile.add_argument("--candidates", type=_count, default=None,
                         help=f"random whole candidates to time (default {defaults.candidates})")
    profile.add_argument("--light-candidates", type=_count, default=None,
                         help=f"lightly compressed candidates per model and input size, timed besides its "
                              f"uncompressed model (default {defaults.light_candidates})")
    profile.add_argument("--sweeps", type=_positive, default=None,
                         help=f"time every whole candidate in this many sweeps, minutes apart, and keep the fastest "
                              f"(default {defaults.sweeps}; a shared machine's cache makes one sweep unreliable)")
    profile.add_argument("--max-minutes", type=float, default=None,
                         help=f"stop measuring after this long and fit on what there is (default "
                              f"{defaults.max_minutes:g}); rerun the same command to resume")
    profile.add_argument("--add-validation", type=Path, action="append", default=[], metavar="VALIDATION",
                         help="also fit on the candidates a validate-predictor run timed on this machine "
                              "(its validation.json or folder; repeatable); validate again with a new --seed")
    profile.set_defaults(run=_profile)

    validate = sub.add_parser("validate-predictor",
                              help="time random candidates end to end and score a hardware model's predictions")
    validate.add_argument("hardware_model", type=Path, help="hardware model folder, e.g. hardware_models/ort-cpu-1t")
    validate.add_argument("--model", action="append", required=True,
                          help="model to draw candidates of (repeat for several)")
    validate.add_argument("--input-shape", action="append", default=None,
                          help="input shape N,3,H,W with H = W (repeat for several; default 1,3,32,32)")
    validate.add_argument("--samples", type=_positive, default=100, help="candidates per model and shape (default 100)")
    validate.add_argument("--seed", type=_count, default=1, help="seed of the candidate draws (default 1)")
    validate.add_argument("--sweeps", type=_positive, default=None,
                          help="time every candidate in this many sweeps, minutes apart, and keep the fastest "
                               "(default: as many as the hardware model's profile used)")
    validate.add_argument("--out", type=Path, default=None,
                          help="folder for validation.json, .md and .png (default HARDWARE_MODEL/validation)")
    validate.add_argument("--json", action="store_true", help="print the figures as JSON")
    validate.add_argument("--cells", action="store_true", help="draw candidates with the NAS cell choices of each "
                          "model's family (search_spaces/)")
    validate.add_argument("--tight", type=_positive_float, default=None, metavar="MS",
                          help="draw candidates as a search at a tight budget proposes them (most decisions changed, "
                               "blocks often skipped) whose kernels, each timed alone, add up to under MS ms")
    validate.set_defaults(run=_validate_predictor)

    add_search_command(sub)

    pareto = sub.add_parser("pareto", help="print the Pareto front of a search folder")
    pareto.add_argument("dir", type=Path, help="the --out folder of a search")
    pareto.add_argument("--json", action="store_true", help="print pareto.json")
    pareto.add_argument("--test", action="store_true", help="fine-tune each front point again as the search did and "
                        "score it on the test split, which no choice saw, beside its validation score")
    pareto.add_argument("--task", default=None, metavar="MODULE:FUNCTION",
                        help="with --test, for a search made with a Task object: a function returning it")
    pareto.set_defaults(run=_pareto)

    export = sub.add_parser("export", help="fine-tune a front point longer, export it to ONNX, measure it, write its card")
    export.add_argument("dir", type=Path, help="the --out folder of a search")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=_count, help="the trial number to export")
    which.add_argument("--best-under", help="export the most accurate front point that measures under this latency "
                       "(5ms, or 0.5x of the baseline measured beside it); the front points predicted near it are "
                       "timed first")
    export.add_argument("--out", required=True, type=Path, help="folder for model.onnx, weights.pt, card.json, card.md")
    export.add_argument("--finetune-steps", type=_count, default=300, help="distillation steps (default 300)")
    export.add_argument("--retrain", action="store_true",
                        help="retrain the point from its inherited weights as the baseline was trained (the labels "
                             "and its learning rate, as Once-for-All deploys a subnet) instead of distilling it")
    export.set_defaults(run=_export)
    return parser


def _inspect(args) -> int:
    from ..core.analysis import analyze
    from ..core.search_space import resolve_search_space
    from ..core.space import Space, SpaceOptions
    from ..train.models import check_model_runs, example_input, resolve_model
    from .inspection import cell_rows, format_inspection, inspection_rows, technique_rows

    shape = _parse_shape(args.input_shape)
    if args.sensitivity is not None:
        from .sensitivity_report import inspect_sensitivity

        return inspect_sensitivity(args, shape)
    model = resolve_model(args.model, num_classes=args.num_classes or 10, weights=args.weights, image_size=shape[-1])
    example = example_input(model, shape)
    check_model_runs(model, example, spec=args.model, size_name="--input-shape",
                     needs=lambda size: f"give --input-shape {','.join(map(str, shape[:-2] + (size, size)))}")
    space_file = resolve_search_space(args.space, model)
    analysis = analyze(model, example, space=space_file)
    space = Space(analysis, SpaceOptions.from_dict(space_options_from_args(args)))
    if args.json:
        print(json.dumps({"model": args.model, "search_space": space_file.to_dict() if space_file else None,
                          "cells": cell_rows(analysis), "analysis": analysis.to_dict(), "space": space.to_dict(),
                          "techniques": technique_rows(space), "units": inspection_rows(analysis, space)}, indent=2))
    else:
        print(format_inspection(args.model, analysis, space))
    return 0


def _apply(args) -> int:
    from ..export.apply import run_apply

    report = run_apply(
        model_spec=args.model, candidate_arg=args.candidate, dataset=args.dataset, input_size=args.input_size,
        weights=args.weights, num_classes=args.num_classes, train_steps=args.train_steps,
        finetune_steps=args.finetune_steps, out=args.out, space_options=space_options_from_args(args),
        search_space=args.space)
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
