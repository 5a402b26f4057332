"""Random candidates of real models, built, exported and timed end to end with the one protocol.

Profiling (the predictor's composition data) and validation (its test data) both draw candidates
here; they use different seeds, and validation checks that none of its candidates was trained on.
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.analysis import ModelAnalysis, analyze
from ..core.search_space import resolve_search_space
from .onnx_export import export_onnx
from ..train.models import example_input, resolve_model, takes_token_ids
from ..core.space import Candidate, Space, SpaceOptions
from ..errors import AutocompressError
from ..techniques import apply_candidate
from .kernels import candidate_table
from .measure import PASSES, LatencyMeasurement, measure_interleaved

__all__ = ["CANDIDATES_PER_BATCH", "ModelUnderTest", "batch_orders", "export_candidate", "light_candidate",
           "measure_candidates", "measure_in_batches_and_sweeps", "model_under_test", "random_candidate",
           "spread_references", "tight_candidate"]

# Whole candidates timed together in interleaved passes, by profiling, validation and benchmarks
# alike: the batch is part of the protocol. On the Intel (AMX) class, int8 ResNet-18s at 32x32
# timed in one batch of 126 measured up to 19% slower than in batches of this size.
CANDIDATES_PER_BATCH = 24


@dataclass(frozen=True)
class ModelUnderTest:
    spec: str
    input_size: int
    model: torch.nn.Module
    analysis: ModelAnalysis
    example: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)


@lru_cache(maxsize=32)  # a profile plan cycles through every model and size: more than 8
def model_under_test(spec: str, input_size: int, num_classes: int = 10) -> ModelUnderTest:
    """A randomly initialised ``spec`` at a square ``input_size`` (a text model: that many tokens).
    Latency does not depend on the weights' values, so no training is needed; the seed keeps it
    reproducible."""
    torch.manual_seed(0)
    model = resolve_model(spec, num_classes=num_classes, weights=None, image_size=input_size).eval()
    example = example_input(model, (1, input_size) if takes_token_ids(model) else (1, 3, input_size, input_size))
    logging.getLogger("autocompress").debug("analysing %s at %d px", spec, input_size)
    # With the cells of its family's search space, so candidates with cells can be drawn and priced.
    analysis = analyze(model, example, space=resolve_search_space("auto", model))
    return ModelUnderTest(spec, input_size, model, analysis, example)


def random_candidate(target: ModelUnderTest, rng: random.Random, *,
                     density: tuple[float, float] = (0.1, 1.0), cells: bool = False) -> Candidate:
    """A candidate as a search would propose: a random share (drawn from ``density``) of the
    decisions changed, channels kept at multiples of 8 (the default) or, one time in four, of 1
    (unaligned). ``cells``: NAS cell choices among the decisions (off by default, so that the draws
    of profiles made before cells existed reproduce)."""
    multiple = 1 if rng.random() < 0.25 else 8
    space = Space(target.analysis, SpaceOptions(channel_multiple=multiple, cells=cells))
    return space.sample(rng, density=rng.uniform(*density))


def light_candidate(target: ModelUnderTest, rng: random.Random) -> Candidate:
    """A candidate as boundary repair tends to leave one: few decisions changed (at most 15%), and
    often several residual blocks skipped (each with a probability drawn up to 0.6). Random draws
    rarely look like this, and a MobileNet-V2 export of this kind (9 of 17 blocks skipped, nearly
    all float) came out 25% faster than predicted."""
    candidate = random_candidate(target, rng, density=(0.0, 0.15))
    skip_share = rng.uniform(0.0, 0.6)
    return candidate.replace(skip={block.name: rng.random() < skip_share for block in target.analysis.blocks})


TIGHT_DRAWS = 5000  # per candidate: a model too large to fit under the limit fails, not loops


def tight_candidate(predictor, target, rng: random.Random, limit_ms: float, *, cells: bool = False
                    ) -> tuple[Candidate, int]:
    """A candidate as a search at a tight budget proposes them, and the draws it took: every layer
    pruned by at least the middle of its ratios, most other decisions changed, and half the time
    residual blocks skipped, drawn until its kernels, each timed alone, add up to under
    ``limit_ms`` (stage 1 of the predictor: the figure stage 2 scales, so the draw does not lean
    on the part of the predictor under test). Random draws of the usual kind rarely come this
    small (1 in 1,400 of ResNet-18's at 32 px predicted under 0.06 ms on the Intel class), and
    the profile holds few such candidates."""
    space = Space(target.analysis, SpaceOptions(cells=cells))
    for draws in range(1, TIGHT_DRAWS + 1):
        density = rng.uniform(0.6, 1.0)
        params = {}
        for var in space.variables:
            if var.kind == "prune":
                params[var.name] = rng.choice(sorted(var.choices)[len(var.choices) // 2:])
            else:
                params[var.name] = rng.choice(var.choices) if rng.random() < density else space.neutral(var)
        candidate = space.from_params(params)
        if rng.random() < 0.5:
            share = rng.uniform(0.2, 0.8)
            candidate = candidate.replace(skip={block.name: rng.random() < share for block in target.analysis.blocks})
        if predictor.kernels_alone_ms([candidate_table(target.analysis, candidate)[0]])[0] < limit_ms:
            return candidate, draws
    raise AutocompressError(f"no candidate of {target.spec} at {target.input_size} px in {TIGHT_DRAWS} draws has "
                            f"kernels adding up to under {limit_ms:g} ms alone: give a larger --tight")


def export_candidate(target: ModelUnderTest, candidate: Candidate, path: Path) -> Path:
    """Apply ``candidate`` and export it (quantized where it says) to ``path``, ready to time."""
    compressed = apply_candidate(target.model, candidate, target.analysis, target.example)
    # activation ranges only set scales, not speed
    calibration = [example_input(target.model, (8, *target.input_shape[1:]))]
    export_onnx(compressed, target.example, path, calibration=calibration)
    return path


def measure_candidates(items: list[tuple[ModelUnderTest, Candidate]], *, passes: int = PASSES, runs: int = 20,
                       threads: int = 1) -> list[LatencyMeasurement]:
    """Export and time a batch of candidates end to end, in interleaved passes."""
    with tempfile.TemporaryDirectory() as tmp:
        models = [(export_candidate(target, candidate, Path(tmp) / f"{i}.onnx"), target.input_shape)
                  for i, (target, candidate) in enumerate(items)]
        return measure_interleaved(models, passes=passes, runs=runs, threads=threads)


def measure_in_batches_and_sweeps(items: list[tuple[ModelUnderTest, Candidate]], *, sweeps: int, threads: int = 1,
                                  orders: list[list[int]] | None = None,
                                  desc: str | None = None) -> list[list[LatencyMeasurement]]:
    """Every candidate's measurement in each of ``sweeps`` sweeps over all of them, taken in
    ``CANDIDATES_PER_BATCH`` batches, each sweep in its own order from ``orders`` (default: as given,
    every sweep; ``batch_orders`` makes them): validation, host levels and benchmarks time a plan of
    candidates this way. With ``desc``, a progress bar."""
    orders = [list(range(len(items)))] * sweeps if orders is None else orders
    if len(orders) != sweeps:
        raise ValueError(f"need one order per sweep: {sweeps} sweeps, {len(orders)} orders")
    timings: list[list[LatencyMeasurement]] = [[] for _ in items]
    with tqdm(total=sum(map(len, orders)), desc=desc, unit="candidate", disable=desc is None) as bar:
        for order in orders:
            for start in range(0, len(order), CANDIDATES_PER_BATCH):
                batch = order[start:start + CANDIDATES_PER_BATCH]
                for index, measured in zip(batch, measure_candidates([items[i] for i in batch], threads=threads)):
                    timings[index].append(measured)
                bar.update(len(batch))
    return timings


def batch_orders(scored: int, references: int, sweeps: int, *, seed: int | None) -> list[list[int]]:
    """The order to time a plan in, one per sweep: ``scored`` candidates (indices 0..scored-1) with
    ``references`` (indices scored..) spread evenly among them (``spread_references``). Without a
    ``seed``, every sweep keeps the plan's order. With one, each sweep shuffles the candidates among
    themselves and the references among themselves, so a candidate meets other batch-mates in every
    sweep, and its fastest sweep is the best of several batches rather than of one batch, again.

    A candidate's time depends on the batch it is timed in. Seed 11's 240 validation candidates,
    re-timed twice in one session (``benchmarks/validation_retest.py``): in their own batches they
    came back within a standard deviation of 0.7% of themselves, and the predictor's errors
    correlated 0.99 with the report's; in shuffled batches, 3.7% and 0.85 (0.45 for MobileNet-V2 at
    32x32). Sweeps in one fixed batch agree with each other however far that batch put them."""
    base = spread_references(scored, references)
    if seed is None:
        return [base] * sweeps
    orders = []
    for sweep in range(sweeps):
        rng = random.Random(f"batches-{seed}-{sweep}")
        candidates, refs = rng.sample(range(scored), scored), rng.sample(range(scored, scored + references), references)
        orders.append([candidates[i] if i < scored else refs[i - scored] for i in base])
    return orders


def spread_references(scored: int, references: int) -> list[int]:
    """Candidates (indices 0..scored-1) in order, with the ``references`` after them (indices
    scored..) spread evenly among them, so that the references meet the host when the candidates
    do. Timed at the end of each sweep instead, seed 7's references read the host 0.952x the
    predictor while its candidates, through sweeps that grew faster as they went, measured 0.915x
    (median)."""
    slots = [round((j + 0.5) * scored / references) for j in range(references)] if references else []
    order: list[int] = []
    for i in range(scored + 1):
        order += [scored + j for j, slot in enumerate(slots) if slot == i]
        if i < scored:
            order.append(i)
    return order
