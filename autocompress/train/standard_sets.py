"""Reading data sets from local files: the standard sets in torchvision's layouts (its dataset
classes, with ``download=False``: nothing is fetched at run time), Fashion-MNIST also where Debian's
``dataset-fashion-mnist`` package puts it, and image folders (the file names only).

A missing file is one line saying where the files go and how to get them.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["DEBIAN_FASHION_MNIST", "ImageFolderFiles", "StandardSet", "read_image_folder", "read_standard_set"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class StandardSet:
    train_pixels: np.ndarray  # (N, H, W) or (N, H, W, 3) uint8
    train_labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    flips: bool  # whether a mirrored image is still of its class
    source: str  # where the files were read, in words


# name -> (torchvision class, its folder under the root, classes, mirrored images keep their class)
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", 10, False),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", 10, True),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", 10, True),
    "cifar100": ("CIFAR100", "cifar-100-python", 100, True),
}


def read_standard_set(name: str, root: Path) -> StandardSet:
    """``name``'s training and test split, from ``root`` in torchvision's layout, else (for
    Fashion-MNIST) from Debian's package."""
    import torchvision

    class_name, folder, classes, flips = _TORCHVISION[name]
    splits = []
    try:
        for train in (True, False):
            data = getattr(torchvision.datasets, class_name)(root=str(root), train=train, download=False)
            splits.append((np.asarray(data.data), np.asarray(data.targets, dtype=np.int64)))
        source = f"{root / folder}"
    except RuntimeError as exc:
        if name == "fashion-mnist" and (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
            splits = [(_idx(DEBIAN_FASHION_MNIST / f"{part}-images-idx3-ubyte.gz"),
                       _idx(DEBIAN_FASHION_MNIST / f"{part}-labels-idx1-ubyte.gz").astype(np.int64))
                      for part in ("train", "t10k")]
            source = str(DEBIAN_FASHION_MNIST)
        else:
            raise DatasetError(_missing(name, root, class_name, folder)) from exc
    (train_pixels, train_labels), (test_pixels, test_labels) = splits
    return StandardSet(train_pixels, train_labels, test_pixels, test_labels, classes, flips, source)


def _missing(name: str, root: Path, class_name: str, folder: str) -> str:
    debian = (f" or in {DEBIAN_FASHION_MNIST} (Debian's package: apt-get install dataset-fashion-mnist)"
              if name == "fashion-mnist" else "")
    return (f"{name} is not under --data-root {str(root)!r} (torchvision's layout: {root / folder}/){debian}; "
            f"download it where a network exists with torchvision.datasets.{class_name}({str(root)!r}, "
            f"download=True) and copy the folder here, or pass --data-root where it is")


def _idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format: a magic number naming the type and rank, the sizes,
    then the values), gzip-compressed."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes; reinstall it (apt-get install --reinstall "
                           "dataset-fashion-mnist)")
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    values = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if values.size != int(np.prod(shape)):
        raise DatasetError(f"{path} holds {values.size} values where its header says {shape}; it is truncated: "
                           "reinstall it (apt-get install --reinstall dataset-fashion-mnist)")
    return values.reshape(shape)


@dataclass(frozen=True)
class ImageFolderFiles:
    classes: list[str]
    train: list[tuple[str, int]]  # (file, label); the whole folder when it has no train/
    val: list[tuple[str, int]] | None  # from val/, if the folder has one
    test: list[tuple[str, int]] | None  # from test/, if the folder has one


def read_image_folder(path: Path) -> ImageFolderFiles:
    """The files of an image folder: one sub-folder per class (PATH/cat/1.png), or train/, val/ and
    test/ each with one sub-folder per class (val/ and test/ optional: what is missing is held out
    of train/ by a fixed seed)."""
    if not path.is_dir():
        raise DatasetError(f"image folder {str(path)!r} does not exist; give imagefolder:PATH with one sub-folder "
                           "per class")
    split_folders = (path / "train").is_dir()
    classes, train = _class_folders(path / "train" if split_folders else path, path)
    parts = {}
    for part in ("val", "test"):
        parts[part] = _class_folders(path / part, path, classes)[1] if split_folders and (path / part).is_dir() \
            else None
    labels = np.array([label for _, label in train])
    if min(np.bincount(labels, minlength=len(classes))) < 3:
        raise DatasetError(f"image folder {str(path)!r} needs at least 3 images per class, to hold some out for "
                           "validation and test")
    return ImageFolderFiles(classes, train, parts["val"], parts["test"])


def _class_folders(folder: Path, named: Path, classes: list[str] | None = None) -> tuple[list[str], list]:
    import torchvision

    try:
        found = torchvision.datasets.ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"image folder {str(folder)!r} has no images in class sub-folders ({exc}); put each "
                           "class's images in a sub-folder named after it (PATH/cat/1.png, PATH/dog/2.png)") from exc
    if classes is None:
        if len(found.classes) < 2:
            raise DatasetError(f"image folder {str(named)!r} has one class sub-folder ({found.classes[0]!r}); a "
                               "classifier needs at least 2: add one sub-folder of images per class")
        return found.classes, list(found.samples)
    unknown = sorted(set(found.classes) - set(classes))
    if unknown:
        raise DatasetError(f"image folder {str(folder)!r} has classes that train/ lacks ({', '.join(unknown[:5])}); "
                           "give train/ a sub-folder for each, or remove them")
    index = {name: classes.index(name) for name in found.classes}
    return classes, [(file, index[found.classes[label]]) for file, label in found.samples]
