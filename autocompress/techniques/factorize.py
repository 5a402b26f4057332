"""Low-rank factorization: a layer becomes two thinner ones, initialised from a truncated SVD."""

from __future__ import annotations

import torch
from torch import nn

from .._modules import set_submodule
from ..space import Candidate, rank_for

__all__ = ["LowRank", "apply_factorization", "factorize", "full_rank"]


class LowRank(nn.Sequential):
    """``reduce`` (to ``rank`` channels) then ``expand`` (1x1 conv or linear back to the outputs)."""

    def __init__(self, reduce: nn.Module, expand: nn.Module) -> None:
        super().__init__(reduce, expand)

    @property
    def rank(self) -> int:
        first = self[0]
        return first.out_channels if isinstance(first, nn.Conv2d) else first.out_features


def full_rank(layer: nn.Module) -> int:
    if isinstance(layer, nn.Conv2d):
        return min(layer.out_channels, layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1])
    return min(layer.out_features, layer.in_features)


def apply_factorization(model: nn.Module, candidate: Candidate, context) -> None:
    for name, ratio in sorted(candidate.rank.items()):
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            continue  # removed with a skipped block
        rank = rank_for(ratio, full_rank(layer))
        if rank is not None:
            set_submodule(model, name, factorize(layer, rank))


def factorize(layer: nn.Module, rank: int) -> LowRank:
    """W (out x fan_in) ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T); exact when ``rank`` is the full rank."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError(f"grouped convolutions cannot be factorized ({layer.groups=})")
    if not 1 <= rank <= full_rank(layer):
        raise ValueError(f"rank must lie in [1, {full_rank(layer)}], got {rank=}")
    weight = layer.weight.detach()
    matrix = weight.reshape(weight.shape[0], -1).double()  # float64: full rank must reproduce the layer
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first = (vh[:rank] * root[:, None]).to(weight.dtype)
    second = (u[:, :rank] * root[None, :]).to(weight.dtype)
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        reduce = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                           bias=False, padding_mode=layer.padding_mode)
        reduce.weight = nn.Parameter(first.reshape(rank, *weight.shape[1:]).contiguous())
        expand = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias)
        expand.weight = nn.Parameter(second.reshape(layer.out_channels, rank, 1, 1).contiguous())
    else:
        reduce = nn.Linear(layer.in_features, rank, bias=False)
        reduce.weight = nn.Parameter(first.contiguous())
        expand = nn.Linear(rank, layer.out_features, bias=has_bias)
        expand.weight = nn.Parameter(second.contiguous())
    if has_bias:
        expand.bias = nn.Parameter(layer.bias.detach().clone())
    return LowRank(reduce, expand)
