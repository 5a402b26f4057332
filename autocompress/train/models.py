"""Turn a model spec (``resnet18``, ``torchvision:mobilenet_v2``, ``pkg.mod:factory``) into a module."""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..core.elastic_mobile import build_elastic_mobile
from ..core.nb201 import build_nb201
from ..core.supernet_file import SPACE_PREFIX, is_space_spec, load_supernet_file
from ..errors import ModelResolutionError, WeightsMismatchError
from .hf_models import hf_model, name_and_keywords, takes_token_ids, wrapped_state

__all__ = ["check_model_runs", "example_input", "resolve_model", "load_weights", "takes_token_ids",
           "torchvision_classifiers"]

_MAX_KEYS_SHOWN = 8


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classification models (no detection, video, ... models)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_model(spec: str, *, num_classes: int = 10, weights: str | Path | None = None,
                  image_size: int | None = None) -> nn.Module:
    """Build the module a spec names, with freshly initialised weights unless ``weights`` is given.

    ``spec`` is a torchvision classification model (``resnet18`` or ``torchvision:resnet18``), a
    timm model (``timm:NAME`` or ``timm:NAME,key=value,...``, with timm installed), a Hugging Face
    image or sequence classifier built from its config (``hf:vit,key=value,...``, ``hf:bert,...``,
    with transformers) or a
    ``package.module:factory`` callable returning an ``nn.Module``. The factory gets
    ``num_classes`` when its signature accepts it, and ``image_size`` when it is given and the
    factory accepts it (a ViT is built for one image size: ``zoo.small_vit``). ``space:PATH`` is the largest subnet of the
    supernet file at PATH (``core.supernet_file``), trained by ``train.supernet``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelResolutionError(f"model spec {spec!r} is empty; give a torchvision name such as 'resnet18' or 'package.module:factory'")
    spec = spec.strip()
    if is_space_spec(spec):
        model = build_supernet(load_supernet_file(spec[len(SPACE_PREFIX):]), num_classes)
    elif spec.startswith("timm:"):
        model = _timm_model(spec, num_classes, image_size)
    elif spec.startswith("hf:"):
        model = hf_model(spec, num_classes, image_size)
    elif spec.startswith("torchvision:"):
        model = _torchvision_model(spec.split(":", 1)[1], num_classes)
    elif ":" in spec:
        model = _factory_model(spec, num_classes, image_size)
    else:
        model = _torchvision_model(spec, num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def build_supernet(spec, num_classes: int) -> nn.Module:
    """The largest subnet of a supernet file's network, by its family."""
    return (build_nb201 if spec.family == "nb201_cell" else build_elastic_mobile)(spec, num_classes)


def _torchvision_model(name: str, num_classes: int) -> nn.Module:
    import torchvision

    known = torchvision_classifiers()
    if name not in known:
        close = [k for k in known if name.lower()[:4] in k][:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ModelResolutionError(
            f"model {name!r} is not a torchvision classification model{hint}; "
            "run `python -c 'import torchvision; print(torchvision.models.list_models())'` for the list, "
            "or give 'package.module:factory'"
        )
    # weights=None: nothing may be downloaded at run time; trained weights come from a file.
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _timm_model(spec: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """``timm:NAME`` or ``timm:NAME,key=value,...``: timm's model NAME, freshly initialised, built
    with those keyword arguments (``timm:deit_tiny_patch16_224,img_size=32,patch_size=4``). A
    given ``image_size`` becomes ``img_size`` where the spec names none and the model takes one."""
    name, kwargs = name_and_keywords(spec, "timm:NAME,img_size=32,patch_size=4")
    try:
        import timm
    except ImportError as exc:
        raise ModelResolutionError(f"model spec {spec!r} needs timm, which is not installed; "
                                   "pip install 'autocompress[timm]'") from exc
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:4]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ModelResolutionError(f"model spec {spec!r}: timm has no model {name!r}{hint}; "
                                   "`python -c 'import timm; print(timm.list_models())'` lists them")
    if image_size is not None and "img_size" not in kwargs:
        try:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size, **kwargs)
        except TypeError:
            pass  # a model without an image size (a CNN): built as named below
    try:
        # pretrained=False: nothing may be downloaded at run time; trained weights come from a file.
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:  # a keyword the model does not take
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelResolutionError(f"model spec {spec!r}: timm could not build it ({first}); check the keyword "
                                   "arguments") from exc


