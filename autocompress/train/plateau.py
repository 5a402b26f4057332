"""Training a baseline until its held-out accuracy stops improving, within a time cap.

A fixed number of steps fits one model and leaves another far from what it can reach, and a
search measured against a weak baseline finds compressions that "lose nothing" of little. So the
baseline trains in rounds (a quarter of an epoch, at least ``eval_every`` steps), scored after
each on a held-out part of the training split (the validation split stays the search's own), and
keeps the best weights. When ``patience`` rounds in a row bring no improvement, the learning rate
drops once (a tenth) from the best weights, and the next plateau ends the training;
``time_cap_s`` and ``max_steps`` end it earlier. A round that scores every held-out image right ends it too: later weights could only tie,
and ties are not kept, so waiting for a plateau there would spend the time cap for nothing. A
baseline that a cap stopped before its first plateau, or that fits few of its own training images,
looks under-trained, and ``PlateauRun.under_trained`` says so and what to do. One stopped after it
(in the rounds at the lower learning rate) reached what its first rate could give: not flagged.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from ..core.library_attention import has_attention
from .data import make_loader
from .images import unaugmented
from .training import accuracy, recompute_batchnorm_statistics

__all__ = ["PlateauConfig", "PlateauRun", "held_out_split", "train_to_plateau"]

TRANSFORMER_LR, TRANSFORMER_WARMUP_STEPS = 1e-3, 500
FITS_ITS_TRAINING_DATA = 0.9  # below this share of its own training images, a baseline under-fits


@dataclass(frozen=True)
class PlateauConfig:
    time_cap_s: float = 300.0
    max_steps: int = 100_000  # the time cap is what ends a long training; this only bounds a fast one
    # Steps a round takes at least. On a large data set a round is a quarter of an epoch: scored
    # more often, the held-out accuracy's noise hides the gains of a model still learning, and a
    # run of rounds without improvement ends the training long before it should.
    eval_every: int = 100
    patience: int = 4  # rounds without improvement that make a plateau
    lr: float = 3e-3
    lr_drops: int = 1
    warmup_steps: int = 0  # the learning rate rises linearly to ``lr`` over these first steps
    batch_size: int = 64
    held_out_share: float = 0.1
    # Scoring more would cost more than the rounds it scores; fewer, and a round's gain on a large
    # data set drowns in the noise of the score (a point at 1,000 images).
    held_out_max: int = 2000
    seed: int = 0


    @classmethod
    def for_model(cls, model: nn.Module, **settings) -> "PlateauConfig":
        """The recipe for ``model``: a transformer trained from scratch at this rate without warmup
        stays near chance (its attention collapses early), so one with attention starts at a third
        of it and warms up over its first rounds, as ViT recipes do."""
        if has_attention(model):
            settings = {"lr": TRANSFORMER_LR, "warmup_steps": TRANSFORMER_WARMUP_STEPS} | settings
        return cls(**settings)


@dataclass(frozen=True)
class PlateauRun:
    steps: int
    best_step: int  # the weights kept are those of this step
    stopped: str  # "plateau", "ceiling" (all held-out images right), "time_cap" or "step_cap"
    held_out_accuracy: float  # of the weights kept
    train_accuracy: float  # of the weights kept, on as many training images as were held out
    seconds: float
    plateaus: int = 0  # plateaus reached before it stopped (each drops the learning rate, the last ends it)

    def under_trained(self) -> str | None:
        """One line saying why the baseline looks under-trained and what to do, or None."""
        if self.stopped in ("time_cap", "step_cap") and not self.plateaus:
            cap = "--train-time-cap" if self.stopped == "time_cap" else "the step cap"
            return (f"the baseline stopped at {cap} after {self.steps} steps, before its held-out accuracy "
                    f"({self.held_out_accuracy:.1%}) stopped improving: it looks under-trained; give a larger "
                    "--train-time-cap (it goes on from these weights), or train it yourself and pass --weights")
        if self.train_accuracy < FITS_ITS_TRAINING_DATA:
            return (f"the baseline classifies only {self.train_accuracy:.1%} of its own training images after "
                    f"{self.steps} steps: it looks under-trained; train it yourself and pass --weights")
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "under_trained": self.under_trained()}


def held_out_split(dataset: Dataset, config: PlateauConfig) -> tuple[Subset, Subset]:
    """(the part trained on, the part held out): a fixed random share of ``dataset``."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed)).tolist()
    count = min(config.held_out_max, max(1, round(config.held_out_share * len(dataset))), len(dataset) - 1)
    # the held-out images are scored as they are, not as augmentation changes them
    return Subset(dataset, order[count:]), Subset(unaugmented(dataset), order[:count])


