"""NAS cells: what a block of a model may become, built from the block itself.

A cell inherits the block's weights wherever its shape allows, as Once-for-All's elastic widths
and kernels do: a narrower expansion keeps the block's strongest hidden channels (the L2 group
magnitude, as channel pruning ranks them), a smaller kernel keeps its centre taps, a larger one is
the old kernel zero-padded (the same function), a removed squeeze-excitation gate is gone. A cell
with new structure, the depthwise-separable replacement of a k x k conv, starts from the best such
approximation of the conv (a rank-1 SVD per input channel). Cells that do not reproduce their block
exactly are then refined by blockwise distillation (``train.blockwise``).

Every layer a cell keeps keeps its name, so the pruning groups, bit widths and ranks decided for
the block's layers apply to the cell's. The new depthwise convs are named ``<conv>_dw`` and
follow the decisions of the 1 x 1 conv they feed.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn
from torchvision.ops import SqueezeExcitation

from .channel_groups import build_dependency_graph, keep_channels
from .choice_points import SkippedBlock
from .nb201 import Nb201Edge, build_edge_cell

__all__ = ["CellBuildError", "SeparableBlock", "build_cell", "divisible", "resize_kernel"]

_WIDTH_MULTIPLE = 8  # hidden widths are rounded to this, as ORT's vectorised kernels want


class CellBuildError(ValueError):
    """This cell cannot be built from this block; the message says why (``inspect`` shows it)."""


def build_cell(block: nn.Module, spec, input_shape: tuple[int, ...]) -> nn.Module:
    """A new module standing in for ``block`` (left untouched), as ``spec`` (a ``CellSpec``) says."""
    if isinstance(block, Nb201Edge):
        if spec.op not in block.cell_ops:
            raise CellBuildError(f"this edge's operations are {', '.join(block.ops)}")
        return build_edge_cell(block, spec.op)
    if spec.op == "skip":
        return SkippedBlock()
    if spec.op == "mb":
        return _inverted_residual(block, spec, input_shape)
    if spec.op == "narrow":
        return _narrowed(block, spec.width, input_shape)
    if spec.op == "dwsep":
        return _separable(block, input_shape)
    raise CellBuildError(f"unknown cell op {spec.op!r}")


def divisible(value: float, multiple: int = _WIDTH_MULTIPLE) -> int:
    """``value`` rounded to the nearest multiple (never below one multiple), as MobileNet's widths are."""
    return max(multiple, int(value / multiple + 0.5) * multiple)


def resize_kernel(conv: nn.Conv2d, size: int) -> None:
    """Make a square kernel ``size`` x ``size`` in place, keeping height and width: a smaller one is
    the centre crop, a larger one the old kernel zero-padded (the same function); padding follows."""
    current = conv.kernel_size[0]
    if size == current:
        return
    if (current - size) % 2:
        raise CellBuildError(f"cannot resize a {current}x{current} kernel to {size}x{size} (odd and even)")
    half = abs(current - size) // 2
    pad = conv.padding[0] + (half if size > current else -half) * conv.dilation[0]
    if pad < 0:
        raise CellBuildError(f"kernel {size} needs negative padding for this conv ({conv.padding=})")
    with torch.no_grad():
        if size < current:
            weight = conv.weight[:, :, half:half + size, half:half + size].clone()
        else:
            weight = torch.zeros(*conv.weight.shape[:2], size, size, dtype=conv.weight.dtype)
            weight[:, :, half:half + current, half:half + current] = conv.weight
    conv.weight = nn.Parameter(weight)
    conv.kernel_size = (size, size)
    conv.padding = (pad, pad)


