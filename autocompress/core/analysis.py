"""Find every place a model can be compressed: layers, channel groups, skippable blocks, kernels.

The result is plain data (``ModelAnalysis``): the Space is built from it, and the Candidate-only
size accounting reads it, so nothing downstream needs to trace the model again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .attention import head_order
from .library_attention import split_copy
from .channel_groups import ChannelGroup, find_channel_groups
from .cell_choices import CellChoice, find_cell_choices
from .choice_points import KernelChoice, SkipBlock, SkippedBlock, find_kernel_choices, find_skip_blocks
from .units import AttentionUnit, FixedParams, LayerUnit, NormUnit, collect_units, trace_shapes

__all__ = [
    "AttentionUnit",
    "FixedParams",
    "KernelChoice",
    "LayerUnit",
    "ModelAnalysis",
    "NormUnit",
    "SkipBlock",
    "SkippedBlock",
    "analyze",
]

log = logging.getLogger(__name__)


@dataclass
class ModelAnalysis:
    input_shape: tuple[int, ...]
    layers: list[LayerUnit]
    norms: list[NormUnit]
    attention: list[AttentionUnit]
    fixed: list[FixedParams]
    groups: list[ChannelGroup]
    blocks: list[SkipBlock]
    kernels: list[KernelChoice]
    output_layer: str | None
    notes: list[str] = field(default_factory=list)
    cells: list[CellChoice] = field(default_factory=list)  # blocks a search-space file gives cell choices
    # {block: cell} -> the same network in its canonical form (a supernet's ``canonical_cells``):
    # a NAS-Bench-201 edge whose output reaches nothing becomes none, so it is neither run nor priced.
    canonical_cells: Callable[[dict], dict] | None = None

    def __post_init__(self) -> None:
        self._layers = {u.name: u for u in self.layers}
        self._groups = {g.id: g for g in self.groups}

    def layer(self, name: str) -> LayerUnit:
        return self._layers[name]

    def group(self, group_id: str) -> ChannelGroup:
        return self._groups[group_id]

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def total_params(self) -> int:
        return (sum(u.params for u in self.layers) + sum(n.channels * n.params_per_channel for n in self.norms)
                + sum(a.params for a in self.attention) + sum(f.params for f in self.fixed))

    @property
    def total_macs(self) -> int:
        return sum(u.macs for u in self.layers) + sum(a.macs for a in self.attention)

    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "output_layer": self.output_layer,
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "layers": [asdict(u) | {"params": u.params, "macs": u.macs} for u in self.layers],
            "norms": [asdict(n) for n in self.norms],
            "attention": [asdict(a) | {"macs": a.macs} for a in self.attention],
            "fixed": [asdict(f) for f in self.fixed],
            "groups": [g.to_dict() for g in self.groups],
            "blocks": [asdict(b) for b in self.blocks],
            "kernels": [asdict(k) for k in self.kernels],
            "notes": list(self.notes),
            "cells": [c.to_dict() for c in self.cells],
        }


def analyze(model: nn.Module, example_input: torch.Tensor, *, space=None) -> ModelAnalysis:
    """List the compressible units of ``model`` for inputs shaped like ``example_input``, and,
    with ``space`` (a ``search_space.SearchSpaceFile``), the cells each block it matches may become.

    Puts ``model`` in eval mode (shapes and residual checks need running statistics); its
    weights are not changed. A model with ``nn.MultiheadAttention`` is analysed as
    ``core.attention.split_attention`` rewrites it, which is the form every Candidate is applied to.
    """
    model, attention_notes = split_copy(model.eval())
    shapes, output_layer = trace_shapes(model, example_input)
    layers, norms, attention, fixed = collect_units(model, shapes)
    orders = head_order(model, example_input)
    attention = [replace(a, head_order=orders[a.name]) if a.name in orders else a for a in attention]
    groups, group_notes = find_channel_groups(model, example_input, output_layer=output_layer)
    blocks = find_skip_blocks(model, example_input, shapes, layers)
    kernels = find_kernel_choices(model)
    cells, cell_notes = [], []
    if space is not None:
        cells, cell_notes = find_cell_choices(model, example_input, space, shapes, layers, {b.name for b in blocks})
    if getattr(model, "architecture_in_cells_only", False):
        # A supernet trained the skips and kernels its cells name, and no other.
        blocks, kernels = [], []
    notes = attention_notes + list(group_notes) + cell_notes
    notes += [f"{f.name}: {f.note}" for f in fixed]
    notes += [f"{u.name}: {u.note}" for u in layers if u.note]
    return ModelAnalysis(tuple(example_input.shape), layers, norms, attention, fixed, groups, blocks, kernels,
                         output_layer, notes, cells, getattr(model, "canonical_cells", None))
