"""NAS-Bench-201's network as a weight-sharing supernet: every cell of its space runs with one set of weights.

The network is the benchmark's: a 3x3 conv stem, three stages of ``cells_per_stage`` cells with
``C``, ``2C`` and ``4C`` channels, a residual block halving the map between stages, then
BatchNorm, ReLU, average pooling and a linear classifier. Each of a cell's six edges
(``Nb201Edge``) holds the weights of its costliest operation (ReLU, 3x3 conv, BatchNorm); a
1x1 conv runs the kernel's centre tap with the same norm, as Once-for-All shares a kernel between
its sizes; pooling, skip and none have no weights. At rest the network is its largest subnet, a
plain network of convs and norms, so analysis, the techniques, the predictor and export treat it
as any model.

The benchmark stacks one cell everywhere: with ``tie_cells`` each edge of the first cell decides
for the same edge of every cell (``cell_ties``, read by ``core.cell_choices``), so the search
space is the benchmark's 15,625 cells, each with its per-layer pruning, bits and ranks.
"""

from __future__ import annotations

import functools
import operator
import random

import torch
import torch.nn.functional as F
from torch import nn

from .channel_groups import tracing_channels
from .choice_points import SkippedBlock
from .nb201_file import EDGES, OPS, Nb201Spec
from .search_space import BlockPattern, CellSpec, SearchSpaceFile

__all__ = ["Nb201Edge", "Nb201Network", "PoolEdge", "ZeroEdge", "build_edge_cell", "canonical_cells", "live_edges"]

_CONV_KERNELS = {"nor_conv_3x3": 3, "nor_conv_1x1": 1}
# How the cell space names each operation: skip_connect is the search's "skip" (the identity).
_CELL_OP = {"skip_connect": "skip", "avg_pool_3x3": "avg_pool_3x3", "nor_conv_1x1": "nor_conv_1x1",
            "nor_conv_3x3": "nor_conv_3x3", "none": "none"}
_OP_OF_CELL = {cell: op for op, cell in _CELL_OP.items()}


