"""Hugging Face ``transformers`` classifiers built from a config (``hf:MODEL_TYPE,key=value,...``),
freshly initialised, and wrapped to be called as autocompress calls models: one input tensor in
(images, or token ids for a text model), logits out. Nothing is downloaded: trained weights come
from a file (``--weights``) or a model object. transformers is an optional extra (``[hf]``).
"""

from __future__ import annotations

import ast

import torch
from torch import nn

from ..errors import ModelResolutionError

__all__ = ["ImageClassifierLogits", "SequenceClassifierLogits", "hf_model", "name_and_keywords", "takes_token_ids",
           "wrapped_state"]

_IMAGE_EXAMPLE = "hf:vit,patch_size=4,hidden_size=192,num_hidden_layers=6,num_attention_heads=3,intermediate_size=768"
_TEXT_EXAMPLE = "hf:bert,vocab_size=1000,hidden_size=128,num_hidden_layers=2,num_attention_heads=2,intermediate_size=512"


def name_and_keywords(spec: str, example: str) -> tuple[str, dict]:
    """``prefix:NAME,key=value,...`` as NAME and the keyword arguments (Python literals, else strings)."""
    name, *pairs = spec.split(":", 1)[1].split(",")
    kwargs = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ModelResolutionError(f"model spec {spec!r}: {pair!r} is not key=value; write {example}")
        try:
            kwargs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = text.strip()
    return name.strip(), kwargs


class ImageClassifierLogits(nn.Module):
    """A Hugging Face image classifier: images in, logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class SequenceClassifierLogits(nn.Module):
    """A Hugging Face sequence classifier: token ids in, shaped (batch, tokens), logits out.

    Padding (``pad_token_id``) is masked out of the attention by a mask made from the ids inside
    the forward, so the exported model takes the ids alone. The mask is given to the model as the
    additive (batch, 1, 1, tokens) mask it would build itself: given the ids' 0/1 mask instead,
    transformers drops it when nothing is padded, a choice that tracing for export would freeze."""

    input_dtype = torch.long  # what an example input of this model holds (``train.models.example_input``)

    def __init__(self, model: nn.Module, pad_token_id: int | None, vocab_size: int, max_tokens: int | None) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id, self.vocab_size, self.max_tokens = pad_token_id, vocab_size, max_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self._check(input_ids)
        mask = None
        if self.pad_token_id is not None:
            padded = (input_ids == self.pad_token_id)[:, None, None, :]
            mask = torch.where(padded, torch.finfo(torch.float32).min, 0.0)
        return self.model(input_ids=input_ids, attention_mask=mask).logits

    def _check(self, ids: torch.Tensor) -> None:
        """One line naming what is wrong with the input and what the model takes."""
        takes = "token ids: an integer tensor shaped (batch, tokens)"
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"this text model takes {takes}, got a {ids.dtype} tensor of shape {tuple(ids.shape)}")
        if ids.dim() != 2:
            raise ValueError(f"this text model takes {takes}, got shape {tuple(ids.shape)}")
        if self.max_tokens is not None and ids.shape[1] > self.max_tokens:
            raise ValueError(f"{ids.shape[1]} tokens, more than the model's max_position_embeddings "
                             f"({self.max_tokens}); cut the sequences or build it with a larger one")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids run from {int(ids.min())} to {int(ids.max())}, outside the model's vocabulary "
                             f"(0 to {self.vocab_size - 1}); build it with vocab_size above the largest id")


def wrapped_state(model: nn.Module, state: dict) -> dict:
    """``state`` as the wrapper around a Hugging Face model names it: a checkpoint that model saved
    itself (``save_pretrained``'s ``model.safetensors`` or ``pytorch_model.bin``) names its tensors
    without the wrapper's ``model.`` prefix."""
    if not isinstance(model, (ImageClassifierLogits, SequenceClassifierLogits)) or not state:
        return state
    if any(key.startswith("model.") for key in state):
        return state
    own = model.state_dict()
    # buffers some versions saved and others make at load (BERT's position_ids) are not weights
    return {f"model.{key}": value for key, value in state.items() if f"model.{key}" in own or
            not key.endswith("_ids")}


def takes_token_ids(model: nn.Module) -> bool:
    """Whether ``model``'s input is token ids (integers), not images."""
    return not getattr(model, "input_dtype", torch.float32).is_floating_point


def hf_model(spec: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """``hf:MODEL_TYPE,key=value,...``: the model type's image classifier (``hf:vit,patch_size=4``), or
    its sequence classifier where it has no image classifier (``hf:bert``, ``hf:distilbert``). A
    given ``image_size`` is used where an image model's spec names none."""
    model_type, kwargs = name_and_keywords(spec, _IMAGE_EXAMPLE)
    try:
        import transformers
        from transformers.models.auto import modeling_auto
    except ImportError as exc:
        raise ModelResolutionError(f"model spec {spec!r} needs transformers, which is not installed; "
                                   "pip install 'autocompress[hf]'") from exc
    known = sorted(transformers.CONFIG_MAPPING.keys())
    if model_type not in known:
        close = [k for k in known if model_type.lower()[:3] in k][:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ModelResolutionError(f"model spec {spec!r}: transformers has no model type {model_type!r}{hint}; "
                                   f"write {_IMAGE_EXAMPLE}")
    image = model_type in modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    text = not image and model_type in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    if not (image or text):
        raise ModelResolutionError(f"model spec {spec!r}: transformers has no image or sequence classifier for "
                                   f"{model_type!r}; image classifiers such as vit and deit, and sequence "
                                   "classifiers such as bert and distilbert, are supported")
    config_class = transformers.CONFIG_MAPPING[model_type]
    defaults = config_class().to_dict()
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:  # a config takes any keyword silently: a misspelt one would be ignored
        raise ModelResolutionError(f"model spec {spec!r}: {config_class.__name__} has no {', '.join(unknown)}; "
                                   f"write {_IMAGE_EXAMPLE if image else _TEXT_EXAMPLE}")
    if image and image_size is not None and "image_size" not in kwargs and "image_size" in defaults:
        kwargs["image_size"] = image_size
    # from_config: nothing is downloaded. Eager attention exports to ONNX wherever the attention
    # cannot be split.
    auto = transformers.AutoModelForImageClassification if image else transformers.AutoModelForSequenceClassification
    try:
        config = config_class(**kwargs, num_labels=num_classes)
        model = auto.from_config(config, attn_implementation="eager")
    except Exception as exc:  # transformers' own checks of the configuration (widths, head counts)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelResolutionError(f"model spec {spec!r}: transformers could not build it ({type(exc).__name__}: "
                                   f"{first}); fix the configuration keys") from exc
    if image:
        return ImageClassifierLogits(model)
    return SequenceClassifierLogits(model, config.pad_token_id, config.vocab_size,
                                    getattr(config, "max_position_embeddings", None))
