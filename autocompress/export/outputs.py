"""A model's outputs in PyTorch and in ONNX Runtime over a whole split, read in batches, so that
scoring an export holds one row of outputs per item, never the split's images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..hardware.onnx_export import ort_session, run_batch
from ..train.data import make_loader

__all__ = ["SideBySide", "onnx_outputs", "outputs_beside"]


@dataclass(frozen=True)
class SideBySide:
    torch: torch.Tensor  # PyTorch's outputs, one row per item
    onnx: torch.Tensor  # ONNX Runtime's
    targets: torch.Tensor


@torch.no_grad()
def outputs_beside(model: nn.Module, onnx_path: Path, dataset: Dataset, *, batch_size: int = 64) -> SideBySide:
    """``model``'s outputs and its export's, batch by batch on the same inputs."""
    session = ort_session(onnx_path)
    model.eval()
    torch_rows, onnx_rows, targets = [], [], []
    for images, labels in make_loader(dataset, batch_size=batch_size):
        torch_rows.append(model(images).cpu())
        onnx_rows.append(torch.from_numpy(run_batch(session, images)))
        targets.append(torch.as_tensor(labels))
    return SideBySide(torch.cat(torch_rows), torch.cat(onnx_rows), torch.cat(targets))


def onnx_outputs(onnx_path: Path, dataset: Dataset, *, batch_size: int = 64) -> torch.Tensor:
    session = ort_session(onnx_path)
    return torch.cat([torch.from_numpy(run_batch(session, images)) for images, _ in make_loader(dataset, batch_size=batch_size)])