def _factory_model(spec: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelResolutionError(
            f"model spec {spec!r}: cannot import module {module_name!r} ({exc}); install it or fix PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelResolutionError(f"model spec {spec!r}: {module_name!r} has no callable {attr!r}; name a function or class that returns an nn.Module")
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    kwargs = {"num_classes": num_classes} if "num_classes" in accepted else {}
    if image_size is not None and "image_size" in accepted:
        kwargs["image_size"] = image_size
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelResolutionError(f"model spec {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict file into ``model`` with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMismatchError(f"weights file {str(path)!r} does not exist; pass the path of a saved state dict")
    try:
        with warnings.catch_warnings():  # torch's notes on the pickle protocol: the error below says it all
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":  # Hugging Face's format: tensors only, nothing to unpickle
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads: rethrown naming the file
        raise WeightsMismatchError(f"weights file {str(path)!r} {_why_unloadable(path, exc)}; save the weights "
                                   "alone with torch.save(model.state_dict(), path)") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the usual training-checkpoint wrapper
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    state = wrapped_state(model, state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:_MAX_KEYS_SHOWN]) + (f" (+{len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else "")
                parts.append(f"{label} keys: {shown}")
        raise WeightsMismatchError(
            f"weights file {str(path)!r} does not match the model: {'; '.join(parts)}; "
            "check the model name and --num-classes it was trained with"
        )
    model.load_state_dict(state)
    return model


def _why_unloadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words."""
    with path.open("rb") as handle:
        head = handle.read(1)
    if not zipfile.is_zipfile(path) and head != b"\x80":  # torch.save writes a zip; old files a pickle
        return "is not a loadable state dict: it is no PyTorch file (neither torch.save's zip format nor a pickle)"
    if isinstance(exc, pickle.UnpicklingError):  # what weights_only loading refuses to unpickle
        named = re.search(r"GLOBAL ([\w.]+)|(\w[\w.]*) was not an allowed global", str(exc))
        what = f" (it names {named.group(1) or named.group(2)})" if named else ""
        return (f"is not a loadable state dict: it holds pickled Python objects besides tensors{what}, which could "
                "run code when loaded; refused, and nothing in it was run")
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"is not a loadable state dict ({type(exc).__name__}: {first})"


def example_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """An input of ``shape`` for ``model``, where only its shape matters (analysis, timing): random
    images, or token ids of 1 (shape (batch, tokens)) for a text model."""
    return torch.ones(shape, dtype=torch.long) if takes_token_ids(model) else torch.randn(shape)


def check_model_runs(model: nn.Module, example: torch.Tensor, *, spec: str, needs: Callable[[int], str],
                     size_name: str, parameters: tuple[str, ...] = ()) -> None:
    """Run ``model`` once on ``example``, where a model is first run: whatever its own code raises
    there (a ViT asserting its image size, a forward that wants more inputs) becomes one line naming
    the model and the input shape, and what to pass: ``needs(size)`` when the model's message names
    the image size it wants, else the ``size_name`` (the parameter or flag of the size) to fix.
    The output must be a (batch, classes) tensor of class scores, which training and export rely on."""
    shape = tuple(example.shape)
    try:
        with torch.no_grad():
            output = model.eval()(example)
    except Exception as exc:  # the model's own code: rethrown naming the model and the input
        first = (str(exc).strip().splitlines() or [""])[0]
        asked = re.search(r"[Ee]xpected (?:image size |size |height |width )?(\d{2,4})\b", first)
        built_for = f"give the {size_name} it was built for (224 for torchvision's ImageNet models)"
        if takes_token_ids(model):  # its own check said what is wrong with the ids
            hint = "give it token ids through a Task (--task package.module:make_task)"
        elif isinstance(exc, TypeError) and "argument" in first:
            hint = "its forward must take one batch of images, shaped (batch, 3, height, width)"
        elif asked:
            hint = needs(int(asked.group(1)))
        elif re.search(r"too small|can't be greater than actual input size", first):
            hint = f"the input is too small for its convolutions and pools: {built_for}"
        else:
            hint = built_for
        raise ModelResolutionError(f"model {spec!r} cannot run on an input of shape {shape} "
                                   f"({type(exc).__name__}: {first}); {hint}", parameters=parameters) from exc
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else \
            f"a {type(output).__name__}"
        raise ModelResolutionError(f"model {spec!r} returns {got} for an input of shape {shape}, not a (batch, "
                                   "classes) tensor of class scores; wrap it so that forward returns the logits")
