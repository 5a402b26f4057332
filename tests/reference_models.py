"""Models the tests share: the coverage list and a tiny residual CNN with every structure we cut."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.search.problem import ProblemSpec

# The models issue 2 must cover, and how long each trains on digits to be a meaningful baseline.
# The search problem most search tests share (``conftest.tiny_search_problem``): a tiny ResNet on
# digits, its baseline trained once a session.
TINY_SEARCH = ProblemSpec(model="reference_models:tiny_resnet", train_steps=80)

COVERAGE_MODELS = {
    "resnet18": 120,
    "mobilenet_v2": 150,
    "mobilenet_v3_small": 150,
    "efficientnet_b0": 150,
    "autocompress.zoo:transformer_classifier": 300,
}


class TinyResNet(nn.Module):
    """Stem, two residual blocks around a strided conv, a depthwise stage and a head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = Residual(16)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.block2 = Residual(32)
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 5, padding=2, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                                nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.dw(self.block2(self.down(self.block1(self.stem(x)))))
        return self.head(x.mean((2, 3)))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def tiny_resnet(num_classes: int = 10) -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(num_classes).eval()


def randomise_norms(model: nn.Module, seed: int = 0, *, scales: bool = False) -> nn.Module:
    """BatchNorm statistics (and with ``scales``, weights) unlike their defaults, so that a norm
    sliced, shared or skipped wrongly changes the outputs a test compares."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            if scales:
                m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model
