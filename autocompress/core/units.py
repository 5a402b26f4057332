"""The units an analysis lists (layers, norms, attention, fixed parameters), and how they are read
off one traced forward pass. Shared by the model's analysis and by each NAS cell's, so a cell's
layers are described exactly as the model's own are."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import SplitAttention, query_and_key_tokens
from .library_attention import unsplittable_reason
from .modules import forward_with_hooks, is_inside

__all__ = ["AttentionUnit", "FixedParams", "LayerUnit", "NormUnit", "collect_units", "trace_shapes"]


@dataclass(frozen=True)
class LayerUnit:
    """A Conv2d or Linear layer: the unit of bit widths, ranks and kernel choices."""

    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]  # (1, 1) for linear layers
    stride: int
    padding: int
    groups: int
    has_bias: bool
    positions: int  # output positions per sample: H*W for a conv, tokens for a linear
    factorizable: bool
    note: str = ""
    in_hw: tuple[int, int] = (1, 1)  # input height and width of a conv; (tokens, 1) for a linear
    out_hw: tuple[int, int] = (1, 1)  # output height and width; (tokens, 1) for a linear

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def params(self) -> int:
        k_h, k_w = self.kernel_size
        return self.out_channels * (self.in_channels // self.groups) * k_h * k_w + self.out_channels * self.has_bias

    @property
    def macs(self) -> int:
        k_h, k_w = self.kernel_size
        return self.out_channels * (self.in_channels // self.groups) * k_h * k_w * self.positions


@dataclass(frozen=True)
class NormUnit:
    name: str
    channels: int
    params_per_channel: int  # 2 for affine BatchNorm/LayerNorm


@dataclass(frozen=True)
class AttentionUnit:
    """Multi-head attention. Split into layers (``core.attention.SplitAttention``, ``split``): its
    q, k, v and output projections are layers of their own, and this unit is the attention between
    them (scores, softmax, weighted sum), whose heads the heads technique cuts. Left whole (an
    ``nn.MultiheadAttention`` that cannot be rewritten): projections included, no technique edits it."""

    name: str
    embed_dim: int
    tokens: int
    params: int
    heads: int = 1
    head_dim: int = 0
    source_tokens: int = 0  # keys each query attends over (its tokens, in self-attention)
    split: bool = False
    head_order: tuple[int, ...] = ()  # most important first (``core.attention.head_order``)
    note: str = ""

    def macs_with(self, heads: int) -> int:
        """Scores and weighted sum with ``heads`` heads kept (split attention)."""
        return 2 * self.tokens * self.source_tokens * heads * self.head_dim

    @property
    def macs(self) -> int:
        if self.split:
            return self.macs_with(self.heads)
        # q/k/v projections, scores, weighted sum, output projection
        e, t = self.embed_dim, self.tokens
        return 3 * e * e * t + 2 * t * t * e + e * e * t


@dataclass(frozen=True)
class FixedParams:
    """Parameters no technique changes (position embeddings, attention, unsupported layers)."""

    name: str
    params: int
    note: str


def trace_shapes(model: nn.Module, example_input: torch.Tensor) -> tuple[dict, str | None]:
    """Input and output shapes of every module in one forward pass, plus which layer made the output."""
    records: dict[str, dict] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args, output):
            if name in records:  # a module called twice (shared weights) keeps its first shapes
                return
            first_in = args[0] if args and isinstance(args[0], torch.Tensor) else None
            records[name] = {
                "in": tuple(first_in.shape) if first_in is not None else None,
                "out": tuple(output.shape) if isinstance(output, torch.Tensor) else None,
                "n_tensor_args": sum(isinstance(a, torch.Tensor) for a in args),
                "arg_shapes": tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)),
                "batch": len(example_input),
            }
            if isinstance(output, torch.Tensor):
                outputs[name] = output
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    result = forward_with_hooks(model, example_input, handles)
    output_layer = next(
        (n for n, t in outputs.items() if t is result and isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))), None
    )
    return records, output_layer


def collect_units(model: nn.Module, shapes: dict):
    layers, norms, attention, fixed = [], [], [], []
    attention_names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, module in model.named_modules():
        if any(is_inside(name, a) and name != a for a in attention_names):
            continue  # counted with their attention module
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rec = shapes.get(name)
        if isinstance(module, SplitAttention):
            attention.append(_split_unit(name, module, rec))
        elif isinstance(module, nn.MultiheadAttention):
            tokens = query_and_key_tokens([rec["in"]], module.batch_first)[0] if rec and rec["in"] else 0
            attention.append(AttentionUnit(name, module.embed_dim, tokens, sum(p.numel() for p in module.parameters()),
                                           module.num_heads, module.head_dim, tokens,
                                           note=f"left whole: {unsplittable_reason(module) or 'not rewritten'}"))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            if rec is None or rec["out"] is None:
                fixed.append(FixedParams(name, own, "never called as a module in forward; left as it is"))
            else:
                layers.append(_layer_unit(name, module, rec["in"], rec["out"], rec.get("batch", 1)))
        elif isinstance(module, nn.BatchNorm2d) and own:
            norms.append(NormUnit(name, module.num_features, own // module.num_features))
        elif isinstance(module, nn.LayerNorm) and own and len(module.normalized_shape) == 1:
            norms.append(NormUnit(name, module.normalized_shape[0], own // module.normalized_shape[0]))
        elif own:
            what = "the model's own parameters" if not name else f"{type(module).__name__} parameters"
            fixed.append(FixedParams(name or "<root>", own, f"{what}: no technique changes them"))
    return layers, norms, attention, fixed


def _split_unit(name: str, module: SplitAttention, rec: dict | None) -> AttentionUnit:
    shapes = rec["arg_shapes"] if rec else ()
    tokens, source = query_and_key_tokens(shapes, module.batch_first) if shapes else (0, 0)
    return AttentionUnit(name, module.embed_dim, tokens, 0, module.num_heads, module.head_dim, source, split=True)


def _layer_unit(name: str, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                batch: int = 1) -> LayerUnit:
    if isinstance(module, nn.Conv2d):
        grouped = module.groups > 1
        note = f"grouped convolution (groups={module.groups}): no low-rank factorization" if grouped and not (
            module.groups == module.in_channels == module.out_channels) else ""
        pad = module.padding[0] if isinstance(module.padding, tuple) else -1  # -1: 'same'/'valid' strings
        return LayerUnit(
            name, "conv", module.in_channels, module.out_channels, tuple(module.kernel_size), module.stride[0], pad,
            module.groups, module.bias is not None, out_shape[-1] * out_shape[-2], factorizable=not grouped, note=note,
            in_hw=(in_shape[-2], in_shape[-1]), out_hw=(out_shape[-2], out_shape[-1]),
        )
    rows = 1  # every dimension but the features: batch and tokens, in whichever order they come
    for d in out_shape[:-1]:
        rows *= d
    positions = max(1, rows // batch)
    return LayerUnit(name, "linear", module.in_features, module.out_features, (1, 1), 1, 0, 1, module.bias is not None,
                     positions, factorizable=True, in_hw=(positions, 1), out_hw=(positions, 1))
