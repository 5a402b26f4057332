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

__all__ = ["QuantizedLayer", "QuantizedOutput", "ActivationQuantizer", "apply_quantization", "calibrate",
           "fake_quantize_weight", "weight_qrange",
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


class ActivationQuantizer(nn.Module):
    """Per-tensor uint8 fake quantization of a tensor with a calibrated range.

    ``clamp`` narrows the recorded range the way ORT does when it folds a following ReLU or
    ReLU6 into this quantizer: the range is that of the activation's output, so quantizing the
    pre-activation tensor with it also applies the activation.
    """

    def __init__(self, clamp: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.clamp = clamp
        self.observing = False  # calibration: pass through and record the range, as ORT calibrates
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.low))

    def reset(self) -> None:
        self.low.fill_(float("inf"))
        self.high.fill_(float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.detach() if self.clamp is None else x.detach().clamp(*self.clamp)
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
        return _fake_quantize_activation(x, low, high)

    def extra_repr(self) -> str:
        return f"clamp={self.clamp}" if self.clamp else ""


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
        self.observing = False  # calibration runs the float layer
        self.input_quantizer = ActivationQuantizer() if bits <= 8 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if self.observing:
            return self.layer(x)
        weight = fake_quantize_weight(self.layer.weight, self.bits)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        layer = self.layer
        if layer.padding_mode != "zeros":
            return F.conv2d(F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), weight,
                            layer.bias, layer.stride, 0, layer.dilation, layer.groups)
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class QuantizedOutput(nn.Module):
    """Runs ``module`` and fake-quantizes its output: where ORT puts the output Q/DQ of an int layer.

    ORT folds BatchNorm into the conv before quantizing, so for a conv followed by BatchNorm the
    output quantizer wraps the BatchNorm, which keeps training with its own statistics here.
    """

    def __init__(self, module: nn.Module, clamp: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.module = module
        self.output_quantizer = ActivationQuantizer(clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quantizer(self.module(x))


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
    _add_output_quantizers(model, context.example_input)


_FOLDABLE_ACTIVATIONS = {nn.ReLU: (0.0, float("inf")), nn.ReLU6: (0.0, 6.0)}


def _add_output_quantizers(model: nn.Module, example_input: torch.Tensor) -> None:
    """Quantize each int layer's output where ORT will: after the BatchNorm that follows it (ORT
    folds that BatchNorm into the conv), with the range of a sole following ReLU/ReLU6 (ORT folds
    that activation into the quantizer). Linear layers on 3-D inputs export as MatMul + Add,
    whose output ORT leaves in float; so do we."""
    calls = _trace_leaf_calls(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    for layer, in_ndim, _, produced in [c for c in calls if isinstance(c[0], QuantizedLayer)]:
        if layer.bits > 8 or (isinstance(layer.layer, nn.Linear) and in_ndim != 2):
            continue
        producer = layer
        consumers = [(m, out) for m, _, read, out in calls if read == produced]
        if len(consumers) == 1 and isinstance(consumers[0][0], nn.BatchNorm2d):
            producer, produced = consumers[0]
            consumers = [(m, out) for m, _, read, out in calls if read == produced]
        clamp = None
        if len(consumers) == 1 and type(consumers[0][0]) in _FOLDABLE_ACTIVATIONS:
            clamp = _FOLDABLE_ACTIVATIONS[type(consumers[0][0])]
        set_submodule(model, names[producer], QuantizedOutput(producer, clamp))


def _trace_leaf_calls(model: nn.Module, example_input: torch.Tensor) -> list[tuple]:
    """(module, input ndim, input key, output key) of every leaf-module call, in call order.

    A key is (tensor id, version counter): an in-place op between two modules (``out += x``, an
    in-place ReLU) bumps the version, so a tensor read after it is not the one first produced.
    """
    calls: list[tuple] = []
    pending: dict[nn.Module, tuple] = {}
    alive: list[torch.Tensor] = []  # keeps tensors alive so their ids stay unique during the pass

    def before(module, args):
        if args and isinstance(args[0], torch.Tensor):
            pending[module] = (args[0].dim(), (id(args[0]), args[0]._version))

    def after(module, args, output):
        if module in pending and isinstance(output, torch.Tensor):
            alive.extend((args[0], output))
            ndim, read = pending.pop(module)
            calls.append((module, ndim, read, (id(output), output._version)))

    leaves = [m for m in model.modules() if isinstance(m, QuantizedLayer) or not any(True for _ in m.children())]
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in handles:
            h.remove()
    return calls


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
