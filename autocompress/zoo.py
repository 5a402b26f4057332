"""Small reference models that ship with autocompress (usable as ``autocompress.zoo:NAME``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TransformerClassifier", "transformer_classifier"]


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
