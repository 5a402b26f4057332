"""Exact size and compute of a compressed model, two independent ways that must agree.

``footprint_of_candidate`` works from the analysis and the Candidate alone (microseconds, no
model is built: the search uses it); ``footprint_of_model`` measures a built model. Tests hold
them equal, which checks the accounting and the techniques against each other.

Both read what each technique does through the registry: ``model_shapes`` lets every technique
reshape the analysed layers in apply order, and the footprint is computed from those shapes.

Bytes: each Conv/Linear weight at its bit width (int4 packs two to a byte) plus one float32 scale
per output channel when 8 or 4 bits; a weight with zeros (unstructured sparsity) is stored sparse
when that is smaller: its non-zeros plus an index (the fewest whole bytes that address a position)
or a bitmask (one bit per weight), whichever is smaller. Every other parameter (biases included)
is float32. Buffers such as BatchNorm running statistics, or a sparse layer's mask, are not
counted: export folds the former into the convs, and the mask is the zeros themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .analysis import ModelAnalysis
from .attention import SplitAttention, query_and_key_tokens
from .candidate import Candidate
from .cell_choices import with_followers
from .modules import forward_with_hooks
from .technique import LayerShape, ModelShapes, registered

__all__ = ["MASK", "Footprint", "LayerShape", "footprint_of_candidate", "footprint_of_model", "model_shapes",
           "weight_bytes", "zeroed_count"]

MASK = "weight_mask"  # the buffer a sparse layer keeps its mask in (techniques.sparsity)


@dataclass(frozen=True)
class Footprint:
    params: int
    macs: int  # per sample
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes}


def zeroed_count(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a sparsity ratio sets to zero: the rule both paths use."""
    return int(math.floor(sparsity * numel + 0.5))


def weight_bytes(numel: int, out_channels: int, bits: int, zeros: int = 0) -> int:
    """Stored bytes of one weight tensor of ``numel`` values, ``zeros`` of them zero."""
    scales = 4 * out_channels if bits <= 8 else 0
    dense = math.ceil(numel * bits / 8) + scales
    if zeros <= 0:
        return dense
    kept = numel - zeros
    index = kept * max(1, math.ceil(math.log2(max(numel, 2)) / 8))
    bitmask = math.ceil(numel / 8)
    return min(dense, math.ceil(kept * bits / 8) + scales + min(index, bitmask))


def model_shapes(analysis: ModelAnalysis, candidate: Candidate) -> ModelShapes:
    """Every layer's shape, every norm's channels and the modules removed, once ``candidate`` is applied."""
    candidate = with_followers(analysis, candidate)
    shapes = ModelShapes.of(analysis)
    for technique in registered():
        technique.reshape(analysis, candidate, shapes)
    for depthwise, layer in shapes.follows.items():  # one filter per input channel of the layer it feeds
        if depthwise in shapes.layers and layer in shapes.layers:
            channels = shapes.layers[layer].in_channels
            shapes.layers[depthwise] = shapes.layers[depthwise].replace(
                in_channels=channels, out_channels=channels, groups=channels)
    return shapes


def footprint_of_candidate(analysis: ModelAnalysis, candidate: Candidate) -> Footprint:
    shapes = model_shapes(analysis, candidate)
    params = macs = size = 0
    for unit in shapes.units.values():
        if shapes.alive(unit.name):
            p, m, b = _layer_footprint(unit, shapes.layers[unit.name])
            params, macs, size = params + p, macs + m, size + b
    for norm in shapes.norms.values():
        if shapes.alive(norm.name):
            n = shapes.norm_channels[norm.name] * norm.params_per_channel
            params, size = params + n, size + 4 * n
    for att in analysis.attention:
        if shapes.alive(att.name):
            att_macs = att.macs_with(shapes.heads.get(att.name, att.heads)) if att.split else att.macs
            params, macs, size = params + att.params, macs + att_macs, size + 4 * att.params
    for fixed in analysis.fixed:
        if shapes.alive(fixed.name):
            params, size = params + fixed.params, size + 4 * fixed.params
    return Footprint(params, macs, size)


def _layer_footprint(unit, shape: LayerShape) -> tuple[int, int, int]:
    out_ch, fan_in, bits, rank = shape.out_channels, shape.fan_in, shape.bits, shape.rank
    bias = out_ch if unit.has_bias else 0

    def stored(numel: int, rows: int) -> int:
        return weight_bytes(numel, rows, bits, zeroed_count(numel, shape.sparsity))

    if rank is None:
        weights = out_ch * fan_in
        return weights + bias, weights * unit.positions, stored(weights, out_ch) + 4 * bias
    reduce, expand = rank * fan_in, out_ch * rank
    size = stored(reduce, rank) + stored(expand, out_ch) + 4 * bias
    return reduce + expand + bias, (reduce + expand) * unit.positions, size


def _runs_layer_quantized(module: nn.Module) -> bool:
    """A quantized-layer wrapper (``techniques.quantizers.QuantizedLayer``), told by its shape:
    it holds the Conv2d/Linear it runs in ``layer`` and its width in ``bits`` (core does not
    import the techniques)."""
    return isinstance(getattr(module, "layer", None), (nn.Conv2d, nn.Linear)) and isinstance(
        getattr(module, "bits", None), int)


def footprint_of_model(model: nn.Module, example_input: torch.Tensor) -> Footprint:
    """Params, MACs per sample and bytes of a built (possibly compressed) model."""
    batch = example_input.shape[0]
    macs = 0
    counted_bytes: dict[int, int] = {}

    def on_layer(module, args, output):
        nonlocal macs
        layer = module.layer if _runs_layer_quantized(module) else module
        per_position = layer.weight.numel() if isinstance(layer, nn.Linear) else layer.weight[0].numel() * layer.out_channels
        out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        macs += per_position * (output.numel() // (batch * out_features))

    def on_attention(module, args, output):
        nonlocal macs
        tokens, source = query_and_key_tokens([a.shape for a in args if isinstance(a, torch.Tensor)], module.batch_first)
        if isinstance(module, SplitAttention):  # its projections are counted as layers
            macs += 2 * tokens * source * module.num_heads * module.head_dim
        else:
            e = module.embed_dim
            macs += 3 * e * e * tokens + 2 * tokens * tokens * e + e * e * tokens

    def count_weight(layer: nn.Module, bits: int) -> None:
        w, mask = layer.weight, getattr(layer, MASK, None)
        zeros = 0 if mask is None else w.numel() - int(mask.count_nonzero())
        counted_bytes[id(w)] = weight_bytes(w.numel(), w.shape[0], bits, zeros)

    handles = []
    wrapped = {id(m.layer) for m in model.modules() if _runs_layer_quantized(m)}  # run by their wrapper
    for module in model.modules():
        if id(module) in wrapped:
            continue
        if _runs_layer_quantized(module):
            handles.append(module.register_forward_hook(on_layer))
            count_weight(module.layer, module.bits)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer))
            count_weight(module, 32)
        elif isinstance(module, (nn.MultiheadAttention, SplitAttention)):
            handles.append(module.register_forward_hook(on_attention))
    forward_with_hooks(model, example_input, handles)
    params = list(model.parameters())
    size = sum(counted_bytes.get(id(p), 4 * p.numel()) for p in params)
    return Footprint(sum(p.numel() for p in params), macs, size)
