"""Architecture choice points of a model that inherit their weights: residual blocks that may be
skipped, and kernels that may shrink to their centre crop."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .modules import is_inside, set_submodule

__all__ = ["KernelChoice", "SkipBlock", "SkippedBlock", "find_kernel_choices", "find_skip_blocks"]

log = logging.getLogger("autocompress.core.analysis")

@dataclass(frozen=True)
class SkipBlock:
    """A residual block whose input and output shapes match: NAS may replace it by the identity."""

    name: str
    params: int
    macs: int


@dataclass(frozen=True)
class KernelChoice:
    """A k x k convolution whose kernel may shrink to a centre crop (padding shrinks alike)."""

    layer: str
    options: tuple[int, ...]  # the current size first


class SkippedBlock(nn.Module):
    """Stands in for a skipped residual block. Accepts and ignores extra arguments (masks, flags)
    because containers such as nn.TransformerEncoder pass them to every layer. As a NAS-Bench-201
    edge (``core.nb201``) it is that benchmark's skip_connect."""

    op = "skip_connect"

    def forward(self, x, *args, **kwargs):
        return x



def find_skip_blocks(model: nn.Module, example_input: torch.Tensor, shapes: dict, layers: list) -> list[SkipBlock]:
    """Residual blocks: shape-preserving modules that reduce to the identity when their weights are zero.

    With every weight zeroed and every norm set to pass its input through, a residual block
    ``x + f(x)`` (optionally followed by ReLU or a norm) returns ``x``; any other block does not.
    The innermost such modules are the choice points; each is also tried in the whole model,
    because a container may rely on it (nn.TransformerEncoder reads attributes of layer 0).
    """
    found: list[str] = []
    names = [n for n, _ in model.named_modules() if n]
    for name in sorted(names, key=lambda n: -n.count(".")):
        rec = shapes.get(name)
        module = model.get_submodule(name)
        # Further tensor arguments are allowed (a transformer layer's attention mask): a block that
        # needs them to compute its output fails the one-input probe below.
        if rec is None or rec["in"] is None or rec["in"] != rec["out"]:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.MultiheadAttention)):
            continue
        if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules()):
            continue
        if any(is_inside(f, name) for f in found):
            continue  # keep the innermost blocks only
        if _reduces_to_identity(module, rec["in"]) and _skip_keeps_model_working(model, name, example_input):
            found.append(name)
    by_prefix = []
    for name in found:
        inner = [u for u in layers if is_inside(u.name, name)]
        params = sum(p.numel() for p in model.get_submodule(name).parameters())
        by_prefix.append(SkipBlock(name, params, sum(u.macs for u in inner)))
    order = {n: i for i, n in enumerate(names)}
    return sorted(by_prefix, key=lambda b: order[b.name])


def _reduces_to_identity(module: nn.Module, shape: tuple[int, ...]) -> bool:
    probe = copy.deepcopy(module).eval()
    with torch.no_grad():
        for m in probe.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
                if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
            else:
                for p in m.parameters(recurse=False):
                    p.zero_()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        if shape[-1] > 1:  # a LayerNorm-invariant input, so post-norm residual blocks qualify too
            x = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
        try:
            y = probe(x)
        except Exception:  # blocks that need more than one input are not choice points
            return False
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return False
    return bool(torch.allclose(y, x, atol=1e-3, rtol=1e-3) or torch.allclose(y, x.relu(), atol=1e-3, rtol=1e-3))


def _skip_keeps_model_working(model: nn.Module, name: str, example_input: torch.Tensor) -> bool:
    original = model.get_submodule(name)
    set_submodule(model, name, SkippedBlock())
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(example_input)
        return True
    except Exception as exc:
        log.info("block %s is residual but skipping it breaks the model (%s)", name, exc)
        return False
    finally:
        set_submodule(model, name, original)


def find_kernel_choices(model: nn.Module) -> list[KernelChoice]:
    choices = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            continue
        k, k_w = m.kernel_size
        if k != k_w or k < 3 or k % 2 == 0 or m.padding[0] != m.padding[1] or m.dilation[0] != m.dilation[1]:
            continue
        smallest = 1 if k == 3 else 3  # 3x3 may become 1x1; larger kernels shrink to 3x3 at least (as in OFA)
        options = [s for s in range(k, smallest - 1, -2) if m.padding[0] - (k - s) // 2 * m.dilation[0] >= 0]
        if len(options) > 1:
            choices.append(KernelChoice(name, tuple(options)))
    return choices
