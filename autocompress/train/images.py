"""Image data sets that decode, resize and augment one image at a time, when a loader asks for it.

A data set held whole in memory as float tensors at the training size costs 3 x S x S x 4 bytes an
image: Fashion-MNIST's 60,000 at 224 px would take 36 GiB. These keep what the source keeps (the
uint8 pixels of a standard data set, or only the file names of an image folder) and make each
(3, S, S) float tensor when it is read, so memory does not grow with the image size, and an image
folder's does not grow with its length.

Every item is ``(image, label)``: ``image`` a (3, S, S) float tensor normalised to about [-1, 1],
``label`` an int. With ``augment``, training items get the usual augmentation for small images: a
random crop of the image padded by an eighth of its side, and a horizontal flip where a mirrored
image is still of its class (not for digits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..errors import DatasetError

__all__ = ["Augmentation", "ImageArray", "ImageFiles", "items_never_change", "unaugmented"]


@dataclass(frozen=True)
class Augmentation:
    """What a training item may be changed by; the default changes nothing."""

    crop: bool = False  # a random crop of the image padded by an eighth of its side
    flip: bool = False  # a horizontal flip, half the time

    @property
    def any(self) -> bool:
        return self.crop or self.flip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: (3, S, S) in [0, 1]."""
        if self.crop:
            side = image.shape[-1]
            pad = max(1, side // 8)
            padded = F.pad(image, (pad, pad, pad, pad))
            top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
            image = padded[:, top:top + side, left:left + side]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image


NO_AUGMENTATION = Augmentation()


def _to_model_input(image: torch.Tensor, image_size: int, augmentation: Augmentation) -> torch.Tensor:
    """(C, H, W) floats in [0, 1] -> (3, S, S) normalised to about [-1, 1], augmented."""
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.shape[-1] != image_size or image.shape[-2] != image_size:
        image = F.interpolate(image.unsqueeze(0), size=(image_size, image_size), mode="bilinear",
                              align_corners=False).squeeze(0)
    if augmentation.any:
        image = augmentation(image)
    return ((image - 0.5) / 0.5).contiguous()


class ImageArray(Dataset):
    """Images held as the source holds them: an (N, H, W) or (N, H, W, C) array of uint8 pixels, or
    of floats in [0, 1], with one integer label each; ``indices`` picks a split of them without a copy."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, *, image_size: int, indices: np.ndarray | None = None,
                 augmentation: Augmentation = NO_AUGMENTATION) -> None:
        self.pixels, self.labels = pixels, np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(self.labels)) if indices is None else np.asarray(indices)
        self.image_size, self.augmentation = image_size, augmentation

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        pixels = torch.from_numpy(np.array(self.pixels[index]))  # a copy: the source may be read-only
        image = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)
        return _to_model_input(image, self.image_size, self.augmentation), int(self.labels[index])

    def subset(self, indices: np.ndarray, *, augmentation: Augmentation | None = None) -> "ImageArray":
        return ImageArray(self.pixels, self.labels, image_size=self.image_size, indices=self.indices[indices],
                          augmentation=self.augmentation if augmentation is None else augmentation)

    def targets(self) -> np.ndarray:
        return self.labels[self.indices]

    def without_augmentation(self) -> "ImageArray":
        return self.subset(np.arange(len(self)), augmentation=NO_AUGMENTATION)


class ImageFiles(Dataset):
    """Image files, each decoded when it is read; a file that is no image names itself."""

    def __init__(self, samples: list[tuple[str, int]], *, image_size: int,
                 augmentation: Augmentation = NO_AUGMENTATION) -> None:
        self.samples, self.image_size, self.augmentation = list(samples), image_size, augmentation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms import functional as TF

        file, label = self.samples[i]
        try:
            with Image.open(file) as img:
                image = TF.to_tensor(TF.resize(img.convert("RGB"), [self.image_size, self.image_size], antialias=True))
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"image folder file {file!r} is not a readable image ({type(exc).__name__}); remove "
                               "it from the folder or replace it") from exc
        return _to_model_input(image, self.image_size, self.augmentation), label

    def subset(self, indices: np.ndarray, *, augmentation: Augmentation | None = None) -> "ImageFiles":
        return ImageFiles([self.samples[int(i)] for i in indices], image_size=self.image_size,
                          augmentation=self.augmentation if augmentation is None else augmentation)

    def targets(self) -> np.ndarray:
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def without_augmentation(self) -> "ImageFiles":
        return ImageFiles(self.samples, image_size=self.image_size)

    def check_readable(self) -> None:
        """Every file opens as an image: its header is read, not its pixels (a fraction of a
        millisecond a file), so that a stray file is named before anything trains, not in the
        middle of it; a file whose pixels are damaged is still named when it is read."""
        from PIL import Image, UnidentifiedImageError

        for file, _ in self.samples:
            try:
                with Image.open(file):
                    pass
            except (UnidentifiedImageError, OSError) as exc:
                raise DatasetError(f"image folder file {file!r} is not a readable image ({type(exc).__name__}); "
                                   "remove it from the folder or replace it") from exc


def unaugmented(dataset: Dataset) -> Dataset:
    """``dataset`` as it reads without augmentation (calibration and BatchNorm statistics want the
    images as they are); a data set that knows no augmentation is returned as it is."""
    plain = getattr(dataset, "without_augmentation", None)
    return plain() if callable(plain) else dataset


def items_never_change(dataset: Dataset) -> bool:
    """Whether reading an item twice gives the same image: ours without augmentation, or tensors.
    A user's data set may draw random transforms, so it is not assumed to."""
    if isinstance(dataset, TensorDataset):
        return True
    return isinstance(dataset, (ImageArray, ImageFiles)) and not dataset.augmentation.any
