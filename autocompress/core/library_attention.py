"""The attention modules of PyTorch, timm and Hugging Face rewritten as ``SplitAttention``, so that
every analysis and every applied Candidate sees separate q, k, v and output layers.

``nn.MultiheadAttention`` applies its projections from one packed weight, timm's ``Attention`` packs
q, k and v in one ``qkv`` layer, and Hugging Face's keep four layers under names of their own
(BERT's output projection even sits in another module, beside the residual add and LayerNorm that
follow it). ``split_attention`` replaces each one it knows by a module computing the same function
with layers named ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``, so a layer name such as
``....attention.q_proj`` means the same thing in every model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .attention import SplitAttention
from .modules import set_submodule

__all__ = ["HFSelfAttention", "HFPostNormAttention", "SelfAttention", "has_attention", "is_hf_attention",
           "is_timm_attention", "split_attention", "split_copy", "unsplittable_reason"]


class SelfAttention(SplitAttention):
    """timm's ``Attention`` (one packed ``qkv`` layer, called as ``attn(x)``) as separate layers:
    called as it is, returns what it returns."""

    def __init__(self, *args, proj_dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, batch_first=True, **kwargs)
        self.proj_drop = nn.Dropout(proj_dropout)

    @classmethod
    def from_timm(cls, attention: nn.Module) -> "SelfAttention":
        qkv, proj = attention.qkv, attention.proj
        width = attention.num_heads * attention.head_dim
        split = cls(qkv.in_features, attention.num_heads, head_dim=attention.head_dim, out_dim=proj.out_features,
                    bias=qkv.bias is not None, out_bias=proj.bias is not None, dropout=attention.attn_drop.p,
                    proj_dropout=attention.proj_drop.p)
        biases = qkv.bias.detach().split(width) if qkv.bias is not None else (None,) * 3
        split._copy_projections(qkv.weight.detach().split(width), biases, proj)
        return split.to(proj.weight.device).train(attention.training)

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # timm's boolean masks say where to attend, as scaled_dot_product_attention's do
        out, _ = super().forward(x, x, x, need_weights=False, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj_drop(out)


class HFSelfAttention(SplitAttention):
    """Hugging Face's ViT, DeiT and DistilBERT self-attention (called as ``attention(hidden_states,
    attention_mask)``, returning the output and no weights)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, batch_first=True, **kwargs)

    @classmethod
    def from_hf(cls, attention: nn.Module):
        parts = _hf_parts(attention)
        q, k, v, o = parts["layers"]
        split = cls(q.in_features, parts["heads"], head_dim=parts["head_dim"], out_dim=o.out_features,
                    bias=q.bias is not None, out_bias=o.bias is not None, dropout=parts["dropout"])
        split._copy_projections((q.weight, k.weight, v.weight), (q.bias, k.bias, v.bias), o)
        split._copy_rest(attention)
        return split.to(o.weight.device).train(attention.training)

    def _copy_rest(self, attention: nn.Module) -> None:
        """What the original computes besides the attention: nothing here."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            attention_mask = ~attention_mask  # Hugging Face's boolean masks say where to attend
        return super().forward(hidden_states, hidden_states, hidden_states, need_weights=False, attn_mask=attention_mask)


class HFPostNormAttention(HFSelfAttention):
    """Hugging Face's ``BertAttention``: the self-attention, then its output projection, dropout,
    the residual add and LayerNorm (which BERT keeps in a second module, ``BertSelfOutput``)."""

    def _copy_rest(self, attention: nn.Module) -> None:
        self.norm = copy.deepcopy(attention.output.LayerNorm)
        self.out_dropout = copy.deepcopy(attention.output.dropout)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        out, _ = super().forward(hidden_states, attention_mask)
        return self.norm(self.out_dropout(out) + hidden_states), None


def _hf_parts(module: nn.Module) -> dict | None:
    """The q, k, v and output layers, head count, head width and dropout of a Hugging Face attention
    known to compute exactly ``SplitAttention``'s function (plus BERT's norm after it); else None."""
    kind = type(module).__name__
    if kind in ("ViTAttention", "DeiTAttention"):
        return {"layers": (module.q_proj, module.k_proj, module.v_proj, module.o_proj), "core": module,
                "heads": module.num_attention_heads, "head_dim": module.head_dim, "dropout": module.attention_dropout}
    if kind == "DistilBertSelfAttention":
        return {"layers": (module.q_lin, module.k_lin, module.v_lin, module.out_lin), "core": module,
                "heads": module.n_heads, "head_dim": module.attention_head_size, "dropout": module.dropout.p}
    if kind == "BertAttention" and not getattr(module, "is_cross_attention", True):
        core = module.self
        return {"layers": (core.query, core.key, core.value, module.output.dense), "core": core,
                "heads": core.num_attention_heads, "head_dim": core.attention_head_size, "dropout": core.dropout.p}
    return None


def is_hf_attention(module: nn.Module) -> bool:
    """Hugging Face's ViT, DeiT, BERT or DistilBERT self-attention (transformers is an optional extra)."""
    if not type(module).__module__.startswith("transformers."):
        return False
    try:
        parts = _hf_parts(module)
    except AttributeError:  # a version of transformers whose attention is laid out otherwise
        return False
    return parts is not None and all(isinstance(layer, nn.Linear) for layer in parts["layers"])


