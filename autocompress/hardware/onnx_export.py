"""Export a compressed model to ONNX, quantized where its Candidate says so, and run it in ORT.

- 8-bit Conv and Gemm: QDQ static quantization by ONNX Runtime, calibrated (MinMax) on the same
  batches that calibrate the PyTorch simulation, with the same formulas, so both agree.
- 4-bit Conv and Gemm: int4 per-channel weights in [-7, 7] through the same quantizer (int4 Q/DQ);
  inputs stay uint8.
  ORT has no int4 convolution kernel: it dequantizes the weights and runs the float kernel, so
  such layers get smaller but not faster (the latency predictor learns this from measurements).
- 8- and 4-bit MatMuls (a Linear over tokens): dynamic int8 and weight-only int4, the way ORT runs
  transformers (``matmul_quant``).
- 16-bit layers: weights stored as float16 and cast to float32 before the op (ORT's CPU provider
  has no float16 Conv/Gemm); the file shrinks, the speed does not change. 32-bit layers stay float.
"""

from __future__ import annotations

import copy
import io
import tempfile
import zipfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, external_data_helper, helper, numpy_helper
from torch import nn

from ..core.modules import set_submodule
from ..core.target import default_target, onnx_input
from ..errors import ExportError
from ..files import inside
from ..techniques.quantizers import (
    QuantizedLayer,
    QuantizedOutput,
    calibrate,
)
from ..train.training import predict
from .matmul_quant import (items_per_run, matmuls_to_int4_blocks, quantize_matmuls_dynamic, quiet_quantizer,
                           use_ort_domain)

__all__ = ["ExportResult", "export_and_compare", "export_onnx", "load_onnx", "ort_session", "run_batch", "run_onnx"]


_OPSET = 17  # what the TorchScript exporter writes; ORT's quantizer raises it to 21 for int4
_LAYER_OPS = ("Conv", "Gemm", "MatMul")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class ExportResult:
    path: Path
    nodes_by_bits: dict[int, list[str]] = field(default_factory=dict)
    file_bytes: int = 0

    @property
    def zipped_bytes(self) -> int:
        """The file's size once zipped (deflate): what a download costs, and where the zeros of a
        sparse model pay off, since ONNX stores every weight dense."""
        return zipped_size(self.path)


