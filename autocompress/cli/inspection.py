"""What `autocompress inspect` shows: each compressible unit, its share of the model, its techniques."""

from __future__ import annotations

from ..core.analysis import ModelAnalysis
from ..core.modules import is_inside
from ..core.space import Space
from ..core.target import Target, default_target
from ..core.technique import registered, technique

__all__ = ["cell_rows", "format_inspection", "inspection_rows", "technique_rows"]


def technique_rows(space: Space, target: Target | None = None) -> list[dict]:
    """One row per registered technique: its option, the values offered, how many variables it
    has on this model, and what it does to latency on ``target`` where that is not obvious."""
    target = target or default_target()
    rows = []
    for t in registered(in_space_order=True):
        count = sum(1 for v in space.variables if v.kind == t.kind)
        rows.append({"kind": t.kind, "technique": type(t).__name__, "option": t.option,
                     "values": _jsonable(getattr(space.options, t.option)), "variables": count,
                     "enabled": count > 0, "latency": target.latency_note(t.kind) or ""})
    return rows


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def inspection_rows(analysis: ModelAnalysis, space: Space, target: Target | None = None) -> list[dict]:
    """One row per unit (layer, channel group, block, attention, fixed parameters)."""
    target = target or default_target()

    def describe(v) -> str:
        note = target.latency_note(v.kind)
        return technique(v.kind).describe(v) + (f" ({note})" if note else "")

    total_macs = max(analysis.total_macs, 1)
    total_params = max(analysis.total_params, 1)
    decided = {}
    for var in space.variables:
        decided.setdefault(var.unit, []).append(var)
    rows = []
    for u in analysis.layers:
        techniques = [describe(v) for v in decided.get(u.name, []) if v.kind != "prune"]
        k_h, k_w = u.kernel_size
        if u.kind == "conv":
            grouping = " depthwise" if u.depthwise else f" g{u.groups}" if u.groups > 1 else ""
            shape = f"conv {u.in_channels}->{u.out_channels} k{k_h}x{k_w} s{u.stride}{grouping}"
        else:
            shape = f"linear {u.in_channels}->{u.out_channels} x{u.positions}"
        rows.append(_row("layer", u.name, shape, u.macs / total_macs, u.params / total_params, techniques,
                         u.note or ("" if techniques else "no technique applies")))
    for g in analysis.groups:
        var = [v for v in decided.get(g.id, []) if v.kind == "prune"]
        layers = sorted({m.module for m in g.members if m.module in {u.name for u in analysis.layers}})
        macs = sum(u.macs for u in analysis.layers if u.name in layers)
        note = g.note if not g.prunable else ("" if var else f"{g.channels} channels: too few to cut at this channel multiple")
        rows.append(_row("channel group", g.id, f"{g.channels} channels, {len(layers)} layers", macs / total_macs, None,
                         [describe(var[0])] if var else [], note))
    for c in analysis.cells:
        var = [v for v in decided.get(c.block, []) if v.kind == "cell"]
        rows.append(_row("cell choice", c.block, c.block_class.rpartition(".")[2], c.macs / total_macs, None,
                         [describe(v) for v in var], "" if var else f"follows {c.tied_to} (one cell for all)"
                         if c.tied_to else "cells off (--cells off)"))
    for b in analysis.blocks:
        var = decided.get(b.name, [])
        rows.append(_row("block", b.name, "residual, in == out", b.macs / total_macs, b.params / total_params,
                         [describe(v) for v in var], ""))
    for a in analysis.attention:
        var = decided.get(a.name, [])
        shape = f"{a.heads} heads x {a.head_dim}, {a.tokens} tokens"
        note = ("" if var else "one head: nothing to cut") if a.split else (
            f"projections run inside nn.MultiheadAttention (functional); {a.note}: no pruning of heads, "
            "no quantization or factorization")
        rows.append(_row("attention", a.name, shape, a.macs / total_macs, a.params / total_params,
                         [describe(v) for v in var], note))
    for f in analysis.fixed:
        if not any(is_inside(f.name, a.name) for a in analysis.attention):
            rows.append(_row("fixed", f.name, "", 0.0, f.params / total_params, [], f.note))
    return rows


def cell_rows(analysis: ModelAnalysis) -> list[dict]:
    """One row per block with a cell choice: its name, class and cells (MACs each, and whether the
    cell computes what the block does with the weights it inherits)."""
    rows = []
    for choice in analysis.cells:
        cells = choice.to_dict()["cells"]
        rows.append({"name": choice.block, "class": choice.block_class, "pattern": choice.entry,
                     "cells": [c["name"] for c in cells], "macs": {c["name"]: c["macs"] for c in cells},
                     "inherits_exactly": [o.name for o in choice.options if o.exact]})
    return rows


def _row(kind, name, shape, mac_share, param_share, techniques, note) -> dict:
    return {"kind": kind, "name": name, "shape": shape, "macs_share": round(mac_share, 6),
            "params_share": None if param_share is None else round(param_share, 6),
            "techniques": techniques, "note": note}


def format_inspection(model_name: str, analysis: ModelAnalysis, space: Space) -> str:
    rows = inspection_rows(analysis, space)
    techniques = technique_rows(space)
    offered = [f"{t['kind']} ({t['variables']})" for t in techniques if t["enabled"]]
    off = [f"{t['kind']} (--{t['option'].replace('_', '-')})" for t in techniques if not t["enabled"]]
    lines = [
        f"{model_name}: input {tuple(analysis.input_shape)}, {analysis.total_params:,} params, "
        f"{analysis.total_macs:,} MACs; {len(space)} decision variables "
        f"({len(analysis.prunable_groups)}/{len(analysis.groups)} channel groups prunable, "
        f"{len(analysis.blocks)} skippable blocks, {len(analysis.kernels)} kernel choices, "
        f"{len(analysis.cells)} blocks with cell choices)",
        f"techniques: {', '.join(offered) or 'none'}" + (f"; off: {', '.join(off)}" if off else ""),
        f"{'kind':<14}{'name':<40}{'shape':<30}{'MACs':>7}{'params':>8}  techniques / note",
    ]
    for r in rows:
        share = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        text = "; ".join(r["techniques"])
        if r["note"]:
            text = f"{text}  ({r['note']})" if text else r["note"]
        lines.append(f"{r['kind']:<14}{r['name'][:39]:<40}{r['shape'][:29]:<30}{share(r['macs_share']):>7}"
                     f"{share(r['params_share']):>8}  {text}")
    if analysis.notes:
        lines.append("notes:")
        lines += [f"  - {note}" for note in analysis.notes]
    return "\n".join(lines)
