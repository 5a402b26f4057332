"""Cell choice points of a model: the blocks a search-space file matches, and for each the cells
it may become, described as plain data (each cell's layers and norms, named in the model).

Each cell is built once here from the block (``cells.build_cell``) and traced at the block's input
shape, so accounting and the latency predictor price it without building anything, exactly as
they price the model's own layers. A cell whose output shape differs from its block's is the
space file's error and is refused here, before any training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import AutocompressError
from .cells import CellBuildError, build_cell
from .modules import is_inside
from .technique import registered
from .units import LayerUnit, NormUnit, collect_units, trace_shapes

__all__ = ["CellChoice", "CellOption", "CellShapeError", "ORIGINAL", "SKIP", "find_cell_choices", "with_followers"]

ORIGINAL = "original"
SKIP = "skip"


class CellShapeError(AutocompressError):
    """A cell of a search-space file does not fit the block it is meant to replace."""


@dataclass(frozen=True)
class CellOption:
    """One cell a block may become: its spec (``search_space.CellSpec``) and what it is made of."""

    name: str
    spec: object
    layers: tuple[LayerUnit, ...]  # named in the model: "<block>.<path in the cell>"
    norms: tuple[NormUnit, ...]
    follows: tuple[tuple[str, str], ...]  # (new depthwise layer, the 1x1 layer whose input and decisions it follows)
    exact: bool  # computes what the block computes (inherited weights need no blockwise distillation)

    @property
    def macs(self) -> int:
        return sum(u.macs for u in self.layers)

    @property
    def params(self) -> int:
        return sum(u.params for u in self.layers) + sum(n.channels * n.params_per_channel for n in self.norms)


@dataclass(frozen=True)
class CellChoice:
    """A block with a cell choice: the original first (not listed), then ``options``, the costliest first."""

    block: str
    block_class: str
    input_shape: tuple[int, ...]
    macs: int
    options: tuple[CellOption, ...]
    entry: str  # the pattern of the space file that matched, e.g. "blocks[0]"
    tied_to: str | None = None  # the block whose decision this one follows (a supernet's ``cell_ties``)

    def option(self, name: str) -> CellOption:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(f"block {self.block} has no cell {name!r}; its cells: {[o.name for o in self.options]}")

    @property
    def names(self) -> tuple[str, ...]:
        return (ORIGINAL, *(o.name for o in self.options))

    def to_dict(self) -> dict:
        return {"block": self.block, "class": self.block_class, "input_shape": list(self.input_shape),
                "macs": self.macs, "pattern": self.entry, "tied_to": self.tied_to,
                "cells": [{"name": ORIGINAL, "macs": self.macs, "exact": True}]
                + [{"name": o.name, "macs": o.macs, "exact": o.exact} for o in self.options]}


def find_cell_choices(model: nn.Module, example_input: torch.Tensor, space, shapes: dict, layers: list[LayerUnit],
                      skippable: set[str]) -> tuple[list[CellChoice], list[str]]:
    """Every block of ``model`` that a pattern of ``space`` (a ``SearchSpaceFile``) matches, with
    the cells it can become; notes say which blocks or cells were left out, and why. A model's
    ``cell_ties`` ({block: block}) makes a block follow another's decision (one cell stacked
    everywhere, as NAS-Bench-201 does): it keeps its own options, priced at its own shapes."""
    choices, notes = [], []
    ties = getattr(model, "cell_ties", {}) or {}
    for name, module in model.named_modules():
        pattern = space.pattern_for(module) if name else None
        if pattern is None or any(is_inside(name, c.block) for c in choices):
            continue
        record = shapes.get(name)
        if record is None or record["in"] is None or record["n_tensor_args"] != 1:
            notes.append(f"{name}: matches {space.path} {pattern.entry} but is not called with one tensor; left alone")
            continue
        choice, why = _choice(name, module, pattern, record, space.path, layers, skippable)
        notes += why
        if choice is None:
            notes.append(f"{name}: matches {space.path} {pattern.entry} but none of its cells applies; left alone")
        else:
            choices.append(replace(choice, tied_to=ties.get(name)))
    leaders = {c.block: c for c in choices}
    for choice in choices:
        if choice.tied_to is not None and (choice.tied_to not in leaders
                                           or leaders[choice.tied_to].names != choice.names):
            raise CellShapeError(f"{space.path}: block {choice.block} is tied to {choice.tied_to}, which does not "
                                 "offer the same cells; untie them (tie_cells: false)")
    return choices, notes


def _choice(name, block, pattern, record, path, layers, skippable) -> tuple[CellChoice | None, list[str]]:
    input_shape, output_shape = record["in"], record["out"]
    block_macs = sum(u.macs for u in layers if is_inside(u.name, name))
    probe = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = block.eval()(probe)
    own = _signature(block, probe)
    options, seen, left_out = [], {own: ORIGINAL}, {}
    for spec in pattern.cells:
        if spec.op == "skip":
            if name in skippable or spec.op in getattr(block, "cell_ops", ()):  # a NAS-Bench-201 edge's skip_connect
                options.append(CellOption(spec.name, spec, (), (), (), False))
            else:
                left_out.setdefault("the block is not residual (its output is not x + f(x))", []).append(spec.name)
            continue
        try:
            cell = build_cell(block, spec, input_shape)
        except CellBuildError as exc:
            left_out.setdefault(str(exc), []).append(spec.name)
            continue
        except Exception as exc:  # a block the builders do not understand loses that cell, not the analysis
            left_out.setdefault(f"it cannot be built from this block ({type(exc).__name__}: {exc})", []).append(spec.name)
            continue
        with torch.no_grad():
            got = cell(probe)
        if got.shape != expected.shape:
            raise CellShapeError(f"{path}: {spec.entry or pattern.entry} cell {spec.name} turns block {name} "
                                 f"({type(block).__name__}) output {tuple(expected.shape)} into {tuple(got.shape)}; "
                                 "a cell must keep its block's output shape: remove it from that pattern")
        signature = _signature(cell, probe)
        if signature in seen:
            left_out.setdefault(f"the same network as {seen[signature]}", []).append(spec.name)
            continue
        seen[signature] = spec.name
        exact = bool(torch.allclose(got, expected, atol=1e-5, rtol=1e-4))
        options.append(_option(name, spec, cell, input_shape, exact))
    options.sort(key=lambda o: (o.spec.op == "skip", -o.macs))  # costliest first: a repair move walks down
    notes = [f"{name}: cell{'s' if len(cells) > 1 else ''} {', '.join(cells)} left out: {why}"
             for why, cells in left_out.items()]
    if not options:
        return None, notes
    return CellChoice(name, f"{type(block).__module__}.{type(block).__qualname__}", tuple(input_shape),
                      block_macs, tuple(options), pattern.entry), notes


def _option(block: str, spec, cell: nn.Module, input_shape, exact: bool) -> CellOption:
    shapes, _ = trace_shapes(cell, torch.zeros(input_shape))
    layers, norms, _, _ = collect_units(cell, shapes)
    prefixed = tuple(replace(u, name=f"{block}.{u.name}") for u in layers)
    names = {u.name for u in prefixed}
    follows = tuple((u, u[: -len("_dw")]) for u in names if u.endswith("_dw") and u[: -len("_dw")] in names)
    return CellOption(spec.name, spec, prefixed, tuple(replace(n, name=f"{block}.{n.name}") for n in norms),
                      tuple(sorted(follows)), exact)


def _signature(module: nn.Module, probe: torch.Tensor) -> tuple:
    """What makes two networks the same: their layers' and norms' names and shapes, and the kinds
    of module they are made of (a pooling edge and a skip have no layers, and differ)."""
    shapes, _ = trace_shapes(module, probe)
    layers, norms, _, _ = collect_units(module, shapes)
    return tuple(type(m).__qualname__ for m in module.modules()) + tuple(layers) + tuple(norms)


def with_followers(analysis, candidate):
    """``candidate`` with each tied block given the cell of the block it follows, and each new
    depthwise layer of its chosen cells given the per-layer decisions (bit width, sparsity) of the
    1 x 1 layer it feeds, for the techniques that declare ``follows_layers``: a
    depthwise-separable conv runs at the precision decided for the conv."""
    if not analysis.cells:
        return candidate
    tied = {c.block: candidate.cell[c.tied_to] for c in analysis.cells
            if c.tied_to is not None and candidate.cell.get(c.tied_to, ORIGINAL) != ORIGINAL}
    if tied:
        candidate = candidate.replace(cell={**candidate.cell, **tied})
    if analysis.canonical_cells is not None:
        candidate = candidate.replace(cell=analysis.canonical_cells(candidate.cell))
    chosen = {c.block: c for c in analysis.cells}
    pairs = [pair for block, name in candidate.cell.items() if name != ORIGINAL and block in chosen
             for pair in chosen[block].option(name).follows]
    if not pairs:
        return candidate
    changes = {}
    for t in registered():
        if t.follows_layers:
            decided = candidate.of(t.kind)
            changes[t.kind] = decided | {dw: decided[pw] for dw, pw in pairs if pw in decided}
    return candidate.replace(**changes)
