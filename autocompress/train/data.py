"""Data sets by name: ``digits`` (ships with scikit-learn, the embedded default), the standard sets
``mnist``, ``fashion-mnist``, ``cifar10`` and ``cifar100`` read from local files
(``standard_sets``), and ``imagefolder:PATH``.

Every data set has three splits: ``train``, ``val`` (what the search, the repairs and
``--best-under`` choose on) and ``test`` (what no choice saw: the data set's official test split
where it has one, else a share held out by a fixed seed, as ``test_source`` says). Items are
``(image, label)`` with ``image`` a (3, S, S) float tensor normalised to about [-1, 1], made when
it is read (``images``), so the same torchvision model accepts any of them and memory does not grow
with the image size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError
from .images import NO_AUGMENTATION, Augmentation, ImageArray, ImageFiles, unaugmented

__all__ = ["DatasetSplits", "calibration_batches", "load_dataset", "loader_workers", "make_loader"]

_SPLIT_SEED = 0  # fixed: the splits must be the same in every run and process
TEST_FRACTION = 0.2  # of a data set with no test split of its own, held out by _SPLIT_SEED
MAX_VAL = 5000  # validation images: more would cost every trial's scoring more than it sharpens it
STANDARD_SETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int
    test: Dataset | None = None
    test_source: str = ""  # where ``test`` comes from, in words (recorded beside its scores)
    augmentation: Augmentation = NO_AUGMENTATION  # what ``train``'s items get

    def describe(self) -> dict:
        """What a search records of its data: the sizes of its splits and where the test split comes from."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test) if self.test else 0,
                "test_source": self.test_source, "augmentation": {"crop": self.augmentation.crop,
                                                                  "flip": self.augmentation.flip}}


def load_dataset(name: str, *, image_size: int = 32, val_fraction: float = 0.2, root: str | Path = "data",
                 augment: bool | None = None) -> DatasetSplits:
    """A data set by name, in train, validation and test splits. ``augment``: random crops (and
    flips, where a mirrored image keeps its class) on the training items; None: the data set's
    default (on for the standard sets but digits and MNIST's flips, and for image folders)."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie in (0, 1), got {val_fraction=}")
    if image_size < 8:
        raise DatasetError(f"image_size {image_size} is too small; use 8 or more", parameters=("image_size",))
    if name == "digits":
        return _digits(image_size, val_fraction, augment)
    if name in STANDARD_SETS:
        from .standard_sets import read_standard_set

        read = read_standard_set(name, Path(root))
        augmentation = _augmentation(augment, crop=True, flip=read.flips)
        train = ImageArray(read.train_pixels, read.train_labels, image_size=image_size)
        test = ImageArray(read.test_pixels, read.test_labels, image_size=image_size)
        train_idx, val_idx = _stratified_split(read.train_labels, _val_share(val_fraction, len(read.train_labels)))
        return DatasetSplits(name, train.subset(train_idx, augmentation=augmentation), train.subset(val_idx),
                             read.num_classes, image_size, test, f"the official test split ({read.source})",
                             augmentation)
    if name.startswith("imagefolder:"):
        return _imagefolder(Path(name.split(":", 1)[1]), image_size, val_fraction, augment)
    folder = f" (for the folder {name} write imagefolder:{name})" if Path(name).is_dir() else ""
    raise DatasetError(f"unknown data set {name!r}; use 'digits', {', '.join(repr(s) for s in STANDARD_SETS)} or "
                       f"'imagefolder:PATH'{folder}")


def _augmentation(augment: bool | None, *, crop: bool, flip: bool) -> Augmentation:
    if augment is False:
        return NO_AUGMENTATION
    return Augmentation(crop=crop or bool(augment), flip=flip)


def _val_share(val_fraction: float, count: int) -> float:
    return min(val_fraction, MAX_VAL / count)


def _stratified_split(labels: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(the rest, a stratified ``share`` of it), as sorted positions into ``labels``."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    rest, held = train_test_split(index, test_size=share, stratify=labels, random_state=_SPLIT_SEED)
    return np.sort(rest), np.sort(held)


def _three_way(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) positions: validation first (as data sets were split before they had a
    test split, so the validation images stay the same), then the test share of the whole from the rest."""
    share = _val_share(val_fraction, len(labels))
    rest, val = _stratified_split(labels, share)
    train, test = _stratified_split(labels[rest], TEST_FRACTION / (1.0 - share))
    return rest[train], val, rest[test]


def _held_out(val_fraction: float, count: int) -> str:
    return (f"held out: a stratified {TEST_FRACTION:.0%} of the data set by seed {_SPLIT_SEED} (validation: "
            f"{_val_share(val_fraction, count):.0%})")


def _digits(image_size: int, val_fraction: float, augment: bool | None) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
    images = ImageArray(pixels, bunch.target, image_size=image_size)
    train_idx, val_idx, test_idx = _three_way(bunch.target, val_fraction)
    augmentation = _augmentation(augment, crop=False, flip=False)  # a mirrored digit is another digit
    return DatasetSplits("digits", images.subset(train_idx, augmentation=augmentation), images.subset(val_idx), 10,
                         image_size, images.subset(test_idx), _held_out(val_fraction, len(bunch.target)),
                         augmentation)


def _imagefolder(path: Path, image_size: int, val_fraction: float, augment: bool | None) -> DatasetSplits:
    from .standard_sets import read_image_folder

    folder = read_image_folder(path)
    every = ImageFiles(folder.train, image_size=image_size)
    labels = every.targets()
    train_idx, val, test = np.arange(len(labels)), None, None
    if folder.val is None and folder.test is None:
        train_idx, val_idx, test_idx = _three_way(labels, val_fraction)
        val, test, source = every.subset(val_idx), every.subset(test_idx), _held_out(val_fraction, len(labels))
    elif folder.val is None:
        train_idx, val_idx = _stratified_split(labels, _val_share(val_fraction, len(labels)))
        val = every.subset(val_idx)
    elif folder.test is None:
        train_idx, test_idx = _stratified_split(labels, TEST_FRACTION)
        test = every.subset(test_idx)
    if folder.test is not None:
        test, source = ImageFiles(folder.test, image_size=image_size), f"the folder's test/ ({path / 'test'})"
    elif folder.val is not None:
        source = f"held out: a stratified {TEST_FRACTION:.0%} of train/ by seed {_SPLIT_SEED}"
    if folder.val is not None:
        val = ImageFiles(folder.val, image_size=image_size)
    augmentation = _augmentation(augment, crop=True, flip=True)
    return DatasetSplits(f"imagefolder:{path}", every.subset(train_idx, augmentation=augmentation), val,
                         len(folder.classes), image_size, test, source, augmentation)


def loader_workers(dataset: Dataset) -> int:
    """Processes that decode a data set's items beside the training: none where items are cheap to
    make (arrays in memory), else one per core the training leaves (at most four)."""
    if not isinstance(unaugmented(dataset), ImageFiles):
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0,
                workers: int | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    workers = loader_workers(dataset) if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
                      persistent_workers=False)


def calibration_batches(dataset: Dataset, *, num_samples: int = 256, batch_size: int = 32) -> list[torch.Tensor]:
    """The first ``num_samples`` inputs, unaugmented, in fixed batches: the same data calibrates
    PyTorch and ORT."""
    plain = unaugmented(dataset)
    inputs = [plain[i][0] for i in range(min(num_samples, len(plain)))]
    return [torch.stack(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
