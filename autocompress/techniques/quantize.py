"""The quantization technique: wrap each chosen layer, then place activation quantizers as ORT will."""

from __future__ import annotations

from torch import nn

from .._modules import set_submodule
from ..space import Candidate
from .factorize import LowRank
from .placement import place_activation_quantizers
from .quantizers import QuantizedLayer

__all__ = ["apply_quantization"]


def apply_quantization(model: nn.Module, candidate: Candidate, context) -> None:
    for name, bits in sorted(candidate.bits.items()):
        if bits >= 32:
            continue
        try:
            target = model.get_submodule(name)
        except AttributeError:
            continue  # removed with a skipped block
        if isinstance(target, LowRank):
            for i, part in enumerate(target):
                target[i] = QuantizedLayer(part, bits)
        else:
            set_submodule(model, name, QuantizedLayer(target, bits))
    place_activation_quantizers(model, context.example_input)
