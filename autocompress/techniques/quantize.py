"""Simulated quantization at the chosen bit widths, matching what ONNX Runtime will execute.

8 and 4 bits: weights per output channel, symmetric (int8 in [-127, 127], int4 in [-8, 7]), inputs
per tensor, asymmetric uint8: the same formulas ORT's QDQ quantizer uses, so that calibrating both
on the same batches gives the same scales. 4-bit layers keep 8-bit inputs (ORT has no 4-bit
activations). 16 bits: weights stored as float16, computed in float32. Rounding goes through a
straight-through estimator, so the simulated model can be fine-tuned.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .._modules import set_submodule
from ..space import Candidate
from .factorize import LowRank

__all__ = ["QuantizedLayer", "apply_quantization", "calibrate", "fake_quantize_weight", "weight_qrange",
           "activation_qparams"]

_EMA_MOMENTUM = 0.1  # how fast activation ranges follow the weights during fine-tuning


def weight_qrange(bits: int) -> tuple[int, int]:
    """Integer range of a symmetric weight quantizer, as ORT defines it."""
    return {8: (-127, 127), 4: (-8, 7)}[bits]


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    if bits >= 32:
        return weight
    if bits == 16:
        rounded = weight.detach().to(torch.float16).to(weight.dtype)
    else:
        qmin, qmax = weight_qrange(bits)
        absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True)
        scale = (2.0 * absmax / (qmax - qmin)).to(weight.dtype)
        scale = torch.where(scale < torch.finfo(weight.dtype).tiny, torch.ones_like(scale), scale)
        rounded = torch.clamp(torch.round(weight.detach() / scale), qmin, qmax) * scale
    return weight + (rounded - weight).detach()  # straight-through: gradients see the identity


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scale and zero point for the range [low, high], widened to include 0 (ORT's rule)."""
    low = torch.clamp(low, max=0.0).double()
    high = torch.clamp(high, min=0.0).double()
    scale = (high - low) / 255.0
    if scale.item() < torch.finfo(torch.float32).tiny:
        return torch.tensor(1.0), torch.tensor(0.0)
    zero_point = torch.round(0.0 - low / scale)
    return scale.float(), zero_point.float()


def _fake_quantize_activation(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    scale, zero_point = activation_qparams(low, high)
    q = torch.clamp(torch.round(x.detach() / scale) + zero_point, 0, 255)
    return x + ((q - zero_point) * scale - x).detach()


class QuantizedLayer(nn.Module):
    """A Conv2d or Linear run with fake-quantized weights (and inputs, at 8 and 4 bits)."""

    def __init__(self, layer: nn.Module, bits: int) -> None:
        super().__init__()
        if bits not in (16, 8, 4):
            raise ValueError(f"bits must be 16, 8 or 4, got {bits=}")
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"only Conv2d and Linear layers are quantized, got {type(layer).__name__}")
        self.layer = layer
        self.bits = bits
        self.observing = False  # calibration: run in float and record input ranges, as ORT calibrates
        self.register_buffer("input_min", torch.tensor(float("inf")))
        self.register_buffer("input_max", torch.tensor(float("-inf")))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.input_min))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                self.input_min.copy_(torch.minimum(self.input_min, x.min()))
                self.input_max.copy_(torch.maximum(self.input_max, x.max()))
            return self.layer(x)
        if self.bits <= 8:
            x = _fake_quantize_activation(x, *self._input_range(x))
        weight = fake_quantize_weight(self.layer.weight, self.bits)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        layer = self.layer
        if layer.padding_mode != "zeros":
            return F.conv2d(F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), weight,
                            layer.bias, layer.stride, 0, layer.dilation, layer.groups)
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    def _input_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = x.detach().min(), x.detach().max()
        if self.training:
            with torch.no_grad():
                if self.calibrated:
                    low = torch.lerp(self.input_min, low, _EMA_MOMENTUM)
                    high = torch.lerp(self.input_max, high, _EMA_MOMENTUM)
                self.input_min.copy_(low)
                self.input_max.copy_(high)
            return low, high
        if self.calibrated:
            return self.input_min, self.input_max
        return low, high  # not calibrated yet: quantize with this batch's own range

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


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


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Record every quantized layer's input range over ``batches`` with the model running in float.

    The same batches calibrate ORT's static quantization at export, so both get the same scales.
    """
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    was_training = model.training
    model.eval()
    for m in layers:
        m.input_min.fill_(float("inf"))
        m.input_max.fill_(float("-inf"))
        m.observing = True
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for m in layers:
            m.observing = False
        model.train(was_training)
    return model
