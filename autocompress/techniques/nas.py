"""NAS choices that inherit weights: skip a residual block, shrink a kernel to its centre crop."""

from __future__ import annotations

import torch
from torch import nn

from .._modules import is_inside, set_submodule
from ..analysis import SkippedBlock
from ..space import Candidate

__all__ = ["apply_nas", "shrink_kernel"]


def apply_nas(model: nn.Module, candidate: Candidate, context) -> None:
    skipped = [block for block, skip in sorted(candidate.skip.items()) if skip]
    for block in skipped:
        set_submodule(model, block, SkippedBlock())
    for layer, size in sorted(candidate.kernel.items()):
        if any(is_inside(layer, block) for block in skipped):
            continue  # the layer went with its block
        shrink_kernel(model.get_submodule(layer), size)


def shrink_kernel(conv: nn.Conv2d, size: int) -> None:
    """Keep the centre ``size`` x ``size`` taps of a square kernel; padding shrinks so H x W stay."""
    current = conv.kernel_size[0]
    if size == current:
        return
    if size > current or (current - size) % 2:
        raise ValueError(f"cannot shrink a {current}x{current} kernel to {size=}")
    crop = (current - size) // 2
    pad = conv.padding[0] - crop * conv.dilation[0]
    if pad < 0:
        raise ValueError(f"kernel {size} needs negative padding for this conv ({conv.padding=})")
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight[:, :, crop:crop + size, crop:crop + size].clone())
    conv.kernel_size = (size, size)
    conv.padding = (pad, pad)
