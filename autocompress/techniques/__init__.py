"""The techniques, one module each, and the one verb that applies a Candidate: ``apply_candidate``.

Importing this package registers every built-in technique (``core.technique.register``); the
registry's order is the apply order (cell, skip, kernel, prune, heads, rank, sparsity, bits), because each
later step acts on the shapes the earlier ones leave. A new technique is one module here that
subclasses ``Technique``, registers an instance, and is imported below.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.analysis import ModelAnalysis
from ..core.library_attention import split_attention
from ..core.candidate import Candidate
from ..core.cell_choices import with_followers
from ..core.target import default_target
from ..core.technique import registered
from . import cell, heads, kernel, prune, quantize, skip, sparsity  # noqa: F401  (each registers itself)
from .factorize import LowRank, factorize
from .kernel import shrink_kernel
from .quantizers import QuantizationRules, QuantizedLayer, calibrate

__all__ = ["ApplyContext", "apply_candidate", "LowRank", "QuantizationRules", "QuantizedLayer", "calibrate",
           "factorize", "shrink_kernel"]


@dataclass(frozen=True)
class ApplyContext:
    analysis: ModelAnalysis
    example_input: torch.Tensor
    rules: QuantizationRules = field(default_factory=QuantizationRules)  # the target's integer ranges
    # Blockwise-distilled weights of cells, by ``cell.cell_key`` (a search folder's cells/); a cell
    # without an entry uses the weights it inherits from its block.
    cell_weights: Mapping[str, dict] = field(default_factory=dict)


def apply_candidate(model: nn.Module, candidate: Candidate, analysis: ModelAnalysis,
                    example_input: torch.Tensor, *, rules: QuantizationRules | None = None,
                    cell_weights: Mapping[str, dict] | None = None) -> nn.Module:
    """A compressed copy of ``model``; the original is left untouched.

    ``rules``: the integer weight ranges of the target the model will run on
    (``Target.quantization_rules``); None: the default target's rules on this machine.
    ``cell_weights``: blockwise-distilled weights of cells (``train.blockwise``), by cell key.
    """
    compressed = copy.deepcopy(model).eval()
    split_attention(compressed)  # the form every analysis describes
    context = ApplyContext(analysis, example_input, rules or default_target().quantization_rules(None),
                           cell_weights or {})
    candidate = with_followers(analysis, candidate)
    for technique in registered():
        technique.apply(compressed, candidate, context)
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
