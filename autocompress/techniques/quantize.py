"""Quantization: wrap each chosen layer to run at 16, 8 or 4 bits, then place activation
quantizers where ONNX Runtime's QDQ quantizer will put them (``placement``, ``quantizers``)."""

from __future__ import annotations

from ..core.modules import find_submodule, set_submodule
from ..core.technique import ModelShapes, Technique, Variable, register
from .factorize import LowRank
from .placement import find_item_dims, place_activation_quantizers
from .quantizers import QuantizedLayer

__all__ = ["Quantize"]

BIT_WIDTHS = (32, 16, 8, 4)
_INT8_DAMAGE = 0.2  # int8 costs little accuracy: a fifth of the layer's MAC share, as a proxy


class Quantize(Technique):
    kind = "bits"
    order = 60
    position = 20
    value_type = int
    neutral = 32
    option = "bit_widths"
    default_option = BIT_WIDTHS
    in_every_candidate_json = True
    follows_layers = True

    def read_option(self, value):
        widths = tuple(value)
        if not widths or any(b not in BIT_WIDTHS for b in widths) or 32 not in widths:
            raise ValueError(f"bit_widths must include 32 and be among 32, 16, 8, 4, got bit_widths={widths}")
        return widths

    def variables(self, analysis, options) -> list[Variable]:
        if len(options.bit_widths) < 2:
            return []
        widths = tuple(sorted(options.bit_widths, reverse=True))
        return [Variable(self.kind, u.name, widths) for u in analysis.layers]

    def apply(self, model, candidate, context) -> None:
        for name, bits in sorted(candidate.bits.items()):
            if bits >= 32:
                continue
            qrange = context.rules.weight_range(bits) if bits <= 8 else None
            target = find_submodule(model, name)
            if target is None:
                continue  # removed with a skipped block
            if isinstance(target, LowRank):
                for i, part in enumerate(target):
                    target[i] = QuantizedLayer(part, bits, weight_range=qrange)
            else:
                set_submodule(model, name, QuantizedLayer(target, bits, weight_range=qrange))
        if any(bits <= 8 for bits in candidate.bits.values()):  # quantizers go only around int layers
            place_activation_quantizers(model, context.example_input)
            find_item_dims(model, context.example_input)

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        for name, bits in candidate.bits.items():
            if name in shapes.layers and shapes.layers[name].bits != bits:
                shapes.layers[name] = shapes.layers[name].replace(bits=bits)

    def repair_moves(self, var, value, share):
        # Which precision is fastest differs per layer on ORT (int8 depthwise convs can be slower
        # than float), so both int8 and float are tried; leaving int4 costs no accuracy.
        for target in (8, 32):
            if target != value and target in var.choices and not (target == 32 and value == 16):
                yield target, 0.0 if value == 4 or target == 32 else _INT8_DAMAGE * share

    def summary(self, values: dict) -> str | None:
        bits = [int(v) for v in values.values()]
        parts = [f"{bits.count(b)} layer{'' if bits.count(b) == 1 else 's'} {'int' if b < 16 else 'fp'}{b}"
                 for b in (16, 8, 4) if b in bits]
        return ", ".join(parts) or None


register(Quantize())
