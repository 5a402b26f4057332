"""What a profile measures: the plan (``ProfilePlan``) and the kernels and candidates it draws.

Every plan item is drawn from its own seed, so an interrupted run re-plans the same items and
skips those already measured.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace

from ..core.policies import warm_start_policies
from ..core.space import Candidate, Space, SpaceOptions
from .candidates import light_candidate, model_under_test, random_candidate
from .kernels import Kernel, kernels_of_candidate
from .measure import PASSES

__all__ = ["ProfilePlan"]


@dataclass(frozen=True)
class ProfilePlan:
    """What ``run_profile`` measures. The defaults take about 45 minutes on a 2-core x86 machine;
    ``max_minutes`` caps a run (kernels get 40% of it), the model is fit on what was measured, and
    a rerun resumes where it stopped."""

    models: tuple[str, ...] = ("resnet18", "mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small")
    input_sizes: tuple[int, ...] = (32, 64)
    kernels: int = 2000
    heavy_kernels: int = 600  # more kernels of those models, drawn in proportion to their MACs
    attention_kernels: int = 300  # attention kernels of broad shapes, where a model has attention
    candidates: int = 480
    light_candidates: int = 10  # per model and size, besides its uncompressed model
    warm_start_policies: bool = True  # the search's uniform policies of each model and size
    shared_share: float = 0.65  # share of kernels taken from the profiling models' candidates
    seed: int = 0
    threads: int = 1
    passes: int = PASSES  # interleaved timing passes (see measure_interleaved)
    sweeps: int = 2  # sweeps over all whole candidates, minutes apart; the fastest counts
    max_minutes: float = 30.0

    @classmethod
    def from_dict(cls, data: dict) -> ProfilePlan:
        """The plan a hardware model's metadata.json records (``asdict``), lists back as tuples;
        keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        if self.kernels < 1 or min(self.heavy_kernels, self.candidates, self.light_candidates) < 0 \
                or not self.models or not self.input_sizes:
            raise ValueError(f"a profile needs kernels >= 1, heavy kernels, candidates and light candidates >= 0, "
                             f"models and input sizes; got {self}")
        if self.passes < 1 or self.sweeps < 1 or self.max_minutes <= 0:
            raise ValueError(f"a profile needs passes >= 1, sweeps >= 1 and max_minutes > 0; got {self.passes=} "
                             f"{self.sweeps=} {self.max_minutes=}")


def _kernel_plan(plan: ProfilePlan) -> list[Kernel]:
    """``plan.kernels`` kernels (a ``shared_share`` of them from the profiling models' candidates,
    drawn uniformly; the rest broad), then ``plan.heavy_kernels`` more from those candidates,
    drawn in proportion to their MACs.

    Why the heavy draws: a network's time, and so its prediction error, is dominated by its few
    largest kernels, while a uniform draw picks a kernel by how many distinct shapes there are.
    The mobile nets' many 1x1 convolutions then outnumber ResNet's 3x3 ones, and the kernels
    over 0.2 ms were predicted with twice the error of the small ones (log RMS 0.42 against 0.14
    for float convs, cross-validated). The heavy draws come after the uniform ones, with their
    own seeds, so a profile taken before them stays valid and a rerun only adds them."""
    pool = sorted({k for k in _kernels_of_profiling_models(plan)}, key=lambda k: tuple(k.to_dict().values()))
    kernels, seen = [], set()

    def draw(count: int, tag: str, pick) -> None:
        wanted = len(kernels) + count
        for i in range(count * 3):  # deduplication drops some draws
            if len(kernels) == wanted:
                break
            rng = random.Random(f"{tag}-{plan.seed}-{i}")
            kernel = pick(rng, rng.choice((32, 16, 8, 4)))
            if kernel not in seen:
                seen.add(kernel)
                kernels.append(kernel)

    def uniform(rng: random.Random, bits: int) -> Kernel:
        if rng.random() < plan.shared_share and pool:
            return _at_bits(rng.choice(pool), bits)
        return _broad_kernel(rng, bits)

    macs = [k.macs for k in pool]
    draw(plan.kernels, "kernel", uniform)
    if pool:
        draw(plan.heavy_kernels, "heavy-kernel", lambda rng, bits: _at_bits(rng.choices(pool, weights=macs)[0], bits))
    if any(k.op == "attention" for k in pool):  # a few shapes per model: too few to fit a model of their own
        draw(plan.attention_kernels, "attention-kernel", lambda rng, bits: _broad_attention(rng))
    return kernels


def _at_bits(kernel: Kernel, bits: int) -> Kernel:
    """``kernel`` at ``bits``; an attention kernel runs in float whatever its projections' bits."""
    return replace(kernel, bits=32 if kernel.op == "attention" else bits)


def _kernels_of_profiling_models(plan: ProfilePlan) -> list[Kernel]:
    kernels = []
    for spec in plan.models:
        for size in plan.input_sizes:
            target = model_under_test(spec, size)
            for i in range(20):
                candidate = random_candidate(target, random.Random(f"pool-{plan.seed}-{spec}-{size}-{i}"))
                kernels += kernels_of_candidate(target.analysis, candidate)
    return [Kernel(k.op, 32, k.cin, k.cout, k.kernel, k.stride, k.h, k.w, k.out_h, k.out_w, k.groups) for k in kernels]


