"""Short fine-tunes with knowledge distillation from the uncompressed model.

The loss mixes the hard labels with the teacher's temperature-softened outputs (Hinton et al.,
2015): ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)``. The
teacher is fixed and the training images are not augmented, so its logits are computed once per
data set (``teacher_logits``) and every fine-tune reads them by index: distillation then costs no
extra forward pass.

This module knows nothing about the search: a caller may pass ``should_stop``, asked at a few
checkpoints with the accuracy so far, to stop a hopeless fine-tune early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import FinetuneDiverged
from ..techniques import calibrate
from .training import predict, recompute_batchnorm_statistics, top1

__all__ = ["DistillationConfig", "FinetuneResult", "FinetuneDiverged", "teacher_logits", "distill", "evaluate_accuracy"]


@dataclass(frozen=True)
class DistillationConfig:
    steps: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the distillation term; the rest goes to the hard labels
    checkpoints: tuple[float, ...] = (0.34,)  # fractions of ``steps`` at which ``should_stop`` is asked
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps=}")
        if self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"invalid distillation settings: {self.batch_size=}, {self.lr=}, {self.temperature=}, "
                             f"{self.alpha=}")
        if any(not 0.0 < c < 1.0 for c in self.checkpoints):
            raise ValueError(f"checkpoints are fractions of the steps in (0, 1), got {self.checkpoints=}")


@dataclass(frozen=True)
class FinetuneResult:
    accuracy: float  # on the held-out split, at the end (or at the checkpoint that stopped it)
    steps: int  # steps actually run
    stopped_early: bool
    checkpoint_accuracies: tuple[tuple[int, float], ...] = ()  # (step, accuracy) at each checkpoint


@torch.no_grad()
def teacher_logits(teacher: nn.Module, train: TensorDataset) -> torch.Tensor:
    """The teacher's logits for every training image, in dataset order."""
    return predict(teacher, train.tensors[0])


def evaluate_accuracy(model: nn.Module, val: TensorDataset, device: torch.device | str = "cpu") -> float:
    inputs, labels = val.tensors
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(inputs[i:i + 256].to(device)).cpu() for i in range(0, len(inputs), 256)])
    return top1(logits, labels)


def distill(student: nn.Module, train: TensorDataset, val: TensorDataset, soft_targets: torch.Tensor, *,
            config: DistillationConfig, calibration: Sequence[torch.Tensor] | None = None,
            should_stop: Callable[[int, float], bool] | None = None,
            device: torch.device | str = "cpu") -> FinetuneResult:
    """Fine-tune ``student`` in place for ``config.steps`` steps; return its held-out accuracy.

    ``calibration`` batches set the simulated quantizers' ranges first (the same batches calibrate
    ONNX Runtime at export). Raises FinetuneDiverged on a NaN or infinite loss.
    """
    if len(soft_targets) != len(train):
        raise ValueError(f"{len(soft_targets)} teacher logits for {len(train)} training images")
    student.to(device)
    if calibration:
        calibrate(student, [b.to(device) for b in calibration])
    if config.steps == 0:
        return FinetuneResult(_settled_accuracy(student, train, val, config, device), 0, False)
    images, labels = train.tensors
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    checks = sorted({max(1, round(c * config.steps)) for c in config.checkpoints})
    seen: list[tuple[int, float]] = []
    order = torch.randperm(len(images), generator=generator)
    cursor = 0
    temperature = config.temperature
    student.train()
    for step in range(1, config.steps + 1):
        if cursor + config.batch_size > len(order):  # a fresh permutation per epoch, as a shuffling loader does
            order, cursor = torch.randperm(len(images), generator=generator), 0
        index = order[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        x, y, teacher = images[index].to(device), labels[index].to(device), soft_targets[index].to(device)
        logits = student(x)
        hard = F.cross_entropy(logits, y)
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                        reduction="batchmean", log_target=True) * temperature ** 2
        loss = (1.0 - config.alpha) * hard + config.alpha * soft
        if not math.isfinite(loss.item()):
            raise FinetuneDiverged(f"loss is {loss.item()} at step {step} of {config.steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if should_stop is not None and step in checks:
            accuracy = _settled_accuracy(student, train, val, config, device)
            seen.append((step, accuracy))
            if should_stop(step, accuracy):
                return FinetuneResult(accuracy, step, True, tuple(seen))
            student.train()
    accuracy = _settled_accuracy(student, train, val, config, device)
    return FinetuneResult(accuracy, config.steps, False, tuple(seen))


def _settled_accuracy(student: nn.Module, train: TensorDataset, val: TensorDataset, config: DistillationConfig,
                      device) -> float:
    # BatchNorm running averages lag behind weights that just moved (and pruning changed every
    # statistic), so they are recomputed exactly before any evaluation.
    recompute_batchnorm_statistics(student, train, batches=8, batch_size=config.batch_size, seed=config.seed)
    return evaluate_accuracy(student, val, device)
