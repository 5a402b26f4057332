"""Data sets: ``digits`` (ships with scikit-learn, the embedded default), ``cifar10``, ``imagefolder:PATH``.

Every loader returns images as float tensors of shape (3, S, S), normalised to roughly zero mean,
so the same torchvision model accepts any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .memory import check_fits
from ..errors import DatasetError

__all__ = ["DatasetSplits", "load_dataset", "make_loader", "calibration_batches"]

_SPLIT_SEED = 0  # fixed: the validation split must be the same in every run and process


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int


def load_dataset(name: str, *, image_size: int = 32, val_fraction: float = 0.2, root: str | Path = "data") -> DatasetSplits:
    """Load a data set by name, split into train and a held-out validation part."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie in (0, 1), got {val_fraction=}")
    if image_size < 8:
        raise DatasetError(f"image_size {image_size} is too small; use 8 or more", parameters=("image_size",))
    if name == "digits":
        return _digits(image_size, val_fraction)
    if name == "cifar10":
        return _cifar10(image_size, Path(root))
    if name.startswith("imagefolder:"):
        return _imagefolder(Path(name.split(":", 1)[1]), image_size, val_fraction)
    folder = f" (for the folder {name} write imagefolder:{name})" if Path(name).is_dir() else ""
    raise DatasetError(f"unknown data set {name!r}; use 'digits', 'cifar10' or 'imagefolder:PATH'{folder}")


def _check_fits(count: int, image_size: int) -> None:
    # The resized images, and the copy normalising them makes, are held at once.
    check_fits(2 * count * 3 * image_size * image_size * 4, f"holding the {count} images of the data set at "
               f"image_size {image_size}", "give a smaller one", parameters=("image_size",))


def _resize_to_rgb(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] -> (N, 3, S, S) normalised to about [-1, 1]."""
    _check_fits(len(images), image_size)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return ((images - 0.5) / 0.5).contiguous()


def _stratified_split(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train_idx, val_idx = train_test_split(index, test_size=val_fraction, stratify=labels, random_state=_SPLIT_SEED)
    return np.sort(train_idx), np.sort(val_idx)


def _digits(image_size: int, val_fraction: float) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    images = _resize_to_rgb(images, image_size)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, val_idx = _stratified_split(bunch.target, val_fraction)
    return DatasetSplits(
        name="digits",
        train=TensorDataset(images[train_idx], labels[train_idx]),
        val=TensorDataset(images[val_idx], labels[val_idx]),
        num_classes=10,
        image_size=image_size,
    )


def _cifar10(image_size: int, root: Path) -> DatasetSplits:
    import torchvision

    splits = {}
    for train in (True, False):
        try:
            ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=False)
        except RuntimeError as exc:
            raise DatasetError(
                f"cifar10 is not under {str(root)!r}; download it where a network exists "
                f"(torchvision.datasets.CIFAR10({str(root)!r}, download=True)) and copy the folder here"
            ) from exc
        images = torch.tensor(ds.data, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        splits[train] = TensorDataset(_resize_to_rgb(images, image_size), torch.tensor(ds.targets, dtype=torch.long))
    return DatasetSplits("cifar10", splits[True], splits[False], 10, image_size)


def _imagefolder(path: Path, image_size: int, val_fraction: float) -> DatasetSplits:
    import torchvision

    if not path.is_dir():
        raise DatasetError(f"image folder {str(path)!r} does not exist; give imagefolder:PATH with one sub-folder per class")
    try:
        folder = torchvision.datasets.ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"image folder {str(path)!r} has no images in class sub-folders ({exc}); put each "
                           "class's images in a sub-folder named after it (PATH/cat/1.png, PATH/dog/2.png)") from exc
    if len(folder.classes) < 2:
        raise DatasetError(f"image folder {str(path)!r} has one class sub-folder ({folder.classes[0]!r}); a "
                           "classifier needs at least 2: add one sub-folder of images per class")
    _check_fits(len(folder.samples), image_size)
    images = torch.stack([_image_tensor(file, image_size) for file, _ in folder.samples])
    labels = np.array(folder.targets)
    if min(np.bincount(labels)) < 2:
        raise DatasetError(f"image folder {str(path)!r} needs at least 2 images per class to hold some out for validation")
    train_idx, val_idx = _stratified_split(labels, val_fraction)
    images = _resize_to_rgb(images, image_size)
    targets = torch.tensor(labels, dtype=torch.long)
    return DatasetSplits(
        f"imagefolder:{path}", TensorDataset(images[train_idx], targets[train_idx]),
        TensorDataset(images[val_idx], targets[val_idx]), len(folder.classes), image_size,
    )


def _image_tensor(file: str, image_size: int) -> torch.Tensor:
    """One image file as a (3, S, S) tensor in [0, 1]; a file that is no image names itself."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    try:
        with Image.open(file) as img:
            return TF.to_tensor(TF.resize(img.convert("RGB"), [image_size, image_size], antialias=True))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"image folder file {file!r} is not a readable image ({type(exc).__name__}); remove it "
                           "from the folder or replace it") from exc


def make_loader(dataset: Dataset, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def calibration_batches(dataset: Dataset, *, num_samples: int = 256, batch_size: int = 32) -> list[torch.Tensor]:
    """The first ``num_samples`` inputs, in fixed batches: the same data calibrates PyTorch and ORT."""
    inputs = [dataset[i][0] for i in range(min(num_samples, len(dataset)))]
    return [torch.stack(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