def _broad_kernel(rng: random.Random, bits: int) -> Kernel:
    """Shapes beyond the profiling models: odd channel counts, grouped convs, big kernels, MLP rows."""
    def channels():
        c = int(math.exp(rng.uniform(math.log(8), math.log(1024))))
        return max(8, c // 8 * 8) if rng.random() < 0.6 else c

    op = rng.choices(("conv", "dwconv", "linear"), weights=(0.55, 0.3, 0.15))[0]
    if op == "linear":
        rows = rng.choice((1, 1, 4, 16, 64))
        return Kernel("linear", bits, channels(), channels(), 1, 1, rows, 1, rows, 1)
    size = rng.choice((2, 4, 7, 8, 14, 16, 28, 32, 56, 64))
    kernel = rng.choice((1, 3, 3, 5, 7)) if op == "conv" else rng.choice((3, 5, 7))
    stride = rng.choice((1, 1, 2))
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    if op == "dwconv":
        c = channels()
        return Kernel("dwconv", bits, c, c, kernel, stride, size, size, out, out, c)
    cin, cout = (3 if rng.random() < 0.05 else channels()), channels()
    groups = 1
    if rng.random() < 0.15:  # grouped (RegNet/ResNeXt style)
        groups = rng.choice([g for g in (2, 4, 8, 16) if cin % g == 0 and cout % g == 0] or [1])
    while cout * cin // groups * kernel * kernel * out * out > 3e8:  # keep each measurement short
        cin, cout = max(groups, cin // 2 // groups * groups), max(groups, cout // 2 // groups * groups)
    return Kernel("conv", bits, cin, cout, kernel, stride, size, size, out, out, groups)


def _broad_attention(rng: random.Random) -> Kernel:
    """An attention kernel: 1-16 heads of 16-128 features over 8-1024 tokens (a ViT's 50, 65, 197
    or 257 often), attending over as many keys, or one time in ten over another count."""
    heads = rng.choice((1, 1, 2, 3, 3, 4, 6, 8, 12, 16))
    head_dim = rng.choice((16, 32, 48, 64, 64, 96, 128))
    tokens = rng.choice((50, 65, 197, 257)) if rng.random() < 0.3 else int(math.exp(rng.uniform(math.log(8),
                                                                                                  math.log(1024))))
    keys = tokens if rng.random() < 0.9 else int(math.exp(rng.uniform(math.log(8), math.log(1024))))
    while 2 * heads * tokens * keys * head_dim > 3e8:  # keep each measurement short
        heads, tokens = (heads // 2, tokens) if heads > 1 else (heads, tokens // 2)
        keys = min(keys, max(tokens, 8))
    return Kernel("attention", 32, head_dim, keys, 1, 1, tokens, 1, tokens, 1, heads)


def _candidate_plan(plan: ProfilePlan) -> list[tuple[str, int, Candidate]]:
    """``plan.candidates`` random candidates, spread evenly over models and sizes; then, for each
    model and size, its uncompressed model and ``plan.light_candidates`` lightly compressed ones
    (``light_candidate``: few changes, often blocks skipped, as boundary repair leaves them).

    Why the extra ones: a big, nearly all-float network streams more weights than the cache
    holds, and runs slower than its kernels suggest (the uncompressed ResNet-18 at 32x32 was
    predicted at 0.73 ms and measured at 1.1-2.1 ms). Random draws rarely land there, yet the
    uncompressed model is what a budget of "0.5x" is measured against.

    Then the uniform policies every search starts from (``core.policies.warm_start_policies``: all int8,
    and uniform pruning in int8 and in float): the search exports them often, and random draws
    never come near them. Before they were profiled, 28% of those policies were predicted within
    10% on the Intel (AMX) class, most of them far too slow: uniform 75% pruning in float ran in
    0.07 ms where 0.18 ms was predicted (MobileNet-V2 at 32x32), and a search that believes that
    rejects the very candidates that fit a tight budget. They come last, so a profile taken
    before them stays valid and a rerun only adds them."""

    items = []
    for i in range(plan.candidates):
        spec = plan.models[i % len(plan.models)]
        size = plan.input_sizes[(i // len(plan.models)) % len(plan.input_sizes)]
        target = model_under_test(spec, size)
        items.append((spec, size, random_candidate(target, random.Random(f"profile-{plan.seed}-{i}"))))
    for spec in plan.models:
        for size in plan.input_sizes:
            target = model_under_test(spec, size)
            items.append((spec, size, Space(target.analysis).default()))
            items += [(spec, size, light_candidate(target, random.Random(f"light-{plan.seed}-{spec}-{size}-{i}")))
                      for i in range(plan.light_candidates)]
    for spec in plan.models if plan.warm_start_policies else ():
        for size in plan.input_sizes:
            space = Space(model_under_test(spec, size).analysis, SpaceOptions(cells=False))  # the plan predates cells
            items += [(spec, size, space.from_params(params)) for params in warm_start_policies(space).values()]
    return items