def zipped_size(path: str | Path) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, Path(path).name)
    return buffer.getbuffer().nbytes


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, *,
                calibration: Sequence[torch.Tensor] | None = None) -> ExportResult:
    """Write ``model`` (a Candidate applied by ``apply_candidate``) to ``path`` as ONNX.

    When the model has quantized layers, ``calibration`` batches are required: they calibrate the
    model's own simulated quantizers (in place) and ORT's static quantization alike.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if any(isinstance(m, QuantizedLayer) and m.bits <= 8 for m in model.modules()):
        if not calibration:
            raise ExportError("the model has 8- or 4-bit layers; pass calibration batches (calibration_batches(dataset))")
        calibrate(model, calibration)
    ranges = {m.bits: m.weight_range for m in model.modules() if isinstance(m, QuantizedLayer) and m.bits <= 8}
    plain, quantized = _float_copy(model)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        _export_float(plain, example_input, float_path)
        graph = load_onnx(float_path)
        nodes_by_bits = _nodes_by_bits(plain, graph, quantized)
        matmuls = {n.name for n in graph.graph.node if n.op_type == "MatMul"}
        static = {b: [n for n in nodes_by_bits.get(b, []) if n not in matmuls] for b in (8, 4)}
        dynamic = [n for n in nodes_by_bits.get(8, []) if n in matmuls]
        weight_only = [n for n in nodes_by_bits.get(4, []) if n in matmuls]
        if static[8] or static[4]:  # first: its calibration needs the shapes of plain ONNX ops
            _quantize_static(float_path, path, graph, static, ranges, calibration)
            graph = load_onnx(path)
            _int4_in_ort_domain(graph)
        if weight_only:
            matmuls_to_int4_blocks(graph, weight_only, ranges[4])
        if dynamic:
            onnx.save(graph, str(float_path))
            quantize_matmuls_dynamic(float_path, path, dynamic, ranges[8])
            graph = load_onnx(path)
        if nodes_by_bits.get(16):
            _store_weights_as_float16(graph, nodes_by_bits[16])
        onnx.save(graph, str(path))
    return ExportResult(path, nodes_by_bits, path.stat().st_size)


def _int4_in_ort_domain(graph: onnx.ModelProto) -> None:
    """Move a standard DequantizeLinear of int4 weights into ORT's own domain.

    ORT's quantizer puts int4 Q/DQ in its ``com.microsoft`` domain when it sees int4 among the
    overrides, but in some graphs (seen with several bit widths mixed in a supernet's subnet) it
    writes the standard op, which only opset 21 defines for int4; raising the whole graph's opset
    would change other ops (ReduceMean's axes became an input in opset 18)."""
    int4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    types = {t.name: t.data_type for t in graph.graph.initializer}
    moved = False
    for node in graph.graph.node:
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and types.get(node.input[0]) in int4:
            node.domain, moved = "com.microsoft", True
    if moved:
        use_ort_domain(graph)


def load_onnx(path: Path) -> onnx.ModelProto:
    """An ONNX file with its external data, if any, read only from files beside it: a location
    such as ``../../x`` or an absolute path in the file is refused, not followed."""
    graph = onnx.load(str(path), load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(graph):
        if external_data_helper.uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            inside(Path(path).parent, location)  # raises for a path that climbs out
    external_data_helper.load_external_data_for_model(graph, str(Path(path).parent))
    return graph


def _float_copy(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """The model without its simulated quantizers (ORT quantizes it itself), and the bits of each
    quantized layer by module name."""
    plain = copy.deepcopy(model)
    _unwrap_all(plain, QuantizedOutput, lambda m: m.module)
    bits = {name: m.bits for name, m in plain.named_modules() if isinstance(m, QuantizedLayer)}
    _unwrap_all(plain, QuantizedLayer, lambda m: m.layer)
    return plain, bits


def _unwrap_all(model: nn.Module, wrapper: type, inner) -> None:
    # One at a time: unwrapping renames the modules below the wrapper.
    while (found := next(((n, m) for n, m in model.named_modules() if isinstance(m, wrapper)), None)):
        set_submodule(model, found[0], inner(found[1]))


def _export_float(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    # The TorchScript exporter folds BatchNorm into convs, names nodes after module paths (we map
    # layers to nodes by those names) and is about 4x faster than the dynamo exporter here.
    # nn.MultiheadAttention's fused inference kernel has no ONNX export; trace its unfused path.
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example_input,), str(path), dynamo=False, opset_version=_OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for this model ({type(exc).__name__}: {exc})") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    graph = load_onnx(path)
    if _inline_constant_identities(graph):
        onnx.save(graph, str(path))


def _inline_constant_identities(graph: onnx.ModelProto) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer; returns how many.

    The exporter shares equal constants through Identity nodes (freshly initialised BatchNorms all
    fold into the same zero bias). ORT's quantizer leaves a bias that is not an initializer in
    float, and ORT then cannot fuse that conv into QLinearConv: the whole layer runs as a float
    conv behind runtime DequantizeLinear nodes, slower than no quantization at all."""
    initializers = {t.name: t for t in graph.graph.initializer}
    inlined = [n for n in graph.graph.node if n.op_type == "Identity" and n.input[0] in initializers]
    for node in inlined:
        copy_ = onnx.TensorProto()
        copy_.CopyFrom(initializers[node.input[0]])
        copy_.name = node.output[0]
        graph.graph.initializer.append(copy_)
        graph.graph.node.remove(node)
    return len(inlined)


def onnx_scope(model: nn.Module, name: str) -> str:
    """The node-name prefix the TorchScript exporter gives ops run by module ``name``.

    Every module that is called contributes one segment (ModuleList and ModuleDict are never
    called, so they contribute none). A segment is the module's own attribute name (``conv``,
    ``block1-0``), except that an index (``0``, from a Sequential or a ModuleList) is appended
    to its parent's segment: ``features/features.1/conv/conv.0/conv.0.0``. Checked against the
    exporter on plain and subclassed Sequentials, wrappers and torchvision models (tests).
    """
    scope, segment = [], ""
    parts = name.split(".")
    for depth, part in enumerate(parts, start=1):
        segment = f"{segment}.{part}" if part.isdigit() and segment else part
        module = model.get_submodule(".".join(parts[:depth]))
        if not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            scope.append(segment)
    return "/" + "/".join(scope) + "/"


def _nodes_by_bits(plain: nn.Module, graph: onnx.ModelProto, quantized: dict[str, int]) -> dict[int, list[str]]:
    """ONNX nodes (Conv/Gemm/MatMul) of each quantized layer, grouped by bit width."""
    layer_ops = [n for n in graph.graph.node if n.op_type in _LAYER_OPS]
    result: dict[int, list[str]] = {}
    for name, bits in quantized.items():
        scope = onnx_scope(plain, name)
        found = [n.name for n in layer_ops if n.name.startswith(scope) and "/" not in n.name[len(scope):]]
        if not found:
            raise ExportError(f"layer {name!r} has no Conv/Gemm/MatMul node under {scope!r} in the exported graph")
        result.setdefault(bits, []).extend(found)
    return result


class _Batches:
    """ORT's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, batches: Sequence[torch.Tensor]) -> None:
        self._items = iter([{"input": onnx_input(b)} for b in batches])

    def get_next(self):
        return next(self._items, None)


def _quantize_static(float_path: Path, out_path: Path, graph: onnx.ModelProto, nodes_by_bits: dict[int, list[str]],
                     ranges: dict[int, tuple[int, int]], calibration: Sequence[torch.Tensor]) -> None:
    """ORT's static QDQ quantization of the named Conv and Gemm nodes (``nodes_by_bits``)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    by_name = {n.name: n for n in graph.graph.node}
    weights = {t.name: t for t in graph.graph.initializer}
    int_nodes = nodes_by_bits.get(8, []) + nodes_by_bits.get(4, [])
    overrides = {}
    # int4 weights always get the simulation's scales; int8 ones where its range is not ORT's own
    # (7-bit weights on a CPU whose int8 kernels saturate: see QuantizationRules).
    explicit = [b for b in (8, 4) if b in ranges and (b == 4 or ranges[b] != (-127, 127))]
    for bits in explicit:
        for node_name in nodes_by_bits.get(bits, []):
            weight = by_name[node_name].input[1]  # per output channel: axis 0 for Conv and Gemm(transB=1)
            overrides[weight] = _channel_overrides(numpy_helper.to_array(weights[weight]), 0, bits, ranges[bits][1])
    try:
        with quiet_quantizer():
            quantize_static(
                str(float_path), str(out_path), _Batches(calibration),
                # Only the layers: a ReLU after an int conv stays a node of its own (ORT then drops it
                # exactly when its output is quantized), so a functional relu simulates the same way.
                quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "Gemm"], nodes_to_quantize=int_nodes,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                # Keep our weight scales: ORT would otherwise widen some to fit an int32 bias.
                extra_options={"TensorQuantOverrides": overrides, "QDQDisableWeightAdjustForInt32Bias": True},
            )
    except Exception as exc:
        raise ExportError(f"ONNX Runtime static quantization failed ({type(exc).__name__}: {exc})") from exc


def _channel_overrides(weight: np.ndarray, axis: int, bits: int, qmax: int) -> list[dict]:
    """Explicit per-channel scales, absmax / qmax: the simulation's rule (see QuantizationRules)."""
    from onnxruntime.quantization import QuantType

    absmax = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)
    scales = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    quant_type = QuantType.QInt4 if bits == 4 else QuantType.QInt8
    return [{"quant_type": quant_type, "axis": axis, "scale": np.float32(s), "zero_point": np.int8(0)}
            for s in scales]


def _store_weights_as_float16(graph: onnx.ModelProto, node_names: list[str]) -> None:
    initializers = {t.name: t for t in graph.graph.initializer}
    targets = set(node_names)
    for node in list(graph.graph.node):
        if node.name not in targets or node.input[1] not in initializers:
            continue
        weight = initializers[node.input[1]]
        half = numpy_helper.from_array(numpy_helper.to_array(weight).astype(np.float16), weight.name + "_fp16")
        graph.graph.initializer.remove(weight)
        graph.graph.initializer.append(half)
        cast = helper.make_node("Cast", [half.name], [weight.name], name=node.name + "_weight_fp16_to_fp32",
                                to=TensorProto.FLOAT)
        graph.graph.node.insert(list(graph.graph.node).index(node), cast)
        del initializers[weight.name]


def ort_session(path: str | Path, *, threads: int = 1):
    """A session of the default target that runs the exported model, with a fixed thread count
    (the default protocol: 1 thread)."""
    from . import targets  # noqa: F401  (registers them)

    try:
        return default_target().inference_session(path, threads=threads)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load {str(path)!r} ({type(exc).__name__}: {exc})") from exc


def run_onnx(session_or_path, inputs: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
    """Logits of an exported model for ``inputs``, in batches (of one item where its int8 MatMuls
    need it: ``matmul_quant``)."""
    session = ort_session(session_or_path) if isinstance(session_or_path, (str, Path)) else session_or_path
    return np.concatenate([run_batch(session, inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def run_batch(session, batch: torch.Tensor) -> np.ndarray:
    """``session``'s outputs for ``batch``, run one item at a time where the export asks for it."""
    step = items_per_run(session) or len(batch)
    return np.concatenate([session.run(None, {"input": onnx_input(batch[i:i + step])})[0]
                           for i in range(0, len(batch), step)])


def export_and_compare(model: nn.Module, example_input: torch.Tensor, path: str | Path, inputs: torch.Tensor, *,
                       calibration: Sequence[torch.Tensor] | None = None
                       ) -> tuple[ExportResult, np.ndarray, np.ndarray]:
    """Export ``model``, then run PyTorch and ONNX Runtime side by side on ``inputs``.

    Returns the export result and both logits; PyTorch runs after export, so its simulated
    quantizers carry the same calibration as ORT's.
    """
    result = export_onnx(model, example_input, path, calibration=calibration)
    return result, predict(model, inputs).numpy(), run_onnx(result.path, inputs)
