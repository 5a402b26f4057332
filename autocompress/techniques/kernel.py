"""Shrink a k x k kernel to its centre crop (as Once-for-All's elastic kernels do): padding
shrinks alike, so the output keeps its height and width, and the kept taps keep their weights."""

from __future__ import annotations

from torch import nn

from ..core.cells import CellBuildError, resize_kernel
from ..core.modules import find_submodule, is_inside
from ..core.technique import ModelShapes, Technique, Variable, read_flag, register

__all__ = ["ShrinkKernels", "shrink_kernel"]


class ShrinkKernels(Technique):
    kind = "kernel"
    order = 20
    position = 50
    value_type = int
    neutral = None  # each layer's own size, the first of its choices
    option = "shrink_kernels"
    default_option = True
    in_every_candidate_json = True

    def read_option(self, value):
        return read_flag(self.option, value)

    def variables(self, analysis, options) -> list[Variable]:
        if not options.shrink_kernels:
            return []
        return [Variable(self.kind, k.layer, k.options) for k in analysis.kernels]

    def apply(self, model, candidate, context) -> None:
        skipped = [block for block, skip in candidate.skip.items() if skip]
        for layer, size in sorted(candidate.kernel.items()):
            if any(is_inside(layer, block) for block in skipped):
                continue  # it went with its block
            conv = find_submodule(model, layer)
            if conv is None:
                continue  # a cell without this layer replaced its block
            if tuple(conv.kernel_size) == context.analysis.layer(layer).kernel_size:  # else a cell set it
                shrink_kernel(conv, size)

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        for layer, size in candidate.kernel.items():
            # A layer whose kernel the chosen cell changed keeps the cell's kernel.
            if layer in shapes.layers and shapes.units[layer].kernel_size == analysis.layer(layer).kernel_size:
                shapes.layers[layer] = shapes.layers[layer].replace(kernel=(size, size))

    def summary(self, values: dict) -> str | None:
        # The neutral size is the layer's own, which a Candidate alone does not tell: show the choices.
        kernels = [int(v) for v in values.values()]
        return ("kernels " + " ".join(f"{kernels.count(k)}x{k}" for k in sorted(set(kernels)))) if kernels else None


def shrink_kernel(conv: nn.Conv2d, size: int) -> None:
    """Keep the centre ``size`` x ``size`` taps of a square kernel; padding shrinks so H x W stay."""
    if size > conv.kernel_size[0]:
        raise ValueError(f"cannot shrink a {conv.kernel_size[0]}x{conv.kernel_size[0]} kernel to {size=}")
    try:
        resize_kernel(conv, size)
    except CellBuildError as exc:
        raise ValueError(str(exc)) from None


register(ShrinkKernels())
