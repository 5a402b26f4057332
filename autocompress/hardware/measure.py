"""The one latency measurement protocol: a fixed ORT session, warm-up runs, then timed runs.

Every latency autocompress reports (benchmarks, predictor training data, export cards) comes
from ``measure_latency``, so figures are comparable with each other.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["LatencyMeasurement", "measure_latency", "machine_info"]


@dataclass(frozen=True)
class LatencyMeasurement:
    median_ms: float
    p90_ms: float
    noise: float  # median absolute deviation / median: 0.01 means runs scatter by about 1%
    runs: int
    threads: int
    provider: str

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(onnx_path: str | Path, input_shape: tuple[int, ...], *, threads: int = 1, warmup: int = 10,
                    runs: int = 50, provider: str = "CPUExecutionProvider") -> LatencyMeasurement:
    """Median and p90 latency (ms) of one inference on a random input of ``input_shape``."""
    import onnxruntime as ort

    if runs < 3 or warmup < 0 or threads < 1:
        raise ValueError(f"need runs >= 3, warmup >= 0, threads >= 1; got {runs=} {warmup=} {threads=}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=[provider])
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(times)
    mad = statistics.median(abs(t - median) for t in times)
    return LatencyMeasurement(median, float(np.percentile(times, 90)), mad / median, runs, threads, provider)


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
