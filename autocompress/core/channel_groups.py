"""Channel groups: layers whose channels must be pruned together, found with Torch-Pruning.

Torch-Pruning traces the autograd graph and couples channels across residual adds, depthwise
convs, concatenations and squeeze-excite multiplies. We keep only what later steps need (member
names and how many channels or features of each member are tied to the group) and decide, per
group, whether it is safe to prune, saying why not when it is not.
"""

from __future__ import annotations

import contextvars
import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .attention import HEAD_PROJECTIONS, SplitAttention
from .modules import PRUNABLE_MEMBER_TYPES

__all__ = ["GroupMember", "ChannelGroup", "find_channel_groups", "keep_channels", "build_dependency_graph", "tracing_channels"]


# Autograd ops that reorder channels: pruning through them would scramble which channel is which.
_REORDERING_OPS = ("TransposeBackward", "PermuteBackward", "ChannelShuffle", "PixelShuffle", "PixelUnshuffle")


@dataclass(frozen=True)
class GroupMember:
    module: str
    direction: str  # "out" (output channels / features) or "in"
    tied: int  # how many channels or features of that dimension belong to the group


@dataclass(frozen=True)
class ChannelGroup:
    id: str  # the first member layer (in module order) whose output channels the group cuts
    channels: int
    members: tuple[GroupMember, ...]
    prunable: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "id": self.id, "channels": self.channels, "prunable": self.prunable, "note": self.note,
            "members": [f"{m.module}:{m.direction}" for m in self.members],
        }


def keep_channels(channels: int, ratio: float, multiple: int = 1) -> int:
    """How many of ``channels`` survive pruning at ``ratio``: the rule every part of autocompress uses.

    The kept count is rounded to the nearest multiple of ``multiple`` (ties round up) because ORT
    kernels run unaligned channel counts slowly, and never drops below one multiple (or below 1).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must lie in [0, 1), got {ratio=}")
    if multiple < 1:
        raise ValueError(f"channel multiple must be >= 1, got {multiple=}")
    if ratio == 0.0 or channels <= multiple:
        return channels
    wanted = channels * (1.0 - ratio)
    kept = int(math.floor(wanted / multiple + 0.5)) * multiple
    return min(channels, max(multiple, kept))


_TRACING_CHANNELS = contextvars.ContextVar("tracing_channels", default=False)


def tracing_channels() -> bool:
    """True while Torch-Pruning traces a forward pass: a module whose channel coupling depends on
    its architecture choices (``core.nb201``'s cell) may tie its channels for the trace alone."""
    return _TRACING_CHANNELS.get()


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    token = _TRACING_CHANNELS.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about every unwrapped parameter
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        _TRACING_CHANNELS.reset(token)


def find_channel_groups(model: nn.Module, example_input: torch.Tensor, *, output_layer: str | None
                        ) -> tuple[list[ChannelGroup], list[str]]:
    """All channel groups of ``model`` with a verdict on each; notes explain what was left out."""
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    try:
        graph = build_dependency_graph(model, example_input)
    except Exception as exc:  # tracing failures must not stop bit widths and ranks
        return [], [f"channel pruning unavailable: Torch-Pruning could not trace the channel dependencies "
                    f"({type(exc).__name__}: {exc}), as with channel shuffle; bit widths, ranks and NAS still apply"]
    ignored = [model.get_submodule(output_layer)] if output_layer else []
    head_projections = {f"{name}.{p}": name for m, name in names.items() if isinstance(m, SplitAttention)
                        for p in HEAD_PROJECTIONS}
    groups = []
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        members, problems = _members(tp_group, graph, names)
        out_layers = [m.module for m in members if m.direction == "out" and isinstance(
            model.get_submodule(m.module), (nn.Conv2d, nn.Linear))]
        if not out_layers:
            continue
        group_id = min(out_layers, key=order.__getitem__)
        channels = len(tp_group[0][1])
        problems += _shape_problems(model, members, channels)
        attention = next((head_projections[m] for m in out_layers if m in head_projections), None)
        if attention is not None:  # Torch-Pruning would cut single features of a head
            problems = [f"attention projections of {attention}: cut by whole heads (heads/{attention})"]
        note = "; ".join(dict.fromkeys(problems))
        groups.append(ChannelGroup(group_id, channels, tuple(members), prunable=not problems, note=note))
    groups.sort(key=lambda g: order[g.id])
    groups = _verify_by_trial(model, example_input, groups)
    notes = [f"channel group {g.id} ({g.channels} channels) not pruned: {g.note}" for g in groups if not g.prunable]
    if output_layer:
        notes.append(f"{output_layer}: output channels are the model's outputs; never pruned")
    return groups, notes


def _members(tp_group, graph: tp.DependencyGraph, names: dict) -> tuple[list[GroupMember], list[str]]:
    members: dict[tuple[str, str], int] = {}
    problems = []
    for dep, idxs in tp_group:
        target = dep.target.module
        direction = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
        if isinstance(target, nn.Module) and target in names:
            if not isinstance(target, PRUNABLE_MEMBER_TYPES):
                problems.append(f"coupled with {names[target]} ({type(target).__name__}), whose channels cannot be cut "
                                + ("(attention heads)" if isinstance(target, nn.MultiheadAttention) else "safely"))
                continue
            key = (names[target], direction)
            members[key] = max(members.get(key, 0), len(idxs))
        elif isinstance(target, nn.Parameter):
            problems.append("coupled with a bare nn.Parameter (such as a position embedding)")
        else:
            op = dep.target.name
            if any(r in op for r in _REORDERING_OPS):
                problems.append(f"channels pass through a reordering op ({op.split('(')[-1].rstrip(')')}), "
                                "as in channel shuffle")
    return [GroupMember(m, d, t) for (m, d), t in members.items()], problems


def _shape_problems(model: nn.Module, members: list[GroupMember], channels: int) -> list[str]:
    problems = []
    for m in members:
        module = model.get_submodule(m.module)
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not (
                module.groups == module.in_channels == module.out_channels):
            problems.append(f"{m.module} is a grouped convolution (groups={module.groups}); cutting channels "
                            "would break its blocks")
        if m.tied % channels:
            problems.append(f"{m.module} ties {m.tied} features to {channels} channels unevenly")
    return problems


def _verify_by_trial(model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """Cut every prunable group on a copy and run it; groups that break the model are left out.

    Tracing can miss couplings made by Python code (a reshape to a fixed size, say). One trial of
    all groups at once is cheap; only when it fails do we find the culprits one at a time.
    """
    candidates = [g for g in groups if g.prunable]
    if not candidates or _trial_prune(model, example_input, candidates) is None:
        return groups
    failures = {}
    for g in candidates:
        error = _trial_prune(model, example_input, [g])
        if error is not None:
            failures[g.id] = error
    return [ChannelGroup(g.id, g.channels, g.members, False, f"pruning it breaks the forward pass ({failures[g.id]})")
            if g.id in failures else g for g in groups]


def _trial_prune(model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup]) -> str | None:
    trial = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            expected = model(example_input).shape
        graph = build_dependency_graph(trial, example_input)
        for g in groups:
            layer = trial.get_submodule(g.id)
            cut = list(range(max(1, g.channels // 2)))
            graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, cut).prune()
        with torch.no_grad():
            got = trial(example_input).shape
        return None if got == expected else f"output shape changed from {tuple(expected)} to {tuple(got)}"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
