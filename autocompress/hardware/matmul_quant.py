"""Integer MatMuls the way ONNX Runtime runs transformers on the CPU.

A Linear over tokens exports as MatMul (plus a float Add for its bias). Static QDQ suits convs; for
MatMuls ORT's CPU path is:

- int8: dynamic quantization. ``DynamicQuantizeLinear`` computes each call's input range, then an
  int8 MatMul with per-channel weights (ORT fuses both into ``DynamicQuantizeMatMul``). Nothing
  is calibrated; tensors other layers read stay float.
- int4: weight-only ``MatMulNBits``: weights in blocks of ``MATMUL_INT4_BLOCK`` input features,
  one float scale each, the input and the arithmetic float (``accuracy_level`` 0; level 4 would
  quantize the input too, and ran slower here). Written from the simulation's own integers and
  scales (``quantizers.int4_weight_blocks``), so both compute the same weights bit for bit.

Dynamic ranges cover one call's whole input, so an export with int8 MatMuls is run one item at a
time (``ITEMS_PER_RUN`` in its metadata), as a deployment runs it and the simulation assumes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..errors import ExportError
from ..techniques.quantizers import MATMUL_INT4_BLOCK, int4_weight_blocks

__all__ = ["ITEMS_PER_RUN", "items_per_run", "quantize_matmuls_dynamic", "quiet_quantizer", "matmuls_to_int4_blocks",
           "use_ort_domain"]

ITEMS_PER_RUN = "autocompress.items_per_run"  # metadata key: how many items one run may take
_MS_DOMAIN = "com.microsoft"
_INT4_ZERO = 8  # MatMulNBits' implicit zero point at 4 bits: stored values are q + 8


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """ORT's quantizers log advice ("consider pre-processing", opset notes) on the root logger."""
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root_logger.setLevel(level)


def matmuls_to_int4_blocks(graph: onnx.ModelProto, node_names: list[str], weight_range: tuple[int, int]) -> None:
    """Replace each named MatMul (weights an initializer, (in, out)) by MatMulNBits, in place."""
    initializers = {t.name: t for t in graph.graph.initializer}
    nodes = list(graph.graph.node)
    for name in node_names:
        node = next(n for n in nodes if n.name == name)
        if node.input[1] not in initializers:
            raise ExportError(f"MatMul {name!r} has no constant weight; int4 needs one")
        weight = numpy_helper.to_array(initializers[node.input[1]])  # (in, out)
        q, scale = int4_weight_blocks(torch.from_numpy(weight.T.copy()), weight_range)
        stored = (q.to(torch.int32) + _INT4_ZERO).numpy().astype(np.uint8)  # (out, blocks, block)
        packed = stored[..., 0::2] | (stored[..., 1::2] << 4)  # two per byte, the first in the low nibble
        prefix = node.input[1]
        graph.graph.initializer.extend([numpy_helper.from_array(packed, f"{prefix}_int4"),
                                        numpy_helper.from_array(scale.reshape(-1).numpy(), f"{prefix}_int4_scale")])
        replacement = helper.make_node(
            "MatMulNBits", [node.input[0], f"{prefix}_int4", f"{prefix}_int4_scale"], list(node.output),
            name=name, domain=_MS_DOMAIN, K=weight.shape[0], N=weight.shape[1], bits=4,
            block_size=MATMUL_INT4_BLOCK, accuracy_level=0)
        index = list(graph.graph.node).index(node)
        graph.graph.node.remove(node)
        graph.graph.node.insert(index, replacement)
    used = {name for node in graph.graph.node for name in node.input}
    for tensor in [initializers[n.input[1]] for n in nodes if n.name in node_names]:
        if tensor.name not in used:
            graph.graph.initializer.remove(tensor)
    use_ort_domain(graph)


def use_ort_domain(graph: onnx.ModelProto) -> None:
    """Declare ORT's own operator domain in ``graph``, once."""
    if not any(o.domain == _MS_DOMAIN for o in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))


def quantize_matmuls_dynamic(in_path: Path, out_path: Path, node_names: list[str], weight_range: tuple[int, int]) -> None:
    """ORT's dynamic quantization of the named MatMuls, weights per output channel in
    ``weight_range`` (ORT's ``reduce_range`` is the 7-bit range of CPUs whose int8 kernels saturate)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_range not in ((-127, 127), (-64, 64)):
        raise ExportError(f"dynamic int8 MatMuls take weights in [-127, 127] or [-64, 64], got {weight_range}")
    try:
        with quiet_quantizer():
            quantize_dynamic(str(in_path), str(out_path), op_types_to_quantize=["MatMul"], nodes_to_quantize=node_names,
                             per_channel=True, reduce_range=weight_range == (-64, 64), weight_type=QuantType.QInt8,
                             extra_options={"MatMulConstBOnly": True})
    except Exception as exc:
        raise ExportError(f"ONNX Runtime dynamic quantization failed ({type(exc).__name__}: {exc})") from exc
    graph = onnx.load(str(out_path))
    helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, ITEMS_PER_RUN: "1"})
    onnx.save(graph, str(out_path))


def items_per_run(session) -> int | None:
    """The most items one run of ``session`` may take to compute what the simulation computes
    (None: any number)."""
    value = session.get_modelmeta().custom_metadata_map.get(ITEMS_PER_RUN)
    return int(value) if value else None

