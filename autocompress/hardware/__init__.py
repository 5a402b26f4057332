"""Measuring and (later) predicting latency on a target runtime."""

from .measure import LatencyMeasurement, machine_info, measure_latency

__all__ = ["LatencyMeasurement", "machine_info", "measure_latency"]
