"""Exact size and compute of a compressed model, two independent ways that must agree.

``footprint_of_candidate`` works from the analysis and the Candidate alone (microseconds, no
model is built: the search uses it); ``footprint_of_model`` measures a built model. Tests hold
them equal, which checks the accounting and the techniques against each other.

Bytes: each Conv/Linear weight at its bit width (int4 packs two to a byte) plus one float32 scale
per output channel when 8 or 4 bits; every other parameter (biases included) as float32.
Buffers such as BatchNorm running statistics are not counted: export folds them into the convs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._modules import forward_with_hooks, is_inside
from .analysis import LayerUnit, ModelAnalysis
from .channel_groups import keep_channels
from .space import Candidate, rank_for
from .techniques.quantizers import QuantizedLayer

__all__ = ["Footprint", "LayerShape", "alive_in", "footprint_of_candidate", "footprint_of_model", "layer_shape", "removed_channels", "weight_bytes"]


@dataclass(frozen=True)
class Footprint:
    params: int
    macs: int  # per sample
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes}


def weight_bytes(numel: int, out_channels: int, bits: int) -> int:
    if bits == 32:
        return 4 * numel
    if bits == 16:
        return 2 * numel
    return math.ceil(numel * bits / 8) + 4 * out_channels


def alive_in(candidate: Candidate):
    """A test ``name -> bool``: is the module ``name`` still there after the Candidate's skips?"""
    skipped = [b for b, s in candidate.skip.items() if s]
    return lambda name: not any(is_inside(name, b) for b in skipped)


def footprint_of_candidate(analysis: ModelAnalysis, candidate: Candidate) -> Footprint:
    alive = alive_in(candidate)
    removed = removed_channels(analysis, candidate)
    params = macs = size = 0
    for unit in analysis.layers:
        if alive(unit.name):
            p, m, b = _layer_footprint(unit, candidate, removed)
            params, macs, size = params + p, macs + m, size + b
    for norm in analysis.norms:
        if alive(norm.name):
            n = (norm.channels - removed.get((norm.name, "out"), 0)) * norm.params_per_channel
            params, size = params + n, size + 4 * n
    for att in analysis.attention:
        if alive(att.name):
            params, macs, size = params + att.params, macs + att.macs, size + 4 * att.params
    for fixed in analysis.fixed:
        if alive(fixed.name):
            params, size = params + fixed.params, size + 4 * fixed.params
    return Footprint(params, macs, size)


def removed_channels(analysis: ModelAnalysis, candidate: Candidate) -> dict[tuple[str, str], int]:
    """(module, "out"/"in") -> channels or features the Candidate's pruning removes there."""
    removed: dict[tuple[str, str], int] = {}
    for group in analysis.prunable_groups:
        ratio = candidate.ratio(group.id)
        if ratio <= 0:
            continue
        cut = group.channels - keep_channels(group.channels, ratio, candidate.channel_multiple)
        for m in group.members:
            key = (m.module, m.direction)
            removed[key] = removed.get(key, 0) + m.tied * cut // group.channels
    return removed


@dataclass(frozen=True)
class LayerShape:
    """A layer's shape once a Candidate is applied: what pruning, kernel choice and rank leave."""

    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    bits: int
    rank: int | None  # None: not factorized

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]


def layer_shape(unit: LayerUnit, candidate: Candidate, removed: dict) -> LayerShape:
    """``removed`` is ``removed_channels(analysis, candidate)``, computed once for all layers."""
    out_ch = unit.out_channels - removed.get((unit.name, "out"), 0)
    if unit.depthwise:
        in_ch, groups = out_ch, out_ch
    else:
        in_ch, groups = unit.in_channels - removed.get((unit.name, "in"), 0), unit.groups
    k_h, k_w = unit.kernel_size
    if unit.name in candidate.kernel:
        k_h = k_w = candidate.kernel[unit.name]
    fan_in = in_ch // groups * k_h * k_w
    rank = rank_for(candidate.rank_ratio(unit.name), min(out_ch, fan_in)) if unit.factorizable else None
    return LayerShape(in_ch, out_ch, groups, (k_h, k_w), candidate.bits_of(unit.name), rank)


def _layer_footprint(unit: LayerUnit, candidate: Candidate, removed: dict) -> tuple[int, int, int]:
    shape = layer_shape(unit, candidate, removed)
    out_ch, fan_in, bits, rank = shape.out_channels, shape.fan_in, shape.bits, shape.rank
    bias = out_ch if unit.has_bias else 0
    if rank is None:
        weights = out_ch * fan_in
        return weights + bias, weights * unit.positions, weight_bytes(weights, out_ch, bits) + 4 * bias
    reduce, expand = rank * fan_in, out_ch * rank
    size = weight_bytes(reduce, rank, bits) + weight_bytes(expand, out_ch, bits) + 4 * bias
    return reduce + expand + bias, (reduce + expand) * unit.positions, size


def footprint_of_model(model: nn.Module, example_input: torch.Tensor) -> Footprint:
    """Params, MACs per sample and bytes of a built (possibly compressed) model."""
    batch = example_input.shape[0]
    macs = 0
    counted_bytes: dict[int, int] = {}

    def on_layer(module, args, output):
        nonlocal macs
        layer = module.layer if isinstance(module, QuantizedLayer) else module
        per_position = layer.weight.numel() if isinstance(layer, nn.Linear) else layer.weight[0].numel() * layer.out_channels
        out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        macs += per_position * (output.numel() // (batch * out_features))

    def on_attention(module, args, output):
        nonlocal macs
        query = args[0]
        tokens = query.shape[0] if query.dim() == 2 else query.shape[1] if module.batch_first else query.shape[0]
        e = module.embed_dim
        macs += 3 * e * e * tokens + 2 * tokens * tokens * e + e * e * tokens

    handles = []
    wrapped = {id(m.layer) for m in model.modules() if isinstance(m, QuantizedLayer)}  # run by their wrapper
    for module in model.modules():
        if id(module) in wrapped:
            continue
        if isinstance(module, QuantizedLayer):
            handles.append(module.register_forward_hook(on_layer))
            w = module.layer.weight
            counted_bytes[id(w)] = weight_bytes(w.numel(), w.shape[0], module.bits)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer))
        elif isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_hook(on_attention))
    forward_with_hooks(model, example_input, handles)
    params = list(model.parameters())
    size = sum(counted_bytes.get(id(p), 4 * p.numel()) for p in params)
    return Footprint(sum(p.numel() for p in params), macs, size)
