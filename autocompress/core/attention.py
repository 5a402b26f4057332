"""Attention as separate layers, so that whole heads can be cut.

``nn.MultiheadAttention`` applies its query, key and value projections functionally from one packed
weight, so no technique can prune a head, quantize a projection or factorize it. ``SplitAttention``
computes the same function with four ``nn.Linear`` layers (q, k, v, out) and the attention between
them written out (MatMul, Softmax, MatMul), which is also the graph ONNX Runtime runs.
``core.library_attention`` rewrites PyTorch's, timm's and Hugging Face's attention in this form,
which every analysis and every applied Candidate sees.

Heads are ranked once per set of weights by what each contributes to the output projection on the
example input (``head_order``): cutting heads keeps the ones that move the output most, and the
same Candidate always keeps the same heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .modules import forward_with_hooks

__all__ = ["HEAD_PROJECTIONS", "OUTPUT_PROJECTION", "SplitAttention", "head_order", "keep_heads",
           "query_and_key_tokens"]

HEAD_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # a head's rows of these go with it...
OUTPUT_PROJECTION = "out_proj"  # ...and its columns of this one


def query_and_key_tokens(arg_shapes, batch_first: bool) -> tuple[int, int]:
    """Queries and keys of one call of an attention, from the shapes of its tensor arguments
    (query, key, ...; a self-attention called as ``attn(x)`` attends over its own tokens)."""
    def tokens(shape) -> int:
        return shape[0] if len(shape) == 2 or not batch_first else shape[1]  # (L, E) unbatched, or (L, N, E)

    queries = tokens(arg_shapes[0])
    return queries, tokens(arg_shapes[1]) if len(arg_shapes) > 1 else queries


class SplitAttention(nn.Module):
    """Multi-head attention with separate q, k, v and output ``nn.Linear`` layers; called as
    ``nn.MultiheadAttention`` is, and returns what it returns. ``heads_kept`` lists which of the
    original heads remain (a per-head attention mask of the original's shape is cut to them)."""

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None,
                 head_dim: int | None = None, out_dim: int | None = None, bias: bool = True, out_bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if head_dim is None and embed_dim % num_heads:
            raise ValueError(f"embed_dim must be a multiple of num_heads, got {embed_dim=} {num_heads=}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = head_dim or embed_dim // num_heads
        self.batch_first, self.dropout = batch_first, dropout
        self.heads_kept = tuple(range(num_heads))
        width = num_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, width, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, width, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, width, bias=bias)
        self.out_proj = nn.Linear(width, out_dim or embed_dim, bias=out_bias)
        # nn.TransformerEncoder(Layer) read these before choosing their fused kernel: with them it
        # takes the module path, which calls this module (the fused kernel reads packed weights).
        self._qkv_same_embed_dim = False
        self.in_proj_weight = None
        self.in_proj_bias = None

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> "SplitAttention":
        """The same function as ``mha``, with its weights copied into four layers."""
        e = mha.embed_dim
        split = cls(e, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=mha.in_proj_bias is not None,
                    out_bias=mha.out_proj.bias is not None, batch_first=mha.batch_first, dropout=mha.dropout)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().split(e)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().split(e) if mha.in_proj_bias is not None else (None,) * 3
        split._copy_projections(weights, biases, mha.out_proj)
        return split.to(mha.out_proj.weight.device).train(mha.training)

    def _copy_projections(self, weights, biases, out: nn.Linear) -> None:
        with torch.no_grad():
            for layer, w, b in zip((self.q_proj, self.k_proj, self.v_proj), weights, biases):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            self.out_proj.weight.copy_(out.weight)
            if out.bias is not None:
                self.out_proj.bias.copy_(out.bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        batch_dim = 0 if self.batch_first else 1
        if unbatched:
            query, key, value = query.unsqueeze(batch_dim), key.unsqueeze(batch_dim), value.unsqueeze(batch_dim)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        heads = len(self.heads_kept)
        q = self.q_proj(query).reshape(n, length, heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).reshape(n, source, heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).reshape(n, source, heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-2, -1))
        mask = self._additive_mask(attn_mask, key_padding_mask, is_causal, n, length, source, scores)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(n, length, heads * self.head_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(batch_dim)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if unbatched else weights

    def _additive_mask(self, attn_mask, key_padding_mask, is_causal, n, length, source, scores):
        """The masks ``nn.MultiheadAttention`` takes, as one additive mask broadcastable to the
        ``scores`` (n, heads, length, source); None when there is none."""
        dtype = scores.dtype
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=scores.device).triu(1)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # (n * original heads, length, source): keep the rows of the heads kept
                mask = mask.reshape(n, -1, length, source)[:, list(self.heads_kept)]
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).reshape(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def head_order(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """For each ``SplitAttention`` of ``model``: its heads, most important first. A head's
    importance is the size of what it adds to the output projection's result on the example
    input (the L2 norm of its slice of the projection applied to its slice of the input)."""
    inputs: dict[str, torch.Tensor] = {}
    attentions = {name: m for name, m in model.named_modules() if isinstance(m, SplitAttention)}
    if not attentions:
        return {}

    def hook(name):
        def record(module, args):
            inputs[name] = args[0].detach()
        return record

    handles = [m.out_proj.register_forward_pre_hook(hook(name)) for name, m in attentions.items()]
    forward_with_hooks(model.eval(), example_input, handles)
    orders = {}
    for name, module in attentions.items():
        if name not in inputs:  # never called: the order of its heads
            orders[name] = tuple(range(module.num_heads))
            continue
        d, x, w = module.head_dim, inputs[name], module.out_proj.weight.detach()
        scores = [torch.linalg.vector_norm(x[..., h * d:(h + 1) * d] @ w[:, h * d:(h + 1) * d].T).item()
                  for h in range(len(module.heads_kept))]
        ranked = sorted(range(len(scores)), key=lambda h: -scores[h])  # stable: ties keep head order
        orders[name] = tuple(ranked)
    return orders


def keep_heads(module: SplitAttention, heads: list[int]) -> None:
    """Cut ``module`` to the given heads (indices among those it has now), in place."""
    heads = sorted(heads)
    if not heads:
        raise ValueError("keep at least one head; dropping every head is skipping the block")
    d = module.head_dim
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
    for name in HEAD_PROJECTIONS:
        setattr(module, name, _rows(getattr(module, name), rows))
    setattr(module, OUTPUT_PROJECTION, _columns(getattr(module, OUTPUT_PROJECTION), rows))
    module.heads_kept = tuple(module.heads_kept[h] for h in heads)
    module.num_heads = len(heads)


def _rows(layer: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    cut = nn.Linear(layer.in_features, len(rows), bias=layer.bias is not None).to(layer.weight.device)
    with torch.no_grad():
        cut.weight.copy_(layer.weight[rows])
        if layer.bias is not None:
            cut.bias.copy_(layer.bias[rows])
    return cut


def _columns(layer: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    cut = nn.Linear(len(columns), layer.out_features, bias=layer.bias is not None).to(layer.weight.device)
    with torch.no_grad():
        cut.weight.copy_(layer.weight[:, columns])
        if layer.bias is not None:
            cut.bias.copy_(layer.bias)
    return cut
