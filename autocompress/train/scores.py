"""Scores: what a task calls good, higher better (top-1 accuracy by default), and the model
outputs they read, gathered in batches.

A score is any callable ``(outputs, targets) -> number`` over a whole split's outputs; ``Score``
gives it the name that the front, ``pareto.csv``, the study and the card print, and refuses in one
line a value that is no finite number, where it would otherwise be ranked as one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import AutocompressError

__all__ = ["TOP1", "Score", "as_score", "model_outputs", "top1", "top5"]


def top1(logits, targets) -> float:
    """The share of rows whose argmax is the target: labels, or another model's logits (then the
    share of rows both models rank first alike). Takes torch tensors or numpy arrays."""
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    if targets.dim() > 1:
        targets = targets.argmax(1)
    return float((logits.argmax(1) == targets).float().mean())


def top5(logits, targets) -> float:
    """The share of rows whose target is among the five highest outputs."""
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    best = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return float((best == targets.view(-1, 1)).any(1).float().mean())


@dataclass(frozen=True)
class Score:
    function: Callable
    name: str

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise AutocompressError(f"score {self.function!r} is not callable; give a function (outputs, targets) -> "
                                    "number, higher better", parameters=("score",))
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise AutocompressError(f"score name {self.name!r}: give letters, digits, '_' or '-' (it heads a column)",
                                    parameters=("score",))

    def __call__(self, outputs, targets) -> float:
        try:
            value = self.function(outputs, targets)
        except Exception as exc:  # the user's code: one line naming it and what it was given
            first = (str(exc).strip().splitlines() or [""])[0]
            raise AutocompressError(f"score {self.name!r} raised {type(exc).__name__}: {first} (given outputs of shape "
                                    f"{tuple(torch.as_tensor(outputs).shape)} and targets of shape "
                                    f"{tuple(torch.as_tensor(targets).shape)}); fix the score function",
                                    parameters=("score",)) from exc
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(float(value)):
            raise AutocompressError(f"score {self.name!r} returned {value!r}, not a finite number; return one number, "
                                    "higher better (a NaN often means an empty split or a division by zero)",
                                    parameters=("score",))
        return float(value)


TOP1 = Score(top1, "accuracy")  # top-1 accuracy, the default, by the name results have always used


def as_score(score: Score | Callable | None, name: str | None = None) -> Score:
    """``score`` as a Score: named ``name``, else by its function's name; None: top-1."""
    if score is None:
        return TOP1
    if isinstance(score, Score):
        return score if name is None else Score(score.function, name)
    return Score(score, name or getattr(score, "__name__", "score").strip("<>").replace("lambda", "score"))


@torch.no_grad()
def model_outputs(model: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu",
                  batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s outputs on every item of ``dataset``, in order, and the items' targets; in
    batches of a training batch's size, so that scoring at a large input size needs no more memory
    than training did."""
    from .data import make_loader

    model.eval()
    outputs, targets = [], []
    for images, labels in make_loader(dataset, batch_size=batch_size):
        outputs.append(model(images.to(device)).cpu())
        targets.append(torch.as_tensor(labels))
    if not outputs:
        raise AutocompressError("a split to score holds no items; give a validation and test split with at least one "
                                "item each", parameters=("val",))
    return torch.cat(outputs), torch.cat(targets)