def train_to_plateau(model: nn.Module, dataset: Dataset, config: PlateauConfig = PlateauConfig(), *,
                     progress: bool = False) -> PlateauRun:
    """Train ``model`` in place (AdamW) until its held-out accuracy stops improving or a cap is
    reached; leaves it in eval mode with the best weights. ``progress``: a bar of the time cap
    (a plateau usually ends the training before it), with the steps and the held-out accuracy."""
    started = time.monotonic()
    # the bar runs against the time cap: a step count has no end a user could read off
    bar = tqdm(total=round(config.time_cap_s), desc="baseline training", unit="s", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total} s of the cap{postfix}")
    fit, held_out = held_out_split(dataset, config)
    torch.manual_seed(config.seed)
    lr, drops_left = config.lr, config.lr_drops
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    batches = itertools.cycle(make_loader(fit, batch_size=config.batch_size, shuffle=True, seed=config.seed))
    round_steps = max(config.eval_every, len(fit) // (4 * config.batch_size))
    best_accuracy, best_step, best_state = -1.0, 0, _copy(model)
    step, waited, stopped, plateaus = 0, 0, None, 0
    while stopped is None:
        model.train()
        for _ in range(round_steps):
            if step < config.warmup_steps:
                for group in optimizer.param_groups:
                    group["lr"] = lr * (step + 1) / config.warmup_steps
            images, labels = next(batches)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= config.max_steps or time.monotonic() - started >= config.time_cap_s:
                stopped = "step_cap" if step >= config.max_steps else "time_cap"
                break
        score = _scored(model, fit, held_out, config)
        bar.update(min(time.monotonic() - started, config.time_cap_s) - bar.n)
        bar.set_postfix_str(f"step {step}, held-out {score:.1%}, best {max(score, best_accuracy):.1%}")
        if score > best_accuracy:
            best_accuracy, best_step, best_state, waited = score, step, _copy(model), 0
            if score >= 1.0:
                stopped = "ceiling"
            continue
        waited += 1
        if waited >= config.patience and stopped is None:
            plateaus += 1
            if not drops_left:
                stopped = "plateau"
                break
            # from the best weights, in smaller steps: a plateau at a high rate is rarely the model's best
            drops_left, waited, lr = drops_left - 1, 0, lr * 0.1
            model.load_state_dict(best_state)
            for group in optimizer.param_groups:
                group["lr"] = lr
    bar.close()
    model.load_state_dict(best_state)
    seen = Subset(fit, range(min(len(fit), len(held_out))))
    return PlateauRun(step, best_step, stopped, best_accuracy, accuracy(model, seen), time.monotonic() - started,
                      plateaus)


def _scored(model: nn.Module, fit: Dataset, held_out: Dataset, config: PlateauConfig) -> float:
    # The running BatchNorm statistics lag behind weights that are still moving: scored on exact ones.
    recompute_batchnorm_statistics(model, fit, batch_size=config.batch_size, seed=config.seed)
    return accuracy(model, held_out)


def _copy(model: nn.Module) -> dict:
    # deepcopy keeps the state dict's per-module metadata: modules that check their saved version
    # on load (torchvision's MNASNet) refuse a plain dict of tensors
    return copy.deepcopy(model.state_dict())
