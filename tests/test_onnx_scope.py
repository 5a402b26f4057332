"""onnx_scope against the TorchScript exporter: the prefix it predicts is the one ops really get."""

import io
from collections import OrderedDict

import onnx
import pytest
import torch
import torchvision
from torch import nn

from autocompress.hardware.onnx_export import onnx_scope


class _SubSequential(nn.Sequential):
    pass


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class _Listed(nn.Module):
    """A ModuleList (never called itself) holding a conv and a wrapped Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(3, 3, 1), _Wrap(nn.Sequential(nn.Conv2d(3, 3, 1)))])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _conv():
    return nn.Conv2d(3, 3, 1)


MODELS = {
    "sequential in sequential": lambda: _Wrap(nn.Sequential(nn.Sequential(_conv()))),
    "subclassed sequentials": lambda: _Wrap(_SubSequential(_SubSequential(_conv()))),
    "wrapper inside sequentials": lambda: _Wrap(nn.Sequential(_SubSequential(_Wrap(_conv())))),
    "named sequential children": lambda: _Wrap(_SubSequential(OrderedDict(
        [("stage1", _SubSequential(OrderedDict([("block1-0", _Wrap(_conv()))])))]))),
    "module list": _Listed,
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(),  # named Sequential subclasses
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_scope_names_every_conv_as_the_exporter_does(name):
    model = MODELS[name]().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), buffer, dynamo=False)
    exported = {n.name for n in onnx.load_from_string(buffer.getvalue()).graph.node if n.op_type == "Conv"}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    predicted = {onnx_scope(model, n) + "Conv" for n in convs}
    assert predicted == exported
