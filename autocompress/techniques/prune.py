"""Structured channel pruning: cut whole channels of each coupled group, the weakest first."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..core.channel_groups import build_dependency_graph, keep_channels
from ..core.modules import find_submodule
from ..core.technique import ModelShapes, Technique, Variable, layer_mac_share, register

__all__ = ["PruneChannels", "TOKEN_LINEAR_MULTIPLE", "group_multiple", "removed_channels"]

DEFAULT_RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
# The hidden width of a transformer's FFN (a group rooted at a linear over tokens) is kept on a
# coarser grid: its MatMuls run with few rows, where ORT's kernels favour wide aligned blocks.
TOKEN_LINEAR_MULTIPLE = 32


class PruneChannels(Technique):
    kind = "prune"
    order = 30
    position = 10
    value_type = float
    neutral = 0.0
    option = "prune_ratios"
    default_option = DEFAULT_RATIOS
    ordered = True
    in_every_candidate_json = True

    def read_option(self, value):
        ratios = tuple(value)
        if not ratios or 0.0 not in ratios or any(not 0.0 <= r < 1.0 for r in ratios):
            raise ValueError(f"prune_ratios must include 0.0 and lie in [0, 1), got prune_ratios={ratios}")
        return ratios

    def variables(self, analysis, options) -> list[Variable]:
        ratios = tuple(sorted(options.prune_ratios))
        if len(ratios) < 2:
            return []
        return [Variable(self.kind, g.id, ratios) for g in analysis.prunable_groups
                if g.channels > group_multiple(analysis, g.id, options.channel_multiple)]

    def apply(self, model, candidate, context) -> None:
        apply_pruning(model, candidate, context)

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        removed = removed_channels(analysis, candidate, shapes)
        if not removed:
            return
        touched = {name for name, _ in removed}
        for name, shape in shapes.layers.items():
            if name not in touched:
                continue
            unit = shapes.units[name]
            out_ch = unit.out_channels - removed.get((name, "out"), 0)
            if unit.depthwise:
                in_ch, groups = out_ch, out_ch
            else:
                in_ch, groups = unit.in_channels - removed.get((name, "in"), 0), unit.groups
            if (in_ch, out_ch, groups) != (shape.in_channels, shape.out_channels, shape.groups):
                shapes.layers[name] = shape.replace(in_channels=in_ch, out_channels=out_ch, groups=groups)
        for name in shapes.norm_channels:
            shapes.norm_channels[name] -= removed.get((name, "out"), 0)

    def mac_share(self, analysis, unit: str) -> float:
        macs = {u.name: u.macs for u in analysis.layers}
        return layer_mac_share(analysis, sum(macs.get(m.module, 0) for m in analysis.group(unit).members))

    def repair_moves(self, var, value, share):
        deeper = [c for c in sorted(var.choices) if c > value + 1e-9]
        if deeper:  # one notch more, its damage the notch times the MAC share it cuts
            yield deeper[0], (deeper[0] - value) * share

    def summary(self, values: dict) -> str | None:
        prune = [float(v) for v in values.values() if float(v) > 0]
        if not prune:
            return None
        return f"{len(prune)} group{'' if len(prune) == 1 else 's'} pruned (mean {100 * sum(prune) / len(prune):.0f}%)"


def removed_channels(analysis, candidate, shapes: ModelShapes) -> dict[tuple[str, str], int]:
    """(module, "out"/"in") -> channels or features the Candidate's pruning removes there."""
    removed: dict[tuple[str, str], int] = {}
    for group in analysis.prunable_groups:
        ratio = candidate.prune.get(group.id, 0.0)
        if ratio <= 0:
            continue
        root = shapes.units.get(group.id)
        base = group_channels(analysis, group.id, root.out_channels if root is not None else None)
        cut = base - keep_channels(base, ratio, group_multiple(analysis, group.id, candidate.channel_multiple))
        for m in group.members:
            key = (m.module, m.direction)
            removed[key] = removed.get(key, 0) + m.tied * cut // group.channels
    return removed


def apply_pruning(model: nn.Module, candidate, context) -> None:
    """Prune each group to ``keep_channels(n, ratio, multiple)`` channels, in place.

    Groups are traced again on ``model`` because NAS may have removed members; each group is
    still named by its first surviving output layer, which is the original group's id or one of
    its members. Channel importance is the group's L2 weight magnitude: deterministic, so the same
    Candidate always keeps the same channels.
    """
    wanted = {g: r for g, r in candidate.prune.items() if r > 0 and any(
        find_submodule(model, m.module) is not None for m in context.analysis.group(g).members
        if m.direction == "out")}
    if not wanted:  # nothing to cut: no trace (a model whose every block is skipped may not trace)
        return
    owner = {m.module: g.id for g in context.analysis.prunable_groups for m in g.members if m.direction == "out"}
    graph = build_dependency_graph(model, context.example_input)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    ignored = [model.get_submodule(context.analysis.output_layer)] if context.analysis.output_layer else []
    names = {m: n for n, m in model.named_modules()}
    modules = {n: m for m, n in names.items()}  # Torch-Pruning cuts modules in place: built once
    # Torch-Pruning yields each group freshly traced after the previous cut (index maps through
    # concatenations stay right), so score and cut one group at a time, as its own pruners do.
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        # Named by any member the analysis knew as an output: a cell's new depthwise layer may root it.
        outputs = [names.get(item.dep.target.module) for item in group if graph.is_out_channel_pruning_fn(item.dep.handler)]
        group_id = next((owner[n] for n in outputs if n in owner), None)
        if group_id not in wanted:
            continue
        channels = len(group[0].idxs)
        root = modules.get(group_id)
        base = group_channels(context.analysis, group_id, root.out_channels if isinstance(root, nn.Conv2d) else None)
        kept = keep_channels(base, wanted[group_id], group_multiple(context.analysis, group_id, candidate.channel_multiple))
        if kept < channels:
            order = torch.argsort(importance(group), stable=True)
            group.prune(idxs=sorted(order[: channels - kept].tolist()))


def group_multiple(analysis, group_id: str, multiple: int) -> int:
    """The multiple a group's kept channels are rounded to: ``multiple``, or
    ``TOKEN_LINEAR_MULTIPLE`` for a group rooted at a linear over tokens (a transformer's FFN)."""
    root = next((u for u in analysis.layers if u.name == group_id), None)  # a cell's new layer may root it
    over_tokens = root is not None and root.kind == "linear" and root.positions > 1
    return max(multiple, TOKEN_LINEAR_MULTIPLE) if over_tokens else multiple


def group_channels(analysis, group_id: str, root_channels: int | None) -> int:
    """How many channels a group has once a cell narrowed it: its root layer's output channels
    now (None: the root is gone, or not a conv), scaled to the group's own count; a pruning ratio
    cuts that many, not the original's."""
    group, root = analysis.group(group_id), analysis.layer(group_id)
    if root_channels is None or root.kind != "conv" or root_channels == root.out_channels:
        return group.channels
    return group.channels * root_channels // root.out_channels


register(PruneChannels())
