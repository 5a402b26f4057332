"""Low-rank factorization: a layer becomes two thinner ones, initialised from a truncated SVD."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.modules import find_submodule, set_submodule
from ..core.technique import ModelShapes, Technique, Variable, register

__all__ = ["Factorize", "LowRank", "factorize", "full_rank", "rank_for"]

DEFAULT_RATIOS = (1.0, 0.75, 0.5, 0.25)


class Factorize(Technique):
    """``rank/<layer>``: the kept rank as a share of the full rank; 1.0 leaves the layer whole."""

    kind = "rank"
    order = 40
    position = 30
    value_type = float
    neutral = 1.0
    option = "rank_ratios"
    default_option = DEFAULT_RATIOS
    ordered = True
    in_every_candidate_json = True

    def read_option(self, value):
        ratios = tuple(value)
        if not ratios or 1.0 not in ratios or any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"rank_ratios must include 1.0 and lie in (0, 1], got rank_ratios={ratios}")
        return ratios

    def variables(self, analysis, options) -> list[Variable]:
        out = []
        for unit in analysis.layers:
            useful = _params_saving_ratios(unit, options.rank_ratios) if unit.factorizable else ()
            if len(useful) > 1:
                out.append(Variable(self.kind, unit.name, useful))
        return out

    def apply(self, model, candidate, context) -> None:
        for name, ratio in sorted(candidate.rank.items()):
            layer = find_submodule(model, name)
            if layer is None:
                continue  # removed with a skipped block
            rank = rank_for(ratio, full_rank(layer))
            if rank is not None:
                set_submodule(model, name, factorize(layer, rank))

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        # Only ratios below 1.0 factorize; no earlier technique sets a rank, so the rest stay whole.
        for name, ratio in candidate.rank.items():
            shape = shapes.layers.get(name)
            if ratio < 1.0 and shape is not None and shapes.units[name].factorizable:
                rank = rank_for(ratio, min(shape.out_channels, shape.fan_in))
                if rank != shape.rank:
                    shapes.layers[name] = shape.replace(rank=rank)

    def repair_moves(self, var, value, share):
        if value < 1.0:  # a factorized layer runs as two kernels: undoing it often saves time, always accuracy
            yield 1.0, 0.0

    def summary(self, values: dict) -> str | None:
        factorized = sum(1 for v in values.values() if float(v) < 1.0)
        return f"{factorized} layer{'' if factorized == 1 else 's'} low-rank" if factorized else None


def rank_for(ratio: float, full_rank: int) -> int | None:
    """The rank a ratio asks for, or None when the layer stays whole (ratio 1.0)."""
    if ratio >= 1.0:
        return None
    return max(1, int(math.floor(ratio * full_rank + 0.5)))


def _params_saving_ratios(unit, ratios: tuple[float, ...]) -> tuple[float, ...]:
    """Rank ratios that make the two factors smaller than the layer (1.0 always stays)."""
    k_h, k_w = unit.kernel_size
    fan_in = unit.in_channels * k_h * k_w
    full = min(unit.out_channels, fan_in)
    kept = [r for r in sorted(set(ratios), reverse=True)
            if r >= 1.0 or rank_for(r, full) * (fan_in + unit.out_channels) < unit.out_channels * fan_in]
    return tuple(kept)


class LowRank(nn.Sequential):
    """``reduce`` (to ``rank`` channels) then ``expand`` (1x1 conv or linear back to the outputs)."""

    def __init__(self, reduce: nn.Module, expand: nn.Module) -> None:
        super().__init__(reduce, expand)

    @property
    def rank(self) -> int:
        first = self[0]
        return first.out_channels if isinstance(first, nn.Conv2d) else first.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The weight the two layers apply together, shaped as the original layer's: for models
        that read their layers' weights (Hugging Face's ViT reads its patch embedding's dtype)."""
        reduce, expand = self[0].weight, self[1].weight
        return torch.einsum("or,r...->o...", expand.reshape(expand.shape[0], -1), reduce)


def full_rank(layer: nn.Module) -> int:
    if isinstance(layer, nn.Conv2d):
        return min(layer.out_channels, layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1])
    return min(layer.out_features, layer.in_features)


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


register(Factorize())
