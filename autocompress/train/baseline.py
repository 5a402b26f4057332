"""The uncompressed model a search or an apply starts from, trained once and cached."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..core.supernet_file import is_space_spec
from ..files import atomic_path, write_text_atomic
from .models import load_weights, resolve_model
from .supernet import SupernetTrainingConfig, train_supernet
from .training import train_classifier

__all__ = ["baseline_model"]

log = logging.getLogger(__name__)


def baseline_model(model_spec: str, *, num_classes: int, weights: Path | None, train_steps: int, splits,
                   cache_dir: Path, map_jobs=None) -> torch.nn.Module:
    """The uncompressed model: from ``weights``, or trained here and cached in ``cache_dir``.

    For a supernet (``space:PATH``) it is the largest subnet, trained with all the others by
    weight sharing for ``train_steps`` sandwich steps (``train.supernet``), resumable from
    ``cache_dir/supernet`` after a kill; ``map_jobs`` (a Ray executor's) spreads its steps over workers."""
    if weights is not None:
        return resolve_model(model_spec, num_classes=num_classes, weights=weights)
    model = resolve_model(model_spec, num_classes=num_classes)
    if train_steps <= 0:
        log.warning("no --weights and --train-steps 0: the baseline keeps its random initialisation")
        return model
    key = {"model": model_spec, "dataset": splits.name, "image_size": splits.image_size, "steps": train_steps,
           "num_classes": num_classes}
    if is_space_spec(model_spec):  # what the supernet file says: an edited file trains again
        key["supernet"] = {k: v for k, v in model.supernet_file.to_dict().items() if k != "path"}
    cached, meta = cache_dir / "baseline.pt", cache_dir / "baseline.json"
    if cached.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
        return load_weights(model, cached).eval()
    if is_space_spec(model_spec):
        train_supernet(model, splits.train, cache_dir / "supernet", config=SupernetTrainingConfig(steps=train_steps),
                       key=key, map_jobs=map_jobs)
    else:
        log.info("training the baseline for %d steps", train_steps)
        train_classifier(model, splits.train, steps=train_steps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as partial:  # a kill mid-write leaves the old file or none, never half of one
        torch.save(model.state_dict(), partial)
    write_text_atomic(meta, json.dumps(key))
    return model