class Nb201Edge(nn.Module):
    """One edge: the costliest operation its file lists (``op`` at rest), or, during supernet
    training, the operation ``subnet`` names, run with the shared weights."""

    def __init__(self, channels: int, ops: tuple[str, ...]) -> None:
        super().__init__()
        self.ops, self.rest = ops, ops[-1]
        kernel = self.kernel = next((_CONV_KERNELS[op] for op in reversed(ops) if op in _CONV_KERNELS), None)
        if kernel is not None:
            self.conv = nn.Conv2d(channels, channels, kernel, 1, kernel // 2, bias=False)
            self.norm = nn.BatchNorm2d(channels)
        self.subnet: str | None = None

    @property
    def op(self) -> str:
        return self.subnet or self.rest

    @property
    def cell_ops(self) -> tuple[str, ...]:
        """The cells (``CellSpec`` ops) this edge may become: its operations but the one it runs at rest."""
        return tuple(_CELL_OP[op] for op in self.ops[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op
        if op in _CONV_KERNELS and _CONV_KERNELS[op] == self.kernel:
            # Called as modules (which the techniques may have replaced): how analysis and pruning see a layer.
            return self.norm(self.conv(F.relu(x)))
        if op in _CONV_KERNELS:
            weight, wanted = self.conv.weight, _CONV_KERNELS[op]
            crop = (weight.shape[-1] - wanted) // 2
            return self.norm(F.conv2d(F.relu(x), weight[:, :, crop:crop + wanted, crop:crop + wanted], None, 1,
                                      wanted // 2))
        if op == "avg_pool_3x3":
            return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        if op == "skip_connect":
            return x
        return x.mul(0.0)  # none: the cell leaves such an edge out of its sums


class PoolEdge(nn.Module):
    op = "avg_pool_3x3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class ZeroEdge(nn.Module):
    op = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class _ConvEdge(nn.Module):
    """ReLU, conv, BatchNorm: a conv edge as the search builds it, at its own kernel size."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d, op: str) -> None:
        super().__init__()
        self.conv, self.norm, self.op = conv, norm, op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(F.relu(x)))


def build_edge_cell(edge: Nb201Edge, op: str) -> nn.Module:
    """The module the search puts in place of ``edge`` for ``op``: the same function the edge
    computed in training with that subnet, its conv weights copied (a 1x1 takes the centre tap)."""
    if op == "skip":
        return SkippedBlock()
    if op == "avg_pool_3x3":
        return PoolEdge()
    if op == "none":
        return ZeroEdge()
    kernel = _CONV_KERNELS[op]
    source = edge.conv
    crop = (source.kernel_size[0] - kernel) // 2
    conv = nn.Conv2d(source.in_channels, source.out_channels, kernel, 1, kernel // 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(source.weight[:, :, crop:crop + kernel, crop:crop + kernel])
    norm = nn.BatchNorm2d(edge.norm.num_features)
    norm.load_state_dict(edge.norm.state_dict())
    return _ConvEdge(conv, norm, op)


def _relu_conv_bn(inputs: int, outputs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(outputs))


class Nb201Cell(nn.Module):
    """Four nodes: node 0 is the input, each later node the sum of its edges from the earlier
    ones; the output is node 3. An edge that runs ``none`` is left out of its sum (it adds zeros)."""

    def __init__(self, channels: int, edge_ops: tuple[tuple[str, ...], ...]) -> None:
        super().__init__()
        for (to, source), ops in zip(EDGES, edge_ops):
            self.add_module(f"edge_{to}_{source}", Nb201Edge(channels, ops))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = {(to, source): getattr(self, f"edge_{to}_{source}").op for to, source in EDGES}
        live = live_edges(ops)
        nodes = [x]
        for node in (1, 2, 3):
            terms = [getattr(self, f"edge_{to}_{source}")(nodes[source]) for to, source in EDGES
                     if to == node and (to, source) in live]
            # A node without inputs is zeros, as the benchmark's none edges sum to: x * 0 rather than
            # a new tensor, so channel pruning still sees its channels tied to the input's.
            node = functools.reduce(operator.add, terms) if terms else x.mul(0.0)
            if tracing_channels() and terms:
                # Every node of a stage is pruned as one channel group, whatever the cell: which
                # nodes share channels depends on the edges (a skip ties a node to its source),
                # and a group that merged or split with the cell would price one network and
                # build another. Tied for Torch-Pruning's trace alone: no op is added to a run.
                node = node + x.mul(0.0)
            nodes.append(node)
        return nodes[3]


def live_edges(ops: dict[tuple[int, int], str]) -> set[tuple[int, int]]:
    """The edges whose output reaches the cell's output: not none, and into a node that does.
    The others compute nothing the network uses; the cell leaves them out."""
    reaches = {3}
    for node in (2, 1):
        if any(ops[(to, node)] != "none" and to in reaches for to, source in EDGES if source == node):
            reaches.add(node)
    return {edge for edge, op in ops.items() if op != "none" and edge[0] in reaches}


def canonical_cells(cells: dict[str, str], *, cell_names: tuple[str, ...], rest: tuple[str, ...],
                    offers_none: tuple[bool, ...]) -> dict[str, str]:
    """``cells`` ({edge block: cell name}) with every edge that reaches nothing set to none, where
    the edge offers none: the same network, priced as it runs. ``rest``: each edge's operation
    as built (what "original" means), in the order of ``EDGES``."""
    out = dict(cells)
    for cell in cell_names:
        names = [f"{cell}.edge_{to}_{source}" for to, source in EDGES]
        ops = {edge: _OP_OF_CELL.get(cells.get(name, "original"), op_at_rest)
               for edge, name, op_at_rest in zip(EDGES, names, rest)}
        live = live_edges(ops)
        for edge, name, can_be_none in zip(EDGES, names, offers_none):
            if edge not in live and can_be_none and ops[edge] != "none":
                out[name] = "none"
    return out


class Reduction(nn.Module):
    """The benchmark's residual block between stages: two ReLU-conv-BN (the first with stride 2)
    beside an average pool and a 1x1 conv."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.conv_a = _relu_conv_bn(inputs, outputs, 3, 2)
        self.conv_b = _relu_conv_bn(outputs, outputs, 3, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(inputs, outputs, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.downsample(x)


class Nb201Network(nn.Module):
    architecture_in_cells_only = True  # no skip or kernel choice outside ``cell_space`` was trained

    def __init__(self, spec: Nb201Spec, num_classes: int = 10) -> None:
        super().__init__()
        c = spec.channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        layers, names, width = [], [], c
        for stage in range(3):
            if stage:
                layers.append(Reduction(width, width * 2))
                width *= 2
            for _ in range(spec.cells_per_stage):
                names.append(f"cells.{len(layers)}")
                layers.append(Nb201Cell(width, spec.edge_ops))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        self.supernet_file = spec
        self.cell_names = tuple(names)
        self.cell_space = _cell_space(spec)
        self.canonical_cells = functools.partial(
            canonical_cells, cell_names=self.cell_names, rest=tuple(ops[-1] for ops in spec.edge_ops),
            offers_none=tuple("none" in ops[:-1] for ops in spec.edge_ops))
        self.cell_ties = {f"{cell}.edge_{to}_{source}": f"{names[0]}.edge_{to}_{source}"
                          for cell in names[1:] for to, source in EDGES} if spec.tie_cells else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lastact(self.cells(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))

    def edges(self) -> list[list[Nb201Edge]]:
        """Per cell, its six edges in the order of ``EDGES``."""
        return [[self.get_submodule(f"{cell}.edge_{to}_{source}") for to, source in EDGES] for cell in self.cell_names]

    def set_subnet(self, choice: str | None, rng: random.Random | None = None) -> None:
        """Run as the ``largest`` (every edge's costliest operation), the ``smallest`` (its
        cheapest that is not none), a ``random`` cell (each edge drawn uniformly with ``rng``; one
        cell for all when tied) or ``None``: as built."""
        drawn = None
        for cell in self.edges():
            if drawn is None or not self.supernet_file.tie_cells:
                drawn = [_draw(edge.ops, choice, rng) for edge in cell]
            for edge, op in zip(cell, drawn):
                edge.subnet = None if op == edge.rest else op


def _draw(ops: tuple[str, ...], choice: str | None, rng: random.Random | None) -> str:
    if choice in (None, "largest"):
        return ops[-1]
    if choice == "smallest":
        return next((op for op in ops if op != "none"), ops[0])
    return rng.choice(ops)


def _cell_space(spec: Nb201Spec) -> SearchSpaceFile:
    """Each edge's operations but its costliest (the edge as built, "original"). All edges share
    one class, so they share one pattern: the union of the file's per-edge operations, and an
    edge offered one it does not hold is refused when its cells are built."""
    offered = {op for ops in spec.edge_ops for op in ops[:-1]}
    cells = tuple(CellSpec(_CELL_OP[op], entry="supernet") for op in reversed(
        [op for op in OPS if op in offered]))
    pattern = BlockPattern(classes=(Nb201Edge,), class_names=(f"{Nb201Edge.__module__}.{Nb201Edge.__qualname__}",),
                           cells=cells, entry="supernet (Nb201Edge)")
    return SearchSpaceFile(path=spec.path, name=spec.name, description=spec.description,
                           patterns=(pattern,) if cells else ())


def build_nb201(spec: Nb201Spec, num_classes: int) -> Nb201Network:
    return Nb201Network(spec, num_classes=num_classes).eval()
