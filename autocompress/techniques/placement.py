"""Where the simulation quantizes activations: wherever ORT's QDQ quantizer will put a Q/DQ pair.

Only layers that run as Conv or Gemm take part: a Linear over tokens runs as MatMul, which is
quantized dynamically or weight-only (``quantizers.runs_as_matmul``) and leaves every tensor around
it in float.

ORT quantizes a tensor once, for all its consumers: the output of an int layer (after the
BatchNorm it folds into the conv), and the input of an int layer, which every other consumer
then also reads in quantized form (a residual shortcut reads the same quantized block input as
the block's first conv). The simulation follows: output quantizers on int layers' outputs, and
on the module that produced an int layer's input when other code may read that tensor too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.modules import forward_with_hooks, set_submodule
from .quantizers import QuantizedLayer, QuantizedOutput, runs_as_matmul

__all__ = ["find_item_dims", "place_activation_quantizers"]

Key = tuple[int, int]  # (tensor id, version counter)


@dataclass(frozen=True)
class _Call:
    module: nn.Module
    leaf: bool
    in_ndim: int
    reads: Key
    writes: Key


def place_activation_quantizers(model: nn.Module, example_input: torch.Tensor) -> None:
    calls = _trace_calls(model, example_input)
    int_layers = [c for c in calls if isinstance(c.module, QuantizedLayer) and c.module.bits <= 8
                  and not runs_as_matmul(c.module.layer, c.in_ndim)]
    done: set[int] = set()  # ids of modules whose output is already quantized
    for call in int_layers:
        _quantize_output(model, call, calls, done)
    times_called: dict[int, int] = {}
    for c in calls:
        times_called[id(c.module)] = times_called.get(id(c.module), 0) + 1
    for call in int_layers:
        _quantize_shared_input(model, call, calls, done, times_called)


def find_item_dims(model: nn.Module, example_input: torch.Tensor) -> None:
    """Tell each int8 MatMul which dimension of its input holds the items.

    ORT computes a dynamic range over one call's whole input, and a deployment calls with one
    item, so the simulation takes a range per item. The item dimension is the one that grows with
    the batch: not always the first (nn.MultiheadAttention without batch_first reads tokens first).
    """
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer) and isinstance(m.layer, nn.Linear)
              and m.bits == 8]  # only int8 quantizes its input per item
    if not layers:
        return
    shapes: dict[tuple[int, int], torch.Size] = {}

    def watch(batch: torch.Tensor) -> None:
        def record(module, args):
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault((id(module), len(batch)), args[0].shape)
        forward_with_hooks(model, batch, [m.register_forward_pre_hook(record) for m in layers])

    watch(example_input)
    watch(torch.cat([example_input, example_input]))
    for layer in layers:
        one, two = shapes.get((id(layer), len(example_input))), shapes.get((id(layer), 2 * len(example_input)))
        grown = [d for d in range(len(one)) if one[d] != two[d]] if one and two and len(one) == len(two) else []
        layer.item_dim = grown[0] if grown else 0


def _quantize_output(model: nn.Module, layer_call: _Call, calls: list[_Call], done: set[int]) -> None:
    layer = layer_call.module
    producer = layer
    consumers = _leaf_readers(calls, layer_call.writes)
    if len(consumers) == 1 and isinstance(consumers[0].module, nn.BatchNorm2d):
        producer = consumers[0].module
    _wrap(model, producer, QuantizedOutput(producer, layer if producer is not layer else None))
    done.add(id(producer))


def _quantize_shared_input(model: nn.Module, layer_call: _Call, calls: list[_Call], done: set[int],
                           times_called: dict[int, int]) -> None:
    """Quantize an int layer's input at its producer, so that every reader sees it quantized.

    The innermost module that returned the tensor is used, skipping modules called more than
    once (a shared ReLU: one quantizer cannot serve two tensors); without one, the layer's own
    input quantizer is the only one, which is exact when the layer is the tensor's only reader.
    """
    for call in calls:  # completion order: inner modules before the containers that return their output
        if call.writes != layer_call.reads or call.module is model:
            continue
        if id(call.module) in done or isinstance(call.module, (QuantizedLayer, QuantizedOutput)):
            return  # already quantized there
        if times_called[id(call.module)] == 1:
            _wrap(model, call.module, QuantizedOutput(call.module))
            done.add(id(call.module))
            return




def _wrap(model: nn.Module, module: nn.Module, wrapper: QuantizedOutput) -> None:
    # Looked up afresh: wrapping a container renames everything below it.
    name = next(n for n, m in model.named_modules() if m is module)
    set_submodule(model, name, wrapper)


def _leaf_readers(calls: list[_Call], key: Key) -> list[_Call]:
    return [c for c in calls if c.leaf and c.reads == key]


def _trace_calls(model: nn.Module, example_input: torch.Tensor) -> list[_Call]:
    """Every module call in completion order, with the tensors it read and wrote.

    A key is (tensor id, version counter): an in-place op between two modules (``out += x``, an
    in-place ReLU) bumps the version, so a tensor read after it is not the one first produced.
    QuantizedLayers count as leaves (their inner layer is not called as a module).
    """
    calls: list[_Call] = []
    pending: dict[int, list] = {}
    alive: list[torch.Tensor] = []  # keeps tensors alive so their ids stay unique during the pass

    def before(module, args, kwargs):
        first = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(first, torch.Tensor):
            pending.setdefault(id(module), []).append((first.dim(), (id(first), first._version), first))

    def after(module, args, kwargs, output):
        if pending.get(id(module)) and isinstance(output, torch.Tensor):
            ndim, reads, first = pending[id(module)].pop()
            alive.extend((first, output))
            leaf = isinstance(module, QuantizedLayer) or not any(True for _ in module.children())
            calls.append(_Call(module, leaf, ndim, reads, (id(output), output._version)))

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    forward_with_hooks(model, example_input, handles)
    return calls
