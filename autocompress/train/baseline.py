"""The uncompressed model a search or an apply starts from, trained once and cached."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..core.supernet_file import is_space_spec
from ..files import atomic_path, write_text_atomic
from .models import load_weights, resolve_model
from .plateau import PlateauConfig, train_to_plateau
from .supernet import SupernetTrainingConfig, train_supernet
from .training import train_classifier

__all__ = ["AUTO_STEPS", "DEFAULT_TIME_CAP_S", "baseline_model", "baseline_training"]

log = logging.getLogger(__name__)

AUTO_STEPS = "auto"  # train until the held-out accuracy stops improving (``plateau``)
DEFAULT_TIME_CAP_S = PlateauConfig.time_cap_s


def baseline_model(model_spec: str, *, num_classes: int, weights: Path | None, train_steps: int | str, splits,
                   cache_dir: Path, train_time_cap_s: float = DEFAULT_TIME_CAP_S, map_jobs=None,
                   progress: bool = False) -> torch.nn.Module:
    """The uncompressed model: from ``weights``, or trained here and cached in ``cache_dir``;
    ``train_steps``: a number of steps, or ``AUTO_STEPS`` (within ``train_time_cap_s`` seconds).

    For a supernet (``space:PATH``) it is the largest subnet, trained with all the others by
    weight sharing for ``train_steps`` sandwich steps (``AUTO_STEPS``: the default of
    ``train.supernet``), resumable from ``cache_dir/supernet`` after a kill; ``map_jobs`` (a Ray
    executor's) spreads its steps over workers. ``progress``: show a bar while it trains."""
    if weights is not None:
        return resolve_model(model_spec, num_classes=num_classes, weights=weights, image_size=splits.image_size)
    model = resolve_model(model_spec, num_classes=num_classes, image_size=splits.image_size)
    if train_steps == 0:
        log.warning("no --weights and --train-steps 0: the baseline keeps its random initialisation")
        return model
    key = {"model": model_spec, "dataset": splits.name, "image_size": splits.image_size, "steps": train_steps,
           "num_classes": num_classes, "splits": splits.describe()}
    if is_space_spec(model_spec):  # what the supernet file says: an edited file trains again
        key["supernet"] = {k: v for k, v in model.supernet_file.to_dict().items() if k != "path"}
        config = SupernetTrainingConfig() if train_steps == AUTO_STEPS else SupernetTrainingConfig(steps=train_steps)
        key["steps"] = config.steps  # what it trains, not how it was asked: "auto" and 400 are one training
    elif train_steps == AUTO_STEPS:
        key["time_cap_s"] = train_time_cap_s
        recipe = PlateauConfig.for_model(model)
        if (recipe.lr, recipe.warmup_steps) != (PlateauConfig.lr, PlateauConfig.warmup_steps):
            key["recipe"] = {"lr": recipe.lr, "warmup_steps": recipe.warmup_steps}  # a transformer's
    cached, meta = cache_dir / "baseline.pt", cache_dir / "baseline.json"
    earlier = None  # a training the time cap cut short, which a larger cap continues
    if cached.is_file() and meta.is_file():
        recorded = json.loads(meta.read_text())
        if {k: v for k, v in recorded.items() if k != "training"} == key:
            _warn_if_under_trained(recorded.get("training"))
            return load_weights(model, cached).eval()
        earlier = _continued(recorded, key)
        if earlier is not None:
            load_weights(model, cached)
            log.info("the cached baseline stopped at its %g s cap: training it on for %g s more",
                     recorded["time_cap_s"], train_time_cap_s - recorded["time_cap_s"])
    if is_space_spec(model_spec):
        train_supernet(model, splits.train, cache_dir / "supernet", config=config, key=key, map_jobs=map_jobs,
                       progress=progress)
        training = {"steps": config.steps, "stopped": "supernet_sandwich_steps"}
    elif earlier is not None:
        training = _train(model, splits.train, train_steps, train_time_cap_s - earlier["time_cap_s"], progress)
        training = {**training, "steps": earlier["training"]["steps"] + training["steps"],
                    "seconds": earlier["training"]["seconds"] + training["seconds"], "continued": earlier["training"]}
    else:
        training = _train(model, splits.train, train_steps, train_time_cap_s, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as partial:  # a kill mid-write leaves the old file or none, never half of one
        torch.save(model.state_dict(), partial)
    write_text_atomic(meta, json.dumps({**key, "training": training}))
    return model


def baseline_training(cache_dir: Path) -> dict | None:
    """How the baseline cached in ``cache_dir`` trained (steps, why it stopped), as baseline.json
    records it; None where it records nothing (no baseline trained there, or by an earlier version)."""
    meta = Path(cache_dir) / "baseline.json"
    return json.loads(meta.read_text()).get("training") if meta.is_file() else None


def _continued(recorded: dict, key: dict) -> dict | None:
    """``recorded`` (a cached baseline's baseline.json) where it is this very training cut short by a
    smaller time cap than ``key`` asks for (its weights go on training); else None."""
    training = recorded.get("training") or {}
    same = {k: v for k, v in recorded.items() if k not in ("training", "time_cap_s")} == \
        {k: v for k, v in key.items() if k != "time_cap_s"}
    if not same or training.get("stopped") != "time_cap" or "seconds" not in training:
        return None
    return recorded if key.get("time_cap_s", 0) > recorded.get("time_cap_s", float("inf")) else None


def _train(model: torch.nn.Module, dataset, train_steps: int | str, time_cap_s: float, progress: bool) -> dict:
    if train_steps != AUTO_STEPS:
        log.info("training the baseline for %d steps", train_steps)
        train_classifier(model, dataset, steps=train_steps, progress=progress)
        return {"steps": train_steps, "stopped": "fixed_steps"}
    log.info("training the baseline until its held-out accuracy stops improving (at most %g s)", time_cap_s)
    run = train_to_plateau(model, dataset, PlateauConfig.for_model(model, time_cap_s=time_cap_s), progress=progress)
    log.info("baseline: %d steps, stopped by %s, held-out accuracy %.1f%%", run.steps, run.stopped,
             100 * run.held_out_accuracy)
    training = run.to_dict()
    _warn_if_under_trained(training)
    return training


def _warn_if_under_trained(training: dict | None) -> None:
    if training and training.get("under_trained"):
        log.warning(training["under_trained"])
