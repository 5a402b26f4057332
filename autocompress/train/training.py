"""Plain supervised training and evaluation (the baseline before any compression)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .data import make_loader
from .scores import model_outputs, top1

__all__ = ["TRAINING_LR", "train_classifier", "recompute_batchnorm_statistics", "predict", "accuracy"]

TRAINING_LR = 3e-3  # AdamW's learning rate for a network trained on its labels (baselines, retrained exports)


def train_classifier(model: nn.Module, dataset: Dataset, *, steps: int, batch_size: int = 64, lr: float = TRAINING_LR,
                     seed: int = 0, progress: bool = False) -> nn.Module:
    """Train with AdamW and a cosine schedule for a fixed number of steps; returns the model in eval mode."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps=}")
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batches = itertools.cycle(make_loader(dataset, batch_size=batch_size, shuffle=True, seed=seed))
    for _ in tqdm(range(steps), desc="baseline training", unit="step", disable=not progress):
        images, labels = next(batches)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    recompute_batchnorm_statistics(model, dataset, batch_size=batch_size, seed=seed)
    return model.eval()


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, dataset: Dataset, *, batches: int = 20, batch_size: int = 64,
                                   seed: int = 0) -> nn.Module:
    """Replace BatchNorm running statistics by exact averages over a few training batches.

    After short training (or pruning) the running averages lag behind the weights, badly so
    with a small BN momentum (MobileNetV3 uses 0.01); evaluation then looks broken.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches below
    device = next(model.parameters()).device
    model.train()
    for images, _ in itertools.islice(make_loader(dataset, batch_size=batch_size, shuffle=True, seed=seed), batches):
        model(images.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def accuracy(model: nn.Module, dataset: Dataset) -> float:
    """Top-1 accuracy on ``dataset``, read in batches."""
    return top1(*model_outputs(model, dataset))
