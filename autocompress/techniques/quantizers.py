"""Fake quantizers that compute what ONNX Runtime's int kernels will compute.

8 and 4 bits: weights per output channel, symmetric, in the target's ranges (``QuantizationRules``:
int8 in [-127, 127], or [-64, 64] where the CPU's int8 kernels saturate; int4 in [-7, 7]), inputs
per tensor, asymmetric uint8: the same formulas ORT's QDQ quantizer uses, so that calibrating both
on the same batches gives the same scales. 4-bit layers keep 8-bit inputs (ORT has no 4-bit
activations). 16 bits: weights stored as float16, computed in float32. Rounding goes through a
straight-through estimator, so the simulated model can be fine-tuned.

A Linear over tokens runs as MatMul (``runs_as_matmul``), which ORT quantizes the way it runs
transformers on the CPU: int8 dynamically (each call quantizes its input with that input's own
range, per item since deployments run one item at a time; nothing is calibrated), int4 weight-only
(``MatMulNBits``: blocks of weights along the input features share a scale, the input and the
arithmetic stay float).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.target import QuantizationRules

__all__ = ["QuantizedLayer", "QuantizedOutput", "ActivationQuantizer", "calibrate",
           "fake_quantize_weight", "QuantizationRules", "weight_qrange", "weight_scale", "bias_rounding",
           "activation_qparams", "runs_as_matmul", "int4_weight_blocks", "MATMUL_INT4_BLOCK"]

_EMA_MOMENTUM = 0.1  # how fast activation ranges follow the weights during fine-tuning
MATMUL_INT4_BLOCK = 32  # weights per scale of an int4 MatMul, along the input features


def runs_as_matmul(layer: nn.Module, input_ndim: int) -> bool:
    """Whether ``layer``, called on an input of ``input_ndim`` dimensions, exports as MatMul: a
    Linear over tokens, or one without a bias (the exporter writes Gemm only for a batch of
    vectors with a bias)."""
    return isinstance(layer, nn.Linear) and (input_ndim != 2 or layer.bias is None)


def weight_qrange(bits: int, rules: QuantizationRules | None = None) -> tuple[int, int]:
    """Integer range of a symmetric weight quantizer under ``rules`` (ORT's own by default)."""
    return (rules or QuantizationRules()).weight_range(bits)


def weight_scale(weight: torch.Tensor, bits: int, qrange: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-output-channel scale of a symmetric int weight quantizer, shaped to broadcast (ORT's rule)."""
    qmin, qmax = qrange or weight_qrange(bits)
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True)
    scale = (2.0 * absmax / (qmax - qmin)).to(weight.dtype)
    return torch.where(scale < torch.finfo(weight.dtype).tiny, torch.ones_like(scale), scale)


def fake_quantize_weight(weight: torch.Tensor, bits: int, qrange: tuple[int, int] | None = None) -> torch.Tensor:
    if bits >= 32:
        return weight
    if bits == 16:
        rounded = weight.detach().to(torch.float16).to(weight.dtype)
    else:
        qmin, qmax = qrange or weight_qrange(bits)
        scale = weight_scale(weight, bits, (qmin, qmax))
        rounded = torch.clamp(torch.round(weight.detach() / scale), qmin, qmax) * scale
    return weight + (rounded - weight).detach()  # straight-through: gradients see the identity


def int4_weight_blocks(weight: torch.Tensor, qrange: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear weight (out, in) as int4 blocks of ``MATMUL_INT4_BLOCK`` input features, symmetric
    per block: the integers (out, blocks, block), the last block padded with zeros, and the float32
    scales (out, blocks, 1). Export writes exactly these into ``MatMulNBits``."""
    out_features, in_features = weight.shape
    blocks = F.pad(weight.detach().float(), (0, -in_features % MATMUL_INT4_BLOCK)).reshape(out_features, -1, MATMUL_INT4_BLOCK)
    qmin, qmax = qrange
    scale = 2.0 * blocks.abs().amax(dim=2, keepdim=True) / (qmax - qmin)
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    return torch.clamp(torch.round(blocks / scale), qmin, qmax), scale


def _fake_quantize_weight_blockwise(weight: torch.Tensor, qrange: tuple[int, int]) -> torch.Tensor:
    q, scale = int4_weight_blocks(weight, qrange)
    rounded = (q * scale).reshape(weight.shape[0], -1)[:, :weight.shape[1]].to(weight.dtype)
    return weight + (rounded - weight).detach()


def _fake_quantize_per_item(x: torch.Tensor, item_dim: int) -> torch.Tensor:
    """uint8 fake quantization with each item's own range, computed in float32 as ORT's
    DynamicQuantizeLinear does for an input of one item."""
    seen = x.detach().float()
    others = tuple(d for d in range(x.dim()) if d != item_dim % x.dim())
    low = seen.amin(dim=others, keepdim=True).clamp(max=0.0)
    high = seen.amax(dim=others, keepdim=True).clamp(min=0.0)
    scale = torch.where(high > low, (high - low) / 255.0, torch.ones_like(high))
    zero_point = torch.round(torch.clamp(0.0 - low / scale, 0, 255))
    q = torch.clamp(torch.round(seen / scale) + zero_point, 0, 255)
    return x + ((q - zero_point) * scale - seen).to(x.dtype).detach()


def bias_rounding(bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """What int32 bias quantization (scale = input scale x weight scale) adds to each bias.

    ORT's int kernels take the bias as int32 in units of that step; this rounding is the one
    difference left between the float simulation and them, so it is simulated too (a constant:
    no gradient flows through it).
    """
    step = step.double()
    safe = torch.where(step > 0, step, torch.ones_like(step))
    rounded = torch.round(bias.detach().double() / safe) * safe
    return torch.where(step > 0, rounded - bias.detach().double(), torch.zeros_like(step)).to(bias.dtype)


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scale and zero point for the range [low, high], widened to include 0 (ORT's rule)."""
    low = torch.clamp(low, max=0.0).double()
    high = torch.clamp(high, min=0.0).double()
    scale = (high - low) / 255.0
    if scale.item() < torch.finfo(torch.float32).tiny:
        return torch.tensor(1.0), torch.tensor(0.0)
    zero_point = torch.round(0.0 - low / scale)
    return scale.float(), zero_point.float()


class ActivationQuantizer(nn.Module):
    """Per-tensor uint8 fake quantization of a tensor with a calibrated range."""

    def __init__(self) -> None:
        super().__init__()
        self.observing = False  # calibration: pass through and record the range, as ORT calibrates
        self.last_scale: torch.Tensor | None = None  # the scale of the latest quantized forward
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.low))

    def reset(self) -> None:
        self.low.fill_(float("inf"))
        self.high.fill_(float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.detach()
        if self.observing:
            self.low.copy_(torch.minimum(self.low, seen.min()))
            self.high.copy_(torch.maximum(self.high, seen.max()))
            return x
        low, high = seen.min(), seen.max()
        if self.training:
            with torch.no_grad():
                if self.calibrated:
                    low = torch.lerp(self.low, low, _EMA_MOMENTUM)
                    high = torch.lerp(self.high, high, _EMA_MOMENTUM)
                self.low.copy_(low)
                self.high.copy_(high)
        elif self.calibrated:
            low, high = self.low, self.high
        # else: not calibrated yet, so this batch's own range is the best there is
        scale, zero_point = activation_qparams(low, high)
        self.last_scale = scale
        q = torch.clamp(torch.round(x.detach() / scale) + zero_point, 0, 255)
        return x + ((q - zero_point) * scale - x).detach()


class QuantizedLayer(nn.Module):
    """A Conv2d or Linear run with fake-quantized weights (and inputs, at 8 and 4 bits)."""

    def __init__(self, layer: nn.Module, bits: int, *, weight_range: tuple[int, int] | None = None) -> None:
        super().__init__()
        if bits not in (16, 8, 4):
            raise ValueError(f"bits must be 16, 8 or 4, got {bits=}")
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"only Conv2d and Linear layers are quantized, got {type(layer).__name__}")
        self.layer = layer
        self.bits = bits
        # the target's integer weight range (QuantizationRules); None at 16 bits
        self.weight_range = (weight_range or weight_qrange(bits)) if bits <= 8 else None
        self.observing = False  # calibration runs the float layer
        self.input_quantizer = ActivationQuantizer() if bits <= 8 else None
        self.bias_folded_downstream = False  # set when a BatchNorm follows: its wrapper rounds the folded bias
        self.item_dim = 0  # the batch dimension of a MatMul's input (placement finds it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_as_matmul(self.layer, x.dim()) and self.bits <= 8:
            return self._matmul(x)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if self.observing:
            return self.layer(x)
        weight = fake_quantize_weight(self.layer.weight, self.bits, self.weight_range)
        bias = self.layer.bias
        # ORT runs 8/4-bit Conv and Gemm (a Linear on 2-D inputs) as int kernels with an int32 bias.
        if bias is not None and self.bits <= 8 and not self.bias_folded_downstream:
            step = self.input_quantizer.last_scale * weight_scale(self.layer.weight, self.bits, self.weight_range).flatten()
            bias = bias + bias_rounding(bias, step)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, bias)
        layer = self.layer
        if layer.padding_mode != "zeros":
            return F.conv2d(F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), weight,
                            bias, layer.stride, 0, layer.dilation, layer.groups)
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's float weight, for models that read their layers' weights."""
        return self.layer.weight

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """int8: dynamic input, per-channel weights; int4: block weights, float input. The bias is a
        float Add in both."""
        if self.observing:
            return self.layer(x)
        if self.bits == 8:
            weight = fake_quantize_weight(self.layer.weight, 8, self.weight_range)
            x = _fake_quantize_per_item(x, self.item_dim)
        else:
            weight = _fake_quantize_weight_blockwise(self.layer.weight, self.weight_range)
        return F.linear(x, weight, self.layer.bias)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class QuantizedOutput(nn.Module):
    """Runs ``module`` and fake-quantizes its output, for every consumer of that output.

    Placed where ORT puts a Q/DQ pair on a tensor (see placement.py). For a conv followed by
    BatchNorm it wraps the BatchNorm (ORT folds it into the conv), which keeps training with its
    own statistics here, and adds the rounding of the folded int32 bias in eval.
    """

    def __init__(self, module: nn.Module, folded_into: QuantizedLayer | None = None) -> None:
        super().__init__()
        self.module = module
        self.output_quantizer = ActivationQuantizer()
        # The conv this BatchNorm folds into, kept out of the module tree (it has its own place).
        object.__setattr__(self, "_folded_into", folded_into)
        if folded_into is not None:
            folded_into.bias_folded_downstream = True

    def forward(self, *args, **kwargs) -> torch.Tensor:
        y = self.module(*args, **kwargs)  # wrapped containers may take masks and flags (nn.TransformerEncoder)
        conv = self._folded_into
        if conv is not None and not self.training and not conv.observing:
            y = y + self._folded_bias_rounding(conv).view(1, -1, 1, 1)
        return self.output_quantizer(y)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped module's weight, for models that read their layers' weights."""
        return self.module.weight

    def _folded_bias_rounding(self, conv: QuantizedLayer) -> torch.Tensor:
        """Rounding of the bias ORT gets by folding this BatchNorm (eval statistics) into ``conv``."""
        bn = self.module
        factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        conv_bias = conv.layer.bias.detach() if conv.layer.bias is not None else torch.zeros_like(factor)
        folded_bias = factor * (conv_bias - bn.running_mean) + bn.bias.detach()
        step = conv.input_quantizer.last_scale * weight_scale(conv.layer.weight, conv.bits, conv.weight_range).flatten() * factor.abs()
        return bias_rounding(folded_bias, step)


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Record every quantizer's range over ``batches`` with the model running in float.

    The same batches calibrate ORT's static quantization at export, so both get the same scales.
    """
    switches = [m for m in model.modules() if isinstance(m, (QuantizedLayer, ActivationQuantizer))]
    was_training = model.training
    model.eval()
    for m in switches:
        if isinstance(m, ActivationQuantizer):
            m.reset()
        m.observing = True
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for m in switches:
            m.observing = False
        model.train(was_training)
    return model
