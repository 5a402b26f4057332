"""One Candidate end to end: baseline, apply, account, export, and check ORT against PyTorch.

This is what `autocompress apply` runs; it is also the way to replay a Candidate from a bug
report or from a search's Pareto front.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.accounting import footprint_of_candidate, footprint_of_model
from ..core.analysis import analyze
from ..core.search_space import resolve_search_space
from ..train.data import calibration_batches, load_dataset
from ..errors import AutocompressError, InvalidCandidateError
from ..hardware.onnx_export import export_onnx
from .outputs import outputs_beside
from ..hardware import machine_info
from ..hardware.measure import measure_interleaved
from ..core.space import Candidate, Space, SpaceOptions
from ..train.baseline import baseline_model
from ..train.models import check_model_runs, resolve_model
from ..techniques import apply_candidate
from ..train.finetune import evaluate_accuracy
from ..train.scores import top1
from ..train.training import train_classifier

__all__ = ["run_apply", "parse_candidate_arg", "resolve_candidate", "baseline_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UniformPolicy:
    """The hand policy: every channel group pruned at one ratio, every layer at one bit width."""

    ratio: float
    bits: int


def parse_candidate_arg(arg: str) -> Candidate | UniformPolicy | int:
    """A Candidate JSON file, ``uniform:RATIO[,int8|int4|fp16]``, or the seed of ``random[:SEED]``.

    Checked before any slow work starts, so a typo costs nothing.
    """
    if arg == "random" or arg.startswith("random:"):
        seed_text = arg.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise InvalidCandidateError(f"candidate_arg {arg!r}: the seed must be a non-negative integer (random:7)",
                                        parameters=("candidate_arg",))
        return int(seed_text)
    if arg.startswith("uniform:"):
        ratio_text, _, bits_text = arg.partition(":")[2].partition(",")
        bits = {"": 32, "fp32": 32, "fp16": 16, "int8": 8, "int4": 4}.get(bits_text)
        try:
            ratio = float(ratio_text)
        except ValueError:
            ratio = -1.0
        if bits is None or not 0.0 <= ratio < 1.0:
            raise InvalidCandidateError(f"candidate_arg {arg!r}: write uniform:RATIO[,BITS] with RATIO in [0, 1) and "
                                        "BITS one of fp32, fp16, int8, int4 (uniform:0.5,int8)", parameters=("candidate_arg",))
        return UniformPolicy(ratio, bits)
    path = Path(arg)
    if not path.is_file():
        raise InvalidCandidateError(f"candidate_arg {arg!r} is neither a file, uniform:RATIO[,BITS] nor random[:SEED]",
                                    parameters=("candidate_arg",))
    try:
        return Candidate.from_json(path.read_text())
    except (InvalidCandidateError, UnicodeDecodeError) as exc:
        raise InvalidCandidateError(f"candidate_arg {arg!r}: {exc}; write it as `autocompress apply` writes "
                                    "candidate.json", parameters=("candidate_arg",)) from exc


def resolve_candidate(parsed: Candidate | UniformPolicy | int, space: Space) -> Candidate:
    if isinstance(parsed, int):
        return space.sample(random.Random(parsed))
    if isinstance(parsed, UniformPolicy):
        parsed = Candidate(
            prune={v.unit: parsed.ratio for v in space.variables if v.kind == "prune"},
            bits={v.unit: parsed.bits for v in space.variables if v.kind == "bits"},
            channel_multiple=space.options.channel_multiple,
        )
    space.validate(parsed)
    return parsed


def run_apply(*, model_spec: str, candidate_arg: str, dataset: str = "digits", input_size: int = 32,
              weights: Path | None = None, num_classes: int | None = None, train_steps: int = 0,
              finetune_steps: int = 0, out: Path, space_options: dict | None = None,
              search_space: str = "auto") -> dict:
    """Apply one Candidate (``parse_candidate_arg``) to a model, export it, and compare it with the
    baseline exported and timed beside it. ``space_options``: SpaceOptions keywords as JSON;
    ``search_space``: the NAS cells' file (cells take the weights they inherit: no blockwise
    distillation here; a search's export uses the ones it distilled)."""
    out = Path(out)
    parsed = parse_candidate_arg(candidate_arg)
    splits = load_dataset(dataset, image_size=input_size)
    classes = num_classes or splits.num_classes
    if classes < splits.num_classes:
        raise AutocompressError(f"num_classes {classes} is below the {splits.num_classes} classes of {dataset!r}",
                                parameters=("num_classes",))
    # The model, its weights and the Candidate are checked on the model as given, before any training.
    model = resolve_model(model_spec, num_classes=classes, weights=weights, image_size=input_size)
    example = splits.val[0][0].unsqueeze(0)
    check_model_runs(model, example, spec=model_spec, needs=lambda size: f"it needs input_size {size}",
                     size_name="input_size", parameters=("input_size",))
    space_file = resolve_search_space(search_space, model)
    analysis = analyze(model, example, space=space_file)
    space = Space(analysis, SpaceOptions.from_dict(space_options or {}))
    try:
        candidate = resolve_candidate(parsed, space)
    except InvalidCandidateError as exc:
        raise InvalidCandidateError(f"candidate_arg {candidate_arg!r}: {exc}", parameters=("candidate_arg",)) from exc
    if weights is None and train_steps > 0:  # the baseline is trained here (cached in out)
        model = baseline_model(model_spec, num_classes=classes, weights=None, train_steps=train_steps,
                               splits=splits, cache_dir=out)
        analysis = analyze(model, example, space=space_file)  # trained weights decide which cells are exact
        space = Space(analysis, space.options)
    elif weights is None:
        log.warning("no --weights and --train-steps 0: the baseline keeps its random initialisation")
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidate.json").write_text(json.dumps(candidate.to_dict(), indent=2, sort_keys=True))

    compressed = apply_candidate(model, candidate, analysis, example)
    if finetune_steps > 0:
        # Plain fine-tuning through the simulated quantizers (straight-through estimator); the
        # search adds distillation from the baseline on top of this.
        train_classifier(compressed, splits.train, steps=finetune_steps, lr=1e-3, seed=1)
    exported, val, baseline_onnx = export_beside_baseline(compressed, model, example, out, splits.val,
                                                          calibration=calibration_batches(splits.train))
    base_fp = footprint_of_model(model, example)
    latency = _side_by_side_latency({"baseline": baseline_onnx, "compressed": exported.path}, tuple(example.shape))
    report = {
        "model": model_spec,
        "dataset": splits.name,
        "space_size": len(space),
        "decisions": len(space.changed(candidate)),
        "candidate": candidate.to_dict(),
        "finetune_steps": finetune_steps,
        "baseline": base_fp.to_dict() | {"accuracy": evaluate_accuracy(model, splits.val)},
        "footprint_from_candidate": footprint_of_candidate(analysis, candidate).to_dict(),
        "footprint_from_model": footprint_of_model(compressed, example).to_dict(),
        "accuracy_torch": top1(val.torch, val.targets),
        "accuracy_onnx": top1(val.onnx, val.targets),
        "top1_agreement": top1(val.torch, val.onnx),
        "onnx_path": str(exported.path),
        "onnx_bytes": exported.file_bytes,
        "onnx_nodes_by_bits": {str(b): len(n) for b, n in sorted(exported.nodes_by_bits.items())},
        "latency_ms": latency,
        "machine": machine_info(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def export_beside_baseline(model: torch.nn.Module, baseline: torch.nn.Module, example: torch.Tensor, out: Path,
                           dataset, *, calibration) -> tuple:
    """Export ``model`` to ``out/model.onnx`` and ``baseline`` to ``out/baseline.onnx``, so the two
    can be timed side by side; returns the export result, the model's outputs in PyTorch and in
    ORT on ``dataset`` (``SideBySide``), and the baseline's ONNX path. PyTorch runs after the
    export, so its simulated quantizers carry the same calibration as ORT's."""
    exported = export_onnx(model, example, out / "model.onnx", calibration=calibration)
    return exported, outputs_beside(model, exported.path, dataset), export_onnx(baseline, example,
                                                                                  out / "baseline.onnx").path


def _side_by_side_latency(paths: dict[str, Path], shape: tuple[int, ...], passes: int = 3) -> dict:
    """Median latency of each model over interleaved passes, so machine drift hits all alike."""
    timings = measure_interleaved([(path, shape) for path in paths.values()], passes=passes, runs=30)
    return {name: round(timing.median_ms, 4) for name, timing in zip(paths, timings)}

