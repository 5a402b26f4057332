"""The techniques and the one verb that applies a Candidate: ``apply_candidate``.

Each technique is ``apply(model, candidate, context) -> None`` and edits the model in place; the
registry fixes their order (NAS, then prune, then factorize, then quantize), because each later
step acts on the shapes the earlier ones leave.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..analysis import ModelAnalysis
from ..space import Candidate
from .factorize import LowRank, apply_factorization, factorize
from .nas import apply_nas, shrink_kernel
from .prune import apply_pruning
from .quantize import apply_quantization
from .quantizers import QuantizedLayer, calibrate

__all__ = ["TECHNIQUES", "ApplyContext", "apply_candidate", "LowRank", "QuantizedLayer", "calibrate", "factorize",
           "shrink_kernel"]


@dataclass(frozen=True)
class ApplyContext:
    analysis: ModelAnalysis
    example_input: torch.Tensor


Technique = Callable[[nn.Module, Candidate, ApplyContext], None]

TECHNIQUES: dict[str, Technique] = {
    "nas": apply_nas,
    "prune": apply_pruning,
    "factorize": apply_factorization,
    "quantize": apply_quantization,
}


def apply_candidate(model: nn.Module, candidate: Candidate, analysis: ModelAnalysis,
                    example_input: torch.Tensor) -> nn.Module:
    """A compressed copy of ``model``; the original is left untouched."""
    compressed = copy.deepcopy(model).eval()
    context = ApplyContext(analysis, example_input)
    for apply in TECHNIQUES.values():
        apply(compressed, candidate, context)
    _keep_transformer_layers_on_module_path(compressed)
    return compressed


def _keep_transformer_layers_on_module_path(model: nn.Module) -> None:
    """Stop nn.TransformerEncoderLayer from taking its fused inference kernel where we replaced its
    linears or norms: that kernel reads ``linear1.weight`` and ``norm1.eps`` directly and would
    bypass (or crash on) our low-rank and quantized modules. Its fast-path check skips layers whose
    activation flag is 0, before it looks at anything else we may have replaced."""
    plain = {"linear1": nn.Linear, "linear2": nn.Linear, "norm1": nn.LayerNorm, "norm2": nn.LayerNorm}
    for layer in model.modules():
        if isinstance(layer, nn.TransformerEncoderLayer) and any(
                type(getattr(layer, name)) is not kind for name, kind in plain.items()):
            layer.activation_relu_or_gelu = 0
