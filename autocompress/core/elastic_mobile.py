"""An elastic MobileNet: one network whose every subnet can run with the weights it shares.

Built from a supernet file (``core.supernet_file``) at its largest: each block with the widest
expansion and the largest depthwise kernel, each stage at its greatest depth. At rest it is a plain
network of convs, norms and a linear head, so analysis, the techniques, the predictor and export
treat it as any model. For supernet training a block may be told to run a subnet's shape
(``set_subnet``): the leading hidden channels and the centre of the kernel, the weights Once-for-All
shares. A cell built from such a block later keeps the same leading channels (``build_cell`` reads
``shares_leading_channels``), so a subnet the search picks computes what training trained.

Depth is elastic through the blocks past a stage's shallowest depth: each may be skipped, and
its exact type (``OptionalInvertedResidual``) is how the cell space offers skip to those alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cells import divisible
from .search_space import BlockPattern, CellSpec, SearchSpaceFile

__all__ = ["ElasticInvertedResidual", "ElasticMobileNet", "OptionalInvertedResidual", "SubnetShape",
           "build_elastic_mobile"]

SKIPPED = "skip"


@dataclass(frozen=True)
class SubnetShape:
    """What one block runs as in a subnet: its hidden width and kernel, or skipped."""

    hidden: int
    kernel: int


class ElasticInvertedResidual(nn.Module):
    """MobileNet-V2's block (1x1 expand, k x k depthwise, 1x1 project) whose expansion and kernel
    may shrink to a leading slice and a centre crop of its own weights."""

    shares_leading_channels = True

    def __init__(self, in_channels: int, out_channels: int, stride: int, expands: tuple[float, ...],
                 kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.in_channels, self.stride = in_channels, stride
        self.expands, self.kernels = tuple(sorted(expands)), tuple(sorted(kernels))
        hidden, kernel = self.hidden_width(self.expands[-1]), self.kernels[-1]
        self.expand = None if hidden == in_channels else nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True))
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.residual = stride == 1 and in_channels == out_channels
        self.subnet: SubnetShape | str | None = None  # None: run as built (the largest)

    def hidden_width(self, expand: float) -> int:
        # The rule an mb cell uses (``cells.divisible``), so a trained slice is the cell's width.
        return divisible(self.in_channels * expand)

    def shapes(self) -> list[SubnetShape]:
        return [SubnetShape(self.hidden_width(e), k) for e in self.expands for k in self.kernels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subnet is None:
            out = self.project(self.depthwise(x if self.expand is None else self.expand(x)))
        elif self.subnet == SKIPPED:
            return x
        else:
            out = self._sliced(x, self.subnet)
        return x + out if self.residual else out

    def _sliced(self, x: torch.Tensor, shape: SubnetShape) -> torch.Tensor:
        hidden = shape.hidden
        if self.expand is not None:
            x = F.relu6(_norm(self.expand[1], F.conv2d(x, self.expand[0].weight[:hidden]), hidden))
        conv = self.depthwise[0]
        crop = (conv.kernel_size[0] - shape.kernel) // 2
        weight = conv.weight[:hidden, :, crop:crop + shape.kernel, crop:crop + shape.kernel]
        x = F.relu6(_norm(self.depthwise[1], F.conv2d(x, weight, None, self.stride, shape.kernel // 2, 1, hidden),
                          hidden))
        project = self.project[0].weight[:, :hidden]
        return self.project[1](F.conv2d(x, project))


class OptionalInvertedResidual(ElasticInvertedResidual):
    """A block past its stage's shallowest depth: the subnets may skip it."""


def _norm(bn: nn.BatchNorm2d, x: torch.Tensor, channels: int) -> torch.Tensor:
    """``bn`` on the leading ``channels``: its running statistics' slices are updated in place."""
    momentum = bn.momentum
    if bn.training and momentum is None:  # a cumulative average, as ``nn.BatchNorm2d`` keeps it
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(x, bn.running_mean[:channels], bn.running_var[:channels], bn.weight[:channels],
                        bn.bias[:channels], bn.training, 0.0 if momentum is None else momentum, bn.eps)


