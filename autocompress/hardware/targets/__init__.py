"""Targets, one module each; importing this package registers them (``core.target``).

A second target (ORT's CUDA provider, TensorRT) is one more module here: see
docs/extending.md, "Add a target".
"""

from . import ort_cpu  # noqa: F401  (registers itself)
from .ort_cpu import ORT_CPU

__all__ = ["ORT_CPU"]
