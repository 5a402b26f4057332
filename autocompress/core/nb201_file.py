"""The ``nb201_cell`` family of supernet files: NAS-Bench-201's cell, stacked as that benchmark does.

NAS-Bench-201 (Dong and Yang, 2020) searches one cell: four nodes, each of the six edges from an
earlier node to a later one carrying one operation out of ``none``, ``skip_connect``,
``nor_conv_1x1``, ``nor_conv_3x3`` and ``avg_pool_3x3`` (5^6 = 15,625 cells). The network stacks
the same cell ``cells_per_stage`` times in each of three stages of ``channels``, twice and four
times as many channels, with a residual block halving the map between stages. This module reads
that family's entries of a supernet file (``core.supernet_file`` reads the rest); ``core.nb201``
builds the network. Every problem is one ``SearchSpaceError`` line naming the file, the entry and
the fix, before anything is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .search_space import _error, _non_empty_list, _refuse_unknown_keys

__all__ = ["EDGES", "NB201_KEYS", "OPS", "Nb201Spec", "read_nb201"]

# The benchmark's operations, cheapest first: an edge at rest runs the costliest one its file lists.
OPS = ("none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
# (to, from): node ``to`` sums its edges from every earlier node; the cell's output is node 3.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NB201_KEYS = ("family", "channels", "cells_per_stage", "ops", "edges", "tie_cells")
MAX_CELLS_PER_STAGE = 8
_EXAMPLE = "search_spaces/nb201_supernet.yaml"


@dataclass(frozen=True)
class Nb201Spec:
    path: str
    name: str
    description: str
    channels: int  # of the first stage; the next two have twice and four times as many
    cells_per_stage: int
    edge_ops: tuple[tuple[str, ...], ...]  # per edge of ``EDGES``, cheapest first
    tie_cells: bool  # one cell for the whole network, as the benchmark stacks it

    family = "nb201_cell"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "family": self.family, "channels": self.channels,
                "cells_per_stage": self.cells_per_stage, "tie_cells": self.tie_cells,
                "edges": {edge_name(e): list(ops) for e, ops in zip(EDGES, self.edge_ops)}}

    @property
    def cells(self) -> int:
        """How many different cells the file allows (15,625 for the benchmark's)."""
        count = 1
        for ops in self.edge_ops:
            count *= len(ops)
        return count


def edge_name(edge: tuple[int, int]) -> str:
    return f"{edge[0]}<-{edge[1]}"


def read_nb201(net: dict, label: str, name: str, description: str) -> Nb201Spec:
    """The ``supernet:`` mapping of an ``nb201_cell`` file, checked."""
    _refuse_unknown_keys(net, NB201_KEYS, label, "supernet")
    ops = _ops(net.get("ops", list(OPS)), label, "supernet.ops")
    per_edge = [ops] * len(EDGES)
    overrides = net.get("edges", {})
    if not isinstance(overrides, dict):
        raise _error(label, "supernet.edges", f"{overrides!r} is not a mapping; write e.g. edges: {{'3<-0': [none, "
                     "skip_connect]}} to narrow an edge's operations")
    known = {edge_name(e): i for i, e in enumerate(EDGES)}
    for key, raw in overrides.items():
        if key not in known:
            raise _error(label, f"supernet.edges.{key}", f"no such edge; the cell's edges are {', '.join(known)}")
        per_edge[known[key]] = _ops(raw, label, f"supernet.edges.{key}")
    tie = net.get("tie_cells", True)
    if not isinstance(tie, bool):
        raise _error(label, "supernet.tie_cells", f"{tie!r} is not true or false; true stacks one cell everywhere, as "
                     "NAS-Bench-201 does")
    return Nb201Spec(path=label, name=name, description=description, channels=_whole(net.get("channels", 16), 1, 512,
                     label, "supernet.channels", "16"), cells_per_stage=_whole(net.get("cells_per_stage", 5), 1,
                     MAX_CELLS_PER_STAGE, label, "supernet.cells_per_stage", "5"),
                     edge_ops=tuple(per_edge), tie_cells=tie)


def _ops(raw: Any, label: str, entry: str) -> tuple[str, ...]:
    values = _non_empty_list(raw, label, entry, f"list operations out of {', '.join(OPS)}")
    for value in values:
        if value not in OPS:
            raise _error(label, entry, f"unknown operation {value!r}; a NAS-Bench-201 edge runs one of "
                         f"{', '.join(OPS)} (see {_EXAMPLE})")
    return tuple(op for op in OPS if op in values)


def _whole(value: Any, low: int, high: int, label: str, entry: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _error(label, entry, f"{value!r} is not a whole number from {low} to {high}; write e.g. {example}")
    return value