class ElasticMobileNet(nn.Module):
    """Stem, elastic stages, a 1x1 head conv, average pooling and a linear classifier."""

    architecture_in_cells_only = True  # no skip or kernel choice outside ``cell_space`` was trained

    def __init__(self, spec, num_classes: int = 10) -> None:
        super().__init__()
        scale = spec.width_multiplier
        stem = divisible(spec.stem * scale)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, spec.stem_stride, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU6(inplace=True))
        blocks, channels = [], stem
        for stage in spec.stages:
            width = divisible(stage.channels * scale)
            for index in range(stage.max_depth):
                kind = OptionalInvertedResidual if index >= stage.depths[0] else ElasticInvertedResidual
                blocks.append(kind(channels, width, stage.stride if index == 0 else 1, spec.expands, spec.kernels))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        head = divisible(spec.head * scale)
        self.head = nn.Sequential(nn.Conv2d(channels, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)
        self.supernet_file = spec
        self.stage_depths = tuple(s.depths for s in spec.stages)
        self.cell_space = _cell_space(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))

    def stages(self) -> list[list[ElasticInvertedResidual]]:
        out, blocks = [], list(self.blocks)
        for depths in self.stage_depths:
            out.append(blocks[:depths[-1]])
            blocks = blocks[depths[-1]:]
        return out

    def set_subnet(self, choice: str, rng: random.Random | None = None) -> None:
        """Run as the ``largest``, the ``smallest`` or a ``random`` subnet (drawn with ``rng``), or
        ``None``: as built. A random subnet draws each stage's depth uniformly, then which of its
        optional blocks to keep, so every subset the search may pick is trained."""
        for depths, stage in zip(self.stage_depths, self.stages()):
            if choice is None:
                for block in stage:
                    block.subnet = None
                continue
            depth = {"largest": depths[-1], "smallest": depths[0]}.get(choice) or rng.choice(depths)
            optional = list(range(depths[0], len(stage)))
            kept = set(optional[:depth - depths[0]] if rng is None else rng.sample(optional, depth - depths[0]))
            for index, block in enumerate(stage):
                if index >= depths[0] and index not in kept:
                    block.subnet = SKIPPED
                    continue
                shapes = block.shapes()
                shape = {"largest": shapes[-1], "smallest": shapes[0]}.get(choice) or rng.choice(shapes)
                block.subnet = None if shape == shapes[-1] else shape  # the largest runs as built


def _cell_space(spec) -> SearchSpaceFile:
    """The cells each block may become: its stage's expansions and kernels, and skip past the
    stage's shallowest depth. Matched by exact type, so the two kinds of block get their own."""
    patterns = []
    for kind, skip in ((ElasticInvertedResidual, False), (OptionalInvertedResidual, True)):
        # The widest expansion with the largest kernel is the block as built ("original").
        cells = {CellSpec("mb", expand=e, kernel=k, entry="supernet") for e in spec.expands for k in spec.kernels
                 if (e, k) != (spec.expands[-1], spec.kernels[-1])}
        ordered = sorted(cells, key=lambda c: (-c.expand, -c.kernel)) + ([CellSpec("skip", entry="supernet")] if skip else [])
        patterns.append(BlockPattern(classes=(kind,), class_names=(f"{kind.__module__}.{kind.__qualname__}",),
                                     cells=tuple(ordered), entry=f"supernet ({kind.__name__})"))
    return SearchSpaceFile(path=spec.path, name=spec.name, description=spec.description, patterns=tuple(patterns))


def build_elastic_mobile(spec, num_classes: int) -> ElasticMobileNet:
    return ElasticMobileNet(spec, num_classes=num_classes).eval()
