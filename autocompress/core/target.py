"""The Target interface: a runtime on a kind of device, and everything the product assumes of it.

A target is one module under ``autocompress/hardware/targets/`` that subclasses ``Target`` and
registers an instance. It says how to open a timed session, how to identify this machine and
match it against the one a hardware model was measured on, the quantization rules its integer
kernels run (which the simulation follows, whatever the host), what its exported model needs, the
features its latency predictor prices kernels by, and what a technique does to its latency.

The interface lives here, below the techniques, so that applying a Candidate can follow the
target's rules without importing the hardware package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["QuantizationRules", "Target", "default_target", "onnx_input", "register_target", "registered_targets",
           "target"]

DEFAULT_TARGET = "ort-cpu"


@dataclass(frozen=True)
class QuantizationRules:
    """The integer weight ranges a target's int kernels compute with.

    int8 defaults to ORT's own symmetric range, [-127, 127]; a CPU whose int8 kernels saturate
    runs 7-bit weights, [-64, 64] (ORT's ``reduce_range``). For int4 ORT would use [-8, 7], whose
    scale maps the largest weight to exactly 7.5, a rounding tie that float noise in BatchNorm
    folding breaks differently on each side; [-7, 7] maps it to 7, and export hands ORT these
    scales.
    """

    int8: tuple[int, int] = (-127, 127)
    int4: tuple[int, int] = (-7, 7)

    def weight_range(self, bits: int) -> tuple[int, int]:
        if bits not in (8, 4):
            raise ValueError(f"integer weight ranges exist for 8 and 4 bits, got {bits=}")
        return self.int8 if bits == 8 else self.int4


class Target(ABC):
    """One runtime and device kind, e.g. ``ort-cpu``: ONNX Runtime's CPU execution provider."""

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def machine(self) -> dict[str, Any]:
        """What a latency on this target depends on besides the model, for this host."""

    @abstractmethod
    def machine_differences(self, measured: dict, here: dict) -> list[str]:
        """What differs between two ``machine()`` records in what sets a latency, one phrase
        each; [] for the same machine class."""

    @abstractmethod
    def inference_session(self, onnx_path, *, threads: int = 1):
        """A session that runs the exported model (``session.run(None, feed)``), as the target runs it."""

    def open_session(self, onnx_path, input_shape: tuple[int, ...], *, threads: int):
        """A session ready to time, and the feed it runs on: ``(session, {input name: array})``."""
        import numpy as np

        session = self.inference_session(onnx_path, threads=threads)
        first = session.get_inputs()[0]
        if "int" in first.type:  # token ids: every valid id costs the same lookup
            return session, {first.name: np.ones(input_shape, dtype=np.int64)}
        return session, {first.name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}

    @abstractmethod
    def quantization_rules(self, machine: dict | None) -> QuantizationRules:
        """The integer ranges the target's kernels run on ``machine`` (None: this host)."""

    @property
    def session_description(self) -> str:
        """How a model card names the runtime that timed it."""
        return self.name

    def kernel_features(self, table):
        """The predictor's features of each row of ``hardware.kernels.kernel_table``."""
        raise NotImplementedError(f"target {self.name!r} does not price kernels yet")

    def latency_note(self, kind: str) -> str | None:
        """What technique ``kind`` does to latency on this target, where that is not obvious
        (``inspect`` shows it); None: its effect is in the kernels the predictor prices."""
        return None


_TARGETS: dict[str, Target] = {}


def register_target(instance: Target) -> Target:
    if not isinstance(instance, Target):
        raise TypeError(f"register_target() takes a Target instance, got {type(instance).__name__}")
    _TARGETS[instance.name] = instance
    return instance


def registered_targets() -> list[str]:
    return sorted(_TARGETS)


def target(name: str) -> Target:
    try:
        return _TARGETS[name]
    except KeyError:
        raise KeyError(f"no target {name!r}; registered: {registered_targets()}") from None


def default_target() -> Target:
    return target(DEFAULT_TARGET)


def onnx_input(batch):
    """The array an exported model is fed for ``batch`` (a tensor): float32 for images and other
    real-valued inputs, int64 for token ids, the types the exporter wrote."""
    import torch

    array = batch.detach().cpu()
    return (array.float() if array.is_floating_point() else array.to(torch.int64)).numpy()