def _probe(input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn((1, *input_shape[1:]), generator=torch.Generator().manual_seed(0))


def _inverted_residual(block: nn.Module, spec, input_shape) -> nn.Module:
    cell = copy.deepcopy(block).eval()
    depthwise = [m for m in cell.modules() if isinstance(m, nn.Conv2d) and m.groups > 1
                 and m.groups == m.in_channels == m.out_channels]
    if len(depthwise) != 1:
        raise CellBuildError(f"an mb cell needs exactly one depthwise conv in the block, found {len(depthwise)}")
    dw = depthwise[0]
    hidden, inputs = dw.in_channels, input_shape[1]
    wanted = divisible(inputs * spec.expand)
    if wanted > hidden:
        raise CellBuildError(f"expansion {spec.expand:g} is wider than the block's own ({hidden / inputs:g}): only "
                             "sub-shapes inherit their weights")
    if wanted < hidden:
        if hidden == inputs:
            raise CellBuildError("the block has no expansion layer to narrow")
        _cut_group(cell, dw, hidden - wanted, input_shape)
    if not spec.se:
        gates = [name for name, m in cell.named_modules() if isinstance(m, SqueezeExcitation)]
        if not gates:
            raise CellBuildError("the block has no squeeze-excitation gate to remove")
        for name in gates:
            _set_child(cell, name, nn.Identity())
    if (spec.kernel - 1) // 2 >= max(input_shape[-2:]) and spec.kernel != dw.kernel_size[0]:
        raise CellBuildError(f"kernel {spec.kernel} on a {input_shape[-2]}x{input_shape[-1]} map reads only padding "
                             "beyond the block's own kernel")
    resize_kernel(dw, spec.kernel)
    return cell


def _narrowed(block: nn.Module, width: float, input_shape) -> nn.Module:
    """Every internal width of the block (a channel group whose cut leaves the block's input and
    output as they were) cut to ``width`` of itself."""
    cell = copy.deepcopy(block).eval()
    roots = [name for name, m in cell.named_modules() if isinstance(m, nn.Conv2d) and not (
        m.groups > 1 and m.groups == m.in_channels == m.out_channels) and _is_internal(cell, name, input_shape)]
    if not roots:
        raise CellBuildError("the block has no internal width to narrow (every channel reaches its input or output)")
    for name in roots:
        conv = cell.get_submodule(name)
        kept = keep_channels(conv.out_channels, 1.0 - width, _WIDTH_MULTIPLE)
        if kept < conv.out_channels:
            _cut_group(cell, conv, conv.out_channels - kept, input_shape)
    return cell


def _is_internal(block: nn.Module, conv_name: str, input_shape) -> bool:
    trial = copy.deepcopy(block).eval()
    x = _probe(input_shape)
    try:
        with torch.no_grad():
            expected = trial(x).shape
        conv = trial.get_submodule(conv_name)
        if conv.out_channels < 2:
            return False
        graph = build_dependency_graph(trial, x)
        graph.get_pruning_group(conv, graph.get_pruner_of_module(conv).prune_out_channels, [0]).prune()
        with torch.no_grad():
            return trial(x).shape == expected
    except Exception:  # a cut the block cannot take is not an internal width
        return False


def _cut_group(cell: nn.Module, root: nn.Conv2d, count: int, input_shape) -> None:
    """Remove the ``count`` weakest channels of the group whose output channels ``root`` makes."""
    graph = build_dependency_graph(cell, _probe(input_shape))
    prune_out = graph.get_pruner_of_module(root).prune_out_channels
    if getattr(cell, "shares_leading_channels", False):
        # A supernet's block trained its subnets on its leading channels: the cell keeps those.
        graph.get_pruning_group(root, prune_out, list(range(root.out_channels - count, root.out_channels))).prune()
        return
    group = graph.get_pruning_group(root, prune_out, list(range(root.out_channels)))
    order = torch.argsort(tp.importance.GroupMagnitudeImportance(p=2)(group), stable=True)
    graph.get_pruning_group(root, prune_out, sorted(order[:count].tolist())).prune()


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class SeparableBlock(nn.Module):
    """A residual block ``relu(bn_n(conv_n(...relu(bn_1(conv_1(x)))...)) + shortcut(x))`` whose
    k x k convs run depthwise-separable: ``conv<i>_dw`` (k x k, one filter per channel, the
    stride) then ``conv<i>`` (1 x 1, the conv's name, so the decisions made for it still apply)."""

    def __init__(self, stages: list[tuple[str, nn.Module | None, nn.Conv2d, nn.Module]],
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.stages = [name for name, _, _, _ in stages]
        for name, dw, conv, norm in stages:
            if dw is not None:
                self.add_module(f"{name}_dw", dw)
            self.add_module(name, conv)
            self.add_module(name.replace("conv", "bn"), norm)
        self.downsample = downsample

    def forward(self, x):
        out = x
        for i, name in enumerate(self.stages):
            dw = getattr(self, f"{name}_dw", None)
            out = getattr(self, name.replace("conv", "bn"))(getattr(self, name)(out if dw is None else dw(out)))
            if i < len(self.stages) - 1:
                out = torch.relu(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


def _separable(block: nn.Module, input_shape) -> nn.Module:
    names = [n for n in ("conv1", "conv2", "conv3") if isinstance(getattr(block, n, None), nn.Conv2d)]
    norms = [getattr(block, n.replace("conv", "bn"), None) for n in names]
    layout = "children conv1, bn1, conv2, bn2 (conv3, bn3) and downsample, like torchvision's BasicBlock"
    if len(names) < 2 or not all(isinstance(n, nn.BatchNorm2d) for n in norms):
        raise CellBuildError(f"a dwsep cell needs a block with {layout}")
    downsample = copy.deepcopy(getattr(block, "downsample", None))
    plain = SeparableBlock([(n, None, copy.deepcopy(getattr(block, n)), copy.deepcopy(b)) for n, b in zip(names, norms)],
                           downsample).eval()
    x = _probe(input_shape)
    with torch.no_grad():
        if not torch.allclose(plain(x), block.eval()(x), atol=1e-4, rtol=1e-4):
            raise CellBuildError(f"a dwsep cell needs a block that computes relu(bn(conv(...)) + shortcut) with {layout}")
    stages = []
    for name, norm in zip(names, norms):
        conv = getattr(block, name)
        if conv.groups == 1 and conv.kernel_size[0] > 1 and conv.kernel_size[0] == conv.kernel_size[1]:
            stages.append((name, *_separate(conv), copy.deepcopy(norm)))
        else:
            stages.append((name, None, copy.deepcopy(conv), copy.deepcopy(norm)))
    if all(dw is None for _, dw, _, _ in stages):
        raise CellBuildError("the block has no full k x k conv to make depthwise-separable")
    return SeparableBlock(stages, downsample).eval()


def _separate(conv: nn.Conv2d) -> tuple[nn.Conv2d, nn.Conv2d]:
    """A k x k depthwise conv and a 1 x 1 conv whose product is the best rank-1 approximation of
    ``conv``'s filters for each input channel (the SVD's leading term)."""
    out_ch, in_ch, k, _ = conv.weight.shape
    dw = nn.Conv2d(in_ch, in_ch, k, conv.stride, conv.padding, conv.dilation, groups=in_ch, bias=False)
    pw = nn.Conv2d(in_ch, out_ch, 1, bias=conv.bias is not None)
    with torch.no_grad():
        per_input = conv.weight.detach().double().permute(1, 0, 2, 3).reshape(in_ch, out_ch, k * k)
        u, s, vh = torch.linalg.svd(per_input, full_matrices=False)
        root = s[:, 0].sqrt()
        dw.weight.copy_((vh[:, 0, :] * root[:, None]).reshape(in_ch, 1, k, k).float())
        pw.weight.copy_((u[:, :, 0] * root[:, None]).t().reshape(out_ch, in_ch, 1, 1).float())
        if conv.bias is not None:
            pw.bias.copy_(conv.bias)
    return dw, pw