def _hf_unsplittable_reason(module: nn.Module) -> str:
    parts = _hf_parts(module)
    core = parts["core"]
    if abs(core.scaling - parts["head_dim"] ** -0.5) > 1e-12 or core.is_causal:
        return "it scales or masks its scores its own way"
    return ""


def _hf_split(module: nn.Module) -> SplitAttention:
    return (HFPostNormAttention if type(module).__name__ == "BertAttention" else HFSelfAttention).from_hf(module)


def is_timm_attention(module: nn.Module) -> bool:
    """timm's standard self-attention, told by its class and layers (timm is an optional extra)."""
    return (type(module).__name__ == "Attention" and type(module).__module__.startswith("timm.")
            and isinstance(getattr(module, "qkv", None), nn.Linear) and isinstance(getattr(module, "proj", None),
                                                                                   nn.Linear))


def _timm_unsplittable_reason(module: nn.Module) -> str:
    extras = [name for name in ("q_norm", "k_norm", "norm") if not isinstance(getattr(module, name, None), nn.Identity)]
    if extras:
        return f"it normalises inside the attention ({', '.join(extras)})"
    if getattr(module, "gate", None) is not None:
        return "it gates the attention output"
    return ""


def unsplittable_reason(mha: nn.MultiheadAttention) -> str:
    """Why ``mha`` cannot be rewritten as separate layers; "" when it can."""
    if mha.bias_k is not None or mha.bias_v is not None:
        return "it adds learned key/value biases (add_bias_kv=True)"
    if mha.add_zero_attn:
        return "it appends a zero attention slot (add_zero_attn=True)"
    return ""


def split_attention(model: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` (and the timm and Hugging Face attention that
    ``is_timm_attention`` and ``is_hf_attention`` know) of
    ``model`` that can be rewritten by an equivalent ``SplitAttention``, in place.
    Returns notes on the ones left whole, which no technique edits."""
    notes = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            reason, make = unsplittable_reason(module), SplitAttention.from_multihead
        elif is_timm_attention(module):
            reason, make = _timm_unsplittable_reason(module), SelfAttention.from_timm
        elif is_hf_attention(module):
            reason, make = _hf_unsplittable_reason(module), _hf_split
        else:
            continue
        if reason:
            inside = " (its projections run inside it: no quantization or factorization either)" if isinstance(
                module, nn.MultiheadAttention) else ""
            notes.append(f"{name}: attention left whole, heads not cut{inside}: {reason}")
        else:
            set_submodule(model, name, make(module))
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False  # the nested-tensor path reads packed projection weights
    return notes


def _splittable(module: nn.Module) -> bool:
    """An attention of a kind ``split_attention`` rewrites (whether this one can be or not)."""
    return isinstance(module, nn.MultiheadAttention) or is_timm_attention(module) or is_hf_attention(module)


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` holds an attention, split or not: a transformer."""
    return any(isinstance(m, SplitAttention) or _splittable(m) for m in model.modules())


def split_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` itself when it has no attention to split; else a split copy, and its notes."""
    if not any(_splittable(m) for m in model.modules()):
        return model, []
    model = copy.deepcopy(model)
    return model, split_attention(model)
