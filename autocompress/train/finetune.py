"""Short fine-tunes with knowledge distillation from the uncompressed model, and scoring.

The default loss mixes the hard labels with the teacher's temperature-softened outputs (Hinton et
al., 2015): ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)``; a task
whose outputs are not class logits passes its own (``loss(student_out, teacher_out, targets)``).
Batches stream from a loader, and the teacher's outputs are made per batch (``TeacherOutputs``):
kept by image where the training items are always the same (no augmentation), so distillation
then costs no extra forward pass after the first epoch, and memory holds one row of outputs per
image at most, never the images.

This module knows nothing about the search: a caller may pass ``should_stop``, asked at a few
checkpoints with the score so far, to stop a hopeless fine-tune early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..errors import FinetuneDiverged
from ..techniques import calibrate
from .data import loader_workers, make_loader
from .images import unaugmented
from .scores import TOP1, Score, model_outputs
from .training import recompute_batchnorm_statistics

__all__ = ["DistillationConfig", "FinetuneResult", "FinetuneDiverged", "TeacherOutputs", "distill",
           "distillation_loss", "evaluate", "evaluate_accuracy"]

_CACHE_LIMIT_BYTES = 256 * 2**20  # teacher outputs kept by image up to this size; beyond, made per batch


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
    accuracy: float  # the score on the validation split, at the end (or at the checkpoint that stopped it)
    steps: int  # steps actually run
    stopped_early: bool
    checkpoint_accuracies: tuple[tuple[int, float], ...] = ()  # (step, score) at each checkpoint


class TeacherOutputs:
    """The teacher's outputs for training batches: by image index where ``cache`` (the items are
    always the same), else made for each batch."""

    def __init__(self, teacher: nn.Module, train: Dataset, *, cache: bool) -> None:
        self.teacher = teacher.eval()
        self.count = len(train)
        self.cache = cache
        self._rows: torch.Tensor | None = None
        self._known: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if not self.cache or index is None:
            return self.teacher(images)
        if self._rows is not None and bool(self._known[index].all()):
            return self._rows[index].to(images.device)
        outputs = self.teacher(images)
        if self._rows is None:
            if outputs.dim() != 2 or self.count * outputs.shape[1] * 4 > _CACHE_LIMIT_BYTES:
                self.cache = False
                return outputs
            self._rows = torch.zeros(self.count, outputs.shape[1])
            self._known = torch.zeros(self.count, dtype=torch.bool)
        self._rows[index], self._known[index] = outputs.float().cpu(), True
        return outputs

    def __getstate__(self) -> dict:
        # what a Ray worker needs is the teacher; it fills its own rows
        return {**self.__dict__, "_rows": None, "_known": None}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, temperature: float,
                      alpha: float) -> torch.Tensor:
    hard = F.cross_entropy(student, labels)
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return (1.0 - alpha) * hard + alpha * soft


def evaluate(model: nn.Module, dataset: Dataset, *, score: Score = TOP1, device: torch.device | str = "cpu") -> float:
    """``score`` of ``model``'s outputs on ``dataset``, read in batches."""
    outputs, targets = model_outputs(model, dataset, device=device)
    return score(outputs, targets)


def evaluate_accuracy(model: nn.Module, val: Dataset, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy on ``val``."""
    return evaluate(model, val, device=device)


class _Indexed(Dataset):
    """``dataset``'s items with their index first, so a batch's teacher outputs can be found again."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return i, image, label


def _batches(train: Dataset, config: DistillationConfig):
    """(index, images, labels) for ever: a fresh shuffle per epoch, as the loader's seed orders them."""
    epoch = 0
    while True:
        loader = make_loader(_Indexed(train), batch_size=config.batch_size, shuffle=True,
                             seed=config.seed + epoch, workers=loader_workers(train))
        for batch in loader:
            # a short last batch would weigh its images more; a set smaller than a batch has only that one
            if len(batch[0]) == config.batch_size or len(train) < config.batch_size:
                yield batch
        epoch += 1


def distill(student: nn.Module, train: Dataset, val: Dataset, teacher: TeacherOutputs, *,
            config: DistillationConfig, calibration: Sequence[torch.Tensor] | None = None,
            should_stop: Callable[[int, float], bool] | None = None, score: Score = TOP1,
            loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
            device: torch.device | str = "cpu") -> FinetuneResult:
    """Fine-tune ``student`` in place for ``config.steps`` steps; return its ``score`` on ``val``.

    ``calibration`` batches set the simulated quantizers' ranges first (the same batches calibrate
    ONNX Runtime at export). Raises FinetuneDiverged on a NaN or infinite loss.
    """
    student.to(device)
    if calibration:
        calibrate(student, [b.to(device) for b in calibration])
    if config.steps == 0:
        return FinetuneResult(_settled_score(student, train, val, config, score, device), 0, False)
    if loss is None:
        def loss(out, soft, labels):
            return distillation_loss(out, soft, labels, temperature=config.temperature, alpha=config.alpha)
    torch.manual_seed(config.seed)  # the augmentation's draws
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    checks = sorted({max(1, round(c * config.steps)) for c in config.checkpoints})
    seen: list[tuple[int, float]] = []
    batches = _batches(train, config)
    student.train()
    for step in range(1, config.steps + 1):
        index, x, y = next(batches)
        x, y = x.to(device), y.to(device)
        value = loss(student(x), teacher(x, index).to(device), y)
        if not math.isfinite(value.item()):
            raise FinetuneDiverged(f"loss is {value.item()} at step {step} of {config.steps}")
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        if should_stop is not None and step in checks:
            now = _settled_score(student, train, val, config, score, device)
            seen.append((step, now))
            if should_stop(step, now):
                return FinetuneResult(now, step, True, tuple(seen))
            student.train()
    return FinetuneResult(_settled_score(student, train, val, config, score, device), config.steps, False, tuple(seen))


def _settled_score(student: nn.Module, train: Dataset, val: Dataset, config: DistillationConfig, score: Score,
                   device) -> float:
    # BatchNorm running averages lag behind weights that just moved (and pruning changed every
    # statistic), so they are recomputed exactly, on the images as they are, before any scoring.
    recompute_batchnorm_statistics(student, unaugmented(train), batches=8, batch_size=config.batch_size,
                                   seed=config.seed)
    return evaluate(student, val, score=score, device=device)
