"""Small reference models that ship with autocompress (usable as ``autocompress.zoo:NAME``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBlock", "SmallResNet", "TransformerClassifier", "small_resnet", "small_vit", "transformer_classifier",
           "two_conv_cnn"]


class TransformerClassifier(nn.Module):
    """A Linear-heavy image classifier built on ``nn.TransformerEncoder`` (ViT-style patches).

    Patch embedding by a strided conv, learned position embeddings, mean pooling of the tokens.
    Its attention projections live inside ``nn.MultiheadAttention``; that is the case the
    analysis must report as "left out" for channel pruning.
    """

    def __init__(self, *, num_classes: int = 10, image_size: int = 32, patch_size: int = 4, dim: int = 64,
                 depth: int = 2, heads: int = 4, mlp_dim: int = 128, in_channels: int = 3) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size must be a multiple of patch_size, got {image_size=} {patch_size=}")
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        tokens = self.encoder(tokens)
        return self.head(self.norm(tokens.mean(dim=1)))


def transformer_classifier(num_classes: int = 10, **kwargs) -> TransformerClassifier:
    return TransformerClassifier(num_classes=num_classes, **kwargs)


def small_vit(num_classes: int = 10, *, image_size: int = 32, patch_size: int = 4, depth: int = 6, width: int = 192,
              heads: int = 3, mlp_dim: int = 768) -> nn.Module:
    """torchvision's ``VisionTransformer`` at a size for 32 px images: depth 6, width 192, 3 heads
    and patches of 4 (64 tokens and a class token), as ViT papers use on CIFAR-sized data."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=depth, num_heads=heads,
                             hidden_dim=width, mlp_dim=mlp_dim, num_classes=num_classes)


class ConvBlock(nn.Module):
    """A user's own residual block: two 3x3 convs with batch norm around a shortcut (a 1x1 conv
    where the width or stride changes). ``search_spaces/example_user.yaml`` gives it cells."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class SmallResNet(nn.Module):
    """A small CNN of ``ConvBlock``s: docs/nas-cells.md's example of a user's own model and space."""

    def __init__(self, *, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        blocks, previous = [], widths[0]
        for i, width in enumerate(widths):
            blocks += [ConvBlock(previous, width, 1 if i == 0 else 2), ConvBlock(width, width)]
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def small_resnet(num_classes: int = 10, **kwargs) -> SmallResNet:
    return SmallResNet(num_classes=num_classes, **kwargs)


def two_conv_cnn(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """The small hand-designed network of Fashion-MNIST's benchmark table (two 3x3 convs of 32 and
    64 channels, each pooled, then one linear layer; about 60K parameters at 32 px): what a
    compressed model has to beat when it is no faster."""
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side * side, num_classes),
    )
