"""``ort-cpu``: ONNX Runtime's CPU execution provider, the first Target.

What it assumes, in one place:
- sessions: one model per session, ``intra_op_num_threads`` threads, sequential execution, all
  graph optimisations (what a deployment runs);
- the machine class: CPU model, ISA flags and ORT version set a latency (cores do not, at a fixed
  thread count);
- quantization: QDQ format, weights per output channel, symmetric; int8 weights in 7 bits where
  the CPU's int8 kernels saturate (x86 without VNNI); activations uint8 per tensor;
- export: float ONNX, then ORT's static quantizer for the int layers (``hardware.onnx_export``);
- latency: kernels priced by shape, bits and channel alignment (``hardware.kernels``); sparse
  weights run as dense kernels.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


from ...core.target import QuantizationRules, Target, register_target

__all__ = ["ORT_CPU", "OrtCpu", "int8_weights_saturate", "machine_differences", "machine_info"]

PROVIDER = "CPUExecutionProvider"


class OrtCpu(Target):
    name = "ort-cpu"
    description = "ONNX Runtime, CPUExecutionProvider"

    def machine(self) -> dict:
        return machine_info()

    def machine_differences(self, measured: dict, here: dict) -> list[str]:
        return machine_differences(measured, here)

    def inference_session(self, onnx_path, *, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return ort.InferenceSession(str(onnx_path), options, providers=[PROVIDER])

    def quantization_rules(self, machine: dict | None) -> QuantizationRules:
        saturate = int8_weights_saturate(machine if machine is not None else machine_info())
        return QuantizationRules(int8=(-64, 64)) if saturate else QuantizationRules()

    @property
    def session_description(self) -> str:
        return f"ONNX Runtime {PROVIDER}"

    def kernel_features(self, table):
        from ..kernels import kernel_features

        return kernel_features(table)

    def latency_note(self, kind: str) -> str | None:
        if kind == "sparsity":
            return "size only: ort-cpu runs sparse weights as dense kernels, so latency is unchanged"
        return None


def int8_weights_saturate(machine: dict) -> bool:
    """Whether ORT's int8 kernels on ``machine`` (a ``machine_info`` record) can saturate: x86
    without VNNI. There ORT multiplies uint8 inputs by int8 weights with VPMADDUBSW, which adds
    pairs of products in int16, and 255 x 127 x 2 overflows it; with 7-bit weights it cannot
    (255 x 64 x 2 < 32767). ORT's own advice for such machines is 7-bit weights. With VNNI (and on
    ARM) the products add up in int32."""
    x86 = machine.get("machine", "").lower() in ("x86_64", "amd64", "i686", "x86")
    isa = machine.get("isa", {})
    return x86 and not (isa.get("avx512_vnni") or isa.get("avx_vnni"))


def machine_info() -> dict:
    """What a latency depends on besides the model: CPU model and ISA, ORT version, cores."""
    import onnxruntime as ort

    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = {name: name in flags for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")}
    return {"cpu": model, "isa": isa, "cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "machine": platform.machine()}


def machine_differences(measured: dict, here: dict) -> list[str]:
    """What differs between two ``machine_info`` records in what sets a latency (CPU model and ISA,
    ORT version), one phrase each; [] for the same machine class."""
    return [f"{key}: {measured.get(key)!r} against {here.get(key)!r}" for key in ("cpu", "isa", "onnxruntime")
            if measured.get(key) != here.get(key)]


ORT_CPU = register_target(OrtCpu())
