"""Train every subnet of a supernet at once: weight sharing with the sandwich rule.

Each step runs the largest subnet on the labels, then the smallest and a few random subnets on
the largest one's outputs (in-place distillation, as BigNAS and Once-for-All do), and takes one
optimizer step on the summed gradients: the largest pulls the shared weights up, the smallest
keeps the bottom of the space trained, the random ones cover the rest. The subnets and the
batches of a step are drawn from the step's number alone, so a run resumed from a checkpoint
continues exactly as the killed one would have.

A checkpoint (weights, optimizer, step) is written atomically every ``checkpoint_every`` steps;
a kill loses at most that many steps. BatchNorm statistics are shared between subnets during
training, so the largest's are recomputed at the end, as every trial recomputes its own.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import FinetuneDiverged
from ..files import atomic_path, write_text_atomic
from .training import recompute_batchnorm_statistics

__all__ = ["SupernetTrainingConfig", "train_supernet"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupernetTrainingConfig:
    steps: int = 400  # sandwich steps: about 12 min for search_spaces/mobile_supernet.yaml on 2 cores
    batch_size: int = 64
    lr: float = 3e-3
    random_subnets: int = 2  # besides the largest and the smallest, per step
    temperature: float = 1.0  # in-place distillation matches the largest's own distribution
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.random_subnets < 0 \
                or self.temperature <= 0 or self.checkpoint_every < 1:
            raise ValueError(f"invalid supernet training settings: {self}")


def train_supernet(model, train, folder: Path, *, config: SupernetTrainingConfig = SupernetTrainingConfig(),
                   key: dict | None = None, progress: bool = True, map_jobs=None, shards: int = 2):
    """Train ``model`` (an ``ElasticMobileNet``) in place on ``train`` (a data set of (image, label)), resuming
    from ``folder``'s checkpoint when one was left with the same ``key`` and settings; returns it
    at rest (the largest subnet) in eval mode. ``folder/progress.json`` says how far it got.

    ``map_jobs(fn, jobs, shared=...)`` (a Ray executor's): each step is spread over ``shards``
    workers, data-parallel. Data-parallel rather than a subnet per worker, because the sandwich's
    subnets depend on each other within a step (the others learn from the largest one's outputs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, wanted = folder / "checkpoint.pt", {"key": key or {}, "config": asdict(config)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    start = _resume(model, optimizer, checkpoint, wanted)
    # Depthwise convs train much faster on the CPU with channels last (their backward above all).
    model.to(memory_format=torch.channels_last)
    started, done = time.monotonic(), start
    with tqdm(total=config.steps, initial=start, desc="supernet training", unit="step", disable=not progress) as bar:
        for step in range(start, config.steps):
            for group in optimizer.param_groups:  # cosine decay, a function of the step alone
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
            if map_jobs is None:
                _sandwich_step(model, optimizer, train, step, config)
            else:
                _data_parallel_step(model, optimizer, train, step, config, map_jobs=map_jobs, shards=shards)
            done = step + 1
            bar.update(1)
            if done % config.checkpoint_every == 0 or done == config.steps:
                _save(model, optimizer, done, checkpoint, wanted)
                write_text_atomic(folder / "progress.json", json.dumps(
                    {"step": done, "steps": config.steps, "seconds_this_run": round(time.monotonic() - started, 1),
                     "resumed_from": start, "where": "driver" if map_jobs is None else f"{shards} workers, "
                     "data-parallel"}, indent=2) + "\n")
    model.set_subnet(None)
    model.to(memory_format=torch.contiguous_format)
    recompute_batchnorm_statistics(model, train, batch_size=config.batch_size, seed=config.seed)
    log.info("supernet trained: steps %d-%d here in %.0f s", start, done, time.monotonic() - started)
    return model.eval()


def _sandwich_step(model, optimizer, train, step: int, config: SupernetTrainingConfig) -> None:
    optimizer.zero_grad(set_to_none=True)
    _sandwich_gradients(model, *_batch(train, step, config), step, config)
    optimizer.step()


def _batch(train, step: int, config: SupernetTrainingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's batch, drawn from ``train`` (any data set of (image, label)) by the step's seed."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    items = [train[int(i)] for i in torch.randint(len(train), (config.batch_size,), generator=generator)]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def _sandwich_gradients(model, x, y, step: int, config: SupernetTrainingConfig) -> None:
    """Accumulate into ``model``'s gradients the sandwich rule's on ``x`` (the step's batch or a
    shard of it), weighted by its share of the batch, so the shards' sum is the whole batch's."""
    x = x.contiguous(memory_format=torch.channels_last)
    share = len(x) / config.batch_size
    rng = random.Random(config.seed * 1_000_003 + step)  # every shard draws the same subnets
    model.train()
    model.set_subnet("largest")
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    _check(loss, step)
    (loss * share).backward()
    soft = F.log_softmax(logits.detach() / config.temperature, dim=1)
    for choice in ["smallest"] + ["random"] * config.random_subnets:
        model.set_subnet(choice, rng)
        out = F.log_softmax(model(x) / config.temperature, dim=1)
        distilled = F.kl_div(out, soft, reduction="batchmean", log_target=True) * config.temperature ** 2
        _check(distilled, step)
        (distilled * share).backward()
    model.set_subnet(None)


@dataclass(frozen=True)
class _Shard:
    images: torch.Tensor
    labels: torch.Tensor
    step: int
    config: SupernetTrainingConfig


def _shard_gradients(model, job: _Shard) -> list[torch.Tensor | None]:
    """On a worker: the gradients of one shard, for the driver to sum (``map_jobs``'s job)."""
    model.zero_grad(set_to_none=True)
    _sandwich_gradients(model, job.images, job.labels, job.step, job.config)
    return [None if p.grad is None else p.grad.detach() for p in model.parameters()]


def _data_parallel_step(model, optimizer, train, step: int, config: SupernetTrainingConfig, *, map_jobs,
                        shards: int) -> None:
    """One step spread over workers: each runs the sandwich on a shard of the batch with a copy of
    the current weights, and the driver steps on the summed gradients. BatchNorm statistics are the
    shards' own, as in any data-parallel training; they are recomputed at the end."""
    x, y = _batch(train, step, config)
    jobs = [_Shard(x[k::shards], y[k::shards], step, config) for k in range(shards)]
    optimizer.zero_grad(set_to_none=True)
    for grads in map_jobs(_shard_gradients, jobs, shared=model):
        for p, g in zip(model.parameters(), grads):
            if g is not None:
                p.grad = g.clone() if p.grad is None else p.grad + g
    optimizer.step()


def _check(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FinetuneDiverged(f"supernet training loss is {loss.item()} at step {step}; lower the learning rate")


def _resume(model, optimizer, checkpoint: Path, wanted: dict) -> int:
    if not checkpoint.is_file():
        return 0
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: start over rather than fail the search
        log.warning("supernet checkpoint %s is unreadable (%s); training from the start", checkpoint, exc)
        return 0
    if state.get("wanted") != json.dumps(wanted, sort_keys=True):
        log.info("supernet checkpoint %s is of other settings; training from the start", checkpoint)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("supernet training resumes at step %d", state["step"])
    return int(state["step"])


def _save(model, optimizer, step: int, checkpoint: Path, wanted: dict) -> None:
    with atomic_path(checkpoint) as partial:  # a kill mid-write keeps the previous checkpoint
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "wanted": json.dumps(wanted, sort_keys=True)}, partial)
