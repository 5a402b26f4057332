"""Small helpers over nn.Module trees, shared by analysis, techniques and accounting."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["find_submodule", "set_submodule", "is_inside", "forward_with_hooks", "PRUNABLE_MEMBER_TYPES"]

# Module types whose channel dimension we know how to cut and count. A channel group that
# touches any other module with parameters is left out of pruning (see analysis).
PRUNABLE_MEMBER_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (``layer1.0.conv1``)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def find_submodule(root: nn.Module, name: str) -> nn.Module | None:
    """The submodule at dotted path ``name``, or None where it is gone (removed with a skipped
    block, or not in the cell that replaced its block)."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def is_inside(name: str, prefix: str) -> bool:
    """True when module ``name`` is ``prefix`` itself or lies below it in the tree."""
    return name == prefix or name.startswith(prefix + ".")


def forward_with_hooks(model: nn.Module, example_input: torch.Tensor, handles: list) -> torch.Tensor:
    """One eval-mode forward pass without gradients for hooks to observe.

    Removes ``handles`` and restores the model's train/eval mode afterwards, whatever happens.
    """
    was_training = model.training
    try:
        with torch.no_grad():
            return model.eval()(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
