"""Attention head pruning: keep the most important whole heads of each split attention.

A decision is how many heads an attention loses (``heads/<attention>``, 0: all kept); which ones
is fixed by the analysis' ranking (``core.attention.head_order``), so the same Candidate keeps the same heads.
Cutting a head removes its rows of the q, k and v projections and its columns of the output
projection; the attention between them shrinks with it. At least one head stays: an attention
with none is its block skipped, which the skip technique decides.
"""

from __future__ import annotations

from ..core.attention import HEAD_PROJECTIONS, OUTPUT_PROJECTION, SplitAttention, keep_heads
from ..core.modules import find_submodule
from ..core.technique import ModelShapes, Technique, Variable, layer_mac_share, read_flag, register

__all__ = ["PruneHeads", "head_choices"]

_MAX_CHOICES = 16


def head_choices(heads: int) -> tuple[int, ...]:
    """Counts of heads an attention of ``heads`` heads may lose, none first: every count up to 16
    heads, else an even grid of at most 16 steps (a 32-head attention in steps of 2). One head
    always stays."""
    step = max(1, -(-heads // _MAX_CHOICES))
    return tuple(range(0, heads, step))


class PruneHeads(Technique):
    """``heads/<attention>``: how many of its heads an attention loses."""

    kind = "heads"
    order = 35  # after pruning (Torch-Pruning traces the heads whole), before ranks and bits
    position = 80  # after every earlier technique, so seeded draws of models without attention reproduce
    value_type = int
    neutral = 0
    option = "attention_heads"
    default_option = True
    ordered = True

    def read_option(self, value):
        return read_flag(self.option, value)

    def variables(self, analysis, options) -> list[Variable]:
        if not options.attention_heads:
            return []
        return [Variable(self.kind, a.name, head_choices(a.heads)) for a in analysis.attention
                if a.split and a.heads > 1]

    def apply(self, model, candidate, context) -> None:
        units = {a.name: a for a in context.analysis.attention}
        for name, cut in sorted(candidate.heads.items()):
            kept = units[name].heads - cut
            module = find_submodule(model, name)
            if module is None:
                continue  # removed with a skipped block
            if isinstance(module, SplitAttention) and kept < module.num_heads:
                keep_heads(module, list(units[name].head_order[:kept]))

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        units = {a.name: a for a in analysis.attention}
        for name, cut in candidate.heads.items():
            unit = units.get(name)
            if unit is None or cut <= 0:
                continue
            kept = unit.heads - cut
            shapes.heads[name] = kept
            width = kept * unit.head_dim
            for projection in HEAD_PROJECTIONS:
                layer = f"{name}.{projection}"
                if layer in shapes.layers:
                    shapes.layers[layer] = shapes.layers[layer].replace(out_channels=width)
            out = f"{name}.{OUTPUT_PROJECTION}"
            if out in shapes.layers:
                shapes.layers[out] = shapes.layers[out].replace(in_channels=width)

    def mac_share(self, analysis, unit: str) -> float:
        attention = next(a for a in analysis.attention if a.name == unit)
        projections = sum(u.macs for u in analysis.layers if u.name.startswith(unit + "."))
        return layer_mac_share(analysis, projections + attention.macs)

    def repair_moves(self, var, value, share):
        more = [c for c in var.choices if c > value]
        if more:  # one notch more heads cut, its damage the share of the attention it cuts
            yield min(more), (min(more) - value) / (max(var.choices) + 1) * share

    def summary(self, values: dict) -> str | None:
        cut = [int(v) for v in values.values() if int(v) > 0]
        if not cut:
            return None
        return f"{sum(cut)} head{'' if sum(cut) == 1 else 's'} cut in {len(cut)} attention{'' if len(cut) == 1 else 's'}"

    def describe(self, var: Variable) -> str:
        return f"heads cut {{{','.join(str(c) for c in var.choices)}}} of {max(var.choices) + 1}"


register(PruneHeads())
