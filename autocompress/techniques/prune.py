"""Structured channel pruning: cut whole channels of each coupled group, the weakest first."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..channel_groups import build_dependency_graph, keep_channels
from ..space import Candidate

__all__ = ["apply_pruning"]


def apply_pruning(model: nn.Module, candidate: Candidate, context) -> None:
    """Prune each group to ``keep_channels(n, ratio, multiple)`` channels, in place.

    Groups are traced again on ``model`` because NAS may have removed members; each group is
    still named by its first surviving output layer, which is the original group's id or one of
    its members. Channel importance is the group's L2 weight magnitude: deterministic, so the same
    Candidate always keeps the same channels.
    """
    wanted = {g: r for g, r in candidate.prune.items() if r > 0}
    if not wanted:
        return
    owner = {m.module: g.id for g in context.analysis.prunable_groups for m in g.members if m.direction == "out"}
    graph = build_dependency_graph(model, context.example_input)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    ignored = [model.get_submodule(context.analysis.output_layer)] if context.analysis.output_layer else []
    names = {m: n for n, m in model.named_modules()}
    # Torch-Pruning yields each group freshly traced after the previous cut (index maps through
    # concatenations stay right), so score and cut one group at a time, as its own pruners do.
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        group_id = owner.get(names.get(group[0].dep.target.module))
        if group_id not in wanted:
            continue
        channels = len(group[0].idxs)
        kept = keep_channels(context.analysis.group(group_id).channels, wanted[group_id], candidate.channel_multiple)
        if kept < channels:
            order = torch.argsort(importance(group), stable=True)
            group.prune(idxs=sorted(order[: channels - kept].tolist()))
