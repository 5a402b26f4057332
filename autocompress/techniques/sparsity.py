"""Unstructured magnitude sparsity per layer: the smallest weights of a layer set to zero.

It makes the stored model smaller (accounting counts non-zeros plus an index or a bitmask,
whichever is smaller) but not faster on a runtime that runs the layer as a dense kernel, as ONNX
Runtime's CPU kernels do: it never enters the kernels the latency predictor prices, and the target
says so in ``inspect``. A factorized layer is sparsified factor by factor, after the SVD (a sparse
matrix has dense singular vectors).

The zeros stay zeros through fine-tuning: the mask is a buffer of the layer (``weight_mask``,
saved with its weights) and masks the weight's gradient, so Adam(W)'s update of a zero weight is
zero too. The accounting reads the mask, not the weights, so its count is exact.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.accounting import MASK, zeroed_count
from ..core.modules import find_submodule
from ..core.technique import ModelShapes, Technique, Variable, register
from .factorize import LowRank

__all__ = ["MASK", "Sparsify", "sparsify"]


class Sparsify(Technique):
    kind = "sparsity"
    order = 50
    position = 60
    value_type = float
    neutral = 0.0
    option = "sparsity_ratios"
    default_option = ()  # off unless asked for: on ORT CPU it buys size, never latency
    ordered = False  # the useful ratios are not on an even grid
    follows_layers = True

    def read_option(self, value):
        ratios = tuple(value)
        if ratios and (0.0 not in ratios or any(not 0.0 <= r < 1.0 for r in ratios)):
            raise ValueError(f"sparsity_ratios must include 0.0 and lie in [0, 1), got sparsity_ratios={ratios}")
        return ratios

    def variables(self, analysis, options) -> list[Variable]:
        ratios = tuple(sorted(options.sparsity_ratios))
        if len(ratios) < 2:
            return []
        return [Variable(self.kind, u.name, ratios) for u in analysis.layers]

    def apply(self, model, candidate, context) -> None:
        for name, ratio in sorted(candidate.sparsity.items()):
            if ratio <= 0:
                continue
            layer = find_submodule(model, name)
            if layer is None:
                continue  # removed with a skipped block
            for part in (layer if isinstance(layer, LowRank) else [layer]):
                sparsify(part, ratio)

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        for name, ratio in candidate.sparsity.items():
            if name in shapes.layers:
                shapes.layers[name] = shapes.layers[name].replace(sparsity=ratio)

    def summary(self, values: dict) -> str | None:
        sparse = [float(v) for v in values.values() if float(v) > 0]
        if not sparse:
            return None
        return f"{len(sparse)} layer{'' if len(sparse) == 1 else 's'} sparse (mean {100 * sum(sparse) / len(sparse):.0f}%)"


class _KeepZeros:
    """A gradient hook that masks the gradient (a class, not a closure, so models still pickle)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * getattr(self.layer, MASK)


def sparsify(layer: nn.Module, ratio: float) -> None:
    """Zero the ``zeroed_count(numel, ratio)`` smallest-magnitude weights of a Conv2d/Linear, in place.

    Ties break by position (a stable sort), so the same weights always give the same mask.
    """
    weight = layer.weight
    zeros = zeroed_count(weight.numel(), ratio)
    order = torch.argsort(weight.detach().abs().flatten(), stable=True)
    mask = torch.ones(weight.numel(), dtype=weight.dtype)
    mask[order[:zeros]] = 0.0
    mask = mask.reshape(weight.shape)
    layer.register_buffer(MASK, mask)
    with torch.no_grad():
        weight.mul_(mask)
    weight.register_hook(_KeepZeros(layer))


register(Sparsify())
