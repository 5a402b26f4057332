"""Will it fit in memory? Estimates made before a data set is resized or a model trained, so that
a too-large input size is refused in one line with its figures instead of killed by the kernel.

The model's activations are counted on a forward pass with fake tensors (shapes and types only:
no memory is taken), so a model too large to run even once is still priced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import AutocompressError

__all__ = ["TrainingMemory", "available_memory_bytes", "check_fits", "gib", "training_memory"]

log = logging.getLogger(__name__)

# Weights, their gradients and Adam's two moments; the teacher of a distillation holds one more copy.
_COPIES_OF_WEIGHTS = 5
# Activations kept for the backward pass, and the gradients flowing back through them.
_ACTIVATION_FACTOR = 2


def gib(n_bytes: float) -> str:
    """A size in GiB, or in MiB below one GiB."""
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def available_memory_bytes() -> int | None:
    """What this process may still allocate: the machine's available memory, or its cgroup's limit
    when that is lower (a container); None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits(needed: int, what: str, fix: str, *, parameters: tuple[str, ...] = ()) -> None:
    """Raise one line when ``needed`` bytes exceed what is available (``what`` needs them; ``fix``)."""
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise AutocompressError(f"{what} needs about {gib(needed)} of memory, and {gib(available)} is available "
                                f"here; {fix}", parameters=parameters)


@dataclass(frozen=True)
class TrainingMemory:
    weights_bytes: int
    activation_bytes_per_sample: int
    batch_size: int

    @property
    def total_bytes(self) -> int:
        return (_COPIES_OF_WEIGHTS * self.weights_bytes
                + _ACTIVATION_FACTOR * self.batch_size * self.activation_bytes_per_sample)

    def describe(self) -> str:
        return (f"{gib(self.weights_bytes)} of weights and {gib(self.activation_bytes_per_sample)} of activations "
                f"per image, at batch size {self.batch_size}")


def training_memory(model: nn.Module, example: torch.Tensor, *, batch_size: int) -> TrainingMemory | None:
    """The memory a training step of ``model`` takes at ``example``'s shape; None when the model's
    forward cannot run on fake tensors (the real first run then says what is wrong)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    outputs = []

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            outputs.append(output.numel() * output.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
            model.eval()(mode.from_tensor(example))
    except Exception as exc:  # an op fake tensors do not support: no estimate
        log.debug("no memory estimate for the model: %s", exc)
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return TrainingMemory(weights, sum(outputs) // max(1, example.shape[0]), batch_size)
