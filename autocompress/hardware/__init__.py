"""Latency on a target runtime: the measurement protocol, profiling, and the latency predictor."""

from .kernels import Kernel, kernels_of_candidate, kernels_of_model
from .measure import LatencyMeasurement, machine_info, measure_latency
from .predictor import LatencyPrediction, LatencyPredictor, NotFittedError
from .store import (
    DifferentMachineWarning,
    HardwareModel,
    find_hardware_model,
    fit_hardware_model,
    load_hardware_model,
)

__all__ = [
    "DifferentMachineWarning", "HardwareModel", "Kernel", "LatencyMeasurement", "LatencyPrediction",
    "LatencyPredictor", "NotFittedError", "find_hardware_model", "fit_hardware_model", "kernels_of_candidate",
    "kernels_of_model", "load_hardware_model", "machine_info", "measure_latency",
]
