"""The model's level: how fast this machine runs candidates of *this* model, against the predictor.

A hardware model is fit on the families it was profiled on. On a family it never saw (a user's own
network above all) its predictions can sit 20-70% off as a whole while still ranking candidates
well: the kernels are known, how this network strings them together is not. And a relative budget
(``0.5x``) should mean half of the original as it runs here, not half of a prediction.

So a search can time a few dozen of its own candidates before its first fine-tune, untrained
(latency does not depend on the weights' values): the uncompressed model, the simple policies
and random draws of its Space, dense and light, with the one protocol (batches, shuffled sweeps,
the fastest run). Every prediction is then scaled by the median of measured / predicted over
them, as a host level is (``host_level``): the same correction, measured on the candidates that
matter, and it takes the host's speed now along. The measurements stay in the search folder,
and the level records how far off the predictor was before the correction and after it (each
candidate scored by the median of the others, so the figure is not read off the data it fit).
"""

from __future__ import annotations

import random
from pathlib import Path


from ..core.policies import warm_start_policies
from ..core.space import Space
from ..files import write_csv_atomic
from .candidates import ModelUnderTest, batch_orders, measure_in_batches_and_sweeps
from .host_level import HostLevel

__all__ = ["OWN_CANDIDATES", "measure_model_level", "own_candidates", "profiled_on"]

OWN_CANDIDATES = 24
# The uncompressed model is timed this many times more, spread among the others: a relative budget
# is a share of it, so one slow spell in its own batch must not move the whole search's budget
# (timed once per sweep, a search benchmark's ResNet-18 read a third slower at its start than in the
# export's sweeps later, and the budget it searched under was not the one the export checked).
BASELINE_REPEATS = 3


def profiled_on(hardware, model: str) -> bool:
    """Whether ``hardware`` (a ``HardwareModel``) was profiled on candidates of ``model``."""
    return model.removeprefix("torchvision:") in hardware.metadata.get("plan", {}).get("models", ())


def own_candidates(space: Space, count: int = OWN_CANDIDATES, *, seed: int = 0) -> list[tuple[str, object]]:
    """(name, Candidate): the uncompressed model first, the simple policies, then random draws of
    ``space``, alternately dense and light (repairs and allocations leave few decisions changed),
    ``count`` in all, no Candidate twice."""
    chosen = {"uncompressed": space.default()}
    for name, params in warm_start_policies(space).items():
        chosen.setdefault(name, space.from_params(params))
    rng, seen = random.Random(f"own-candidates-{seed}"), {c.to_json() for c in chosen.values()}
    for attempt in range(20 * count):
        if len(chosen) >= count:
            break
        density = rng.uniform(0.3, 1.0) if attempt % 2 else rng.uniform(0.02, 0.2)
        candidate = space.sample(rng, density=density)
        if candidate.to_json() not in seen:
            seen.add(candidate.to_json())
            chosen[f"random-{attempt}"] = candidate
    return list(chosen.items())[:count]


def measure_model_level(hardware, target: ModelUnderTest, space: Space, folder: Path, *, count: int = OWN_CANDIDATES,
                        sweeps: int = 2, seed: int = 0, desc: str | None = None) -> HostLevel:
    """Time ``own_candidates`` of ``target`` (its model, analysis and example as the search has
    them) and set them against ``hardware``'s predictions (at its own level); write each to
    ``folder/own_candidates.csv``. The uncompressed model's measurement (the fastest of its
    ``BASELINE_REPEATS + 1`` timings in every sweep) is the level's ``baseline_ms``."""
    named = own_candidates(space, count, seed=seed)
    threads = hardware.metadata.get("threads", 1)
    items = [(target, candidate) for _, candidate in named] + [(target, named[0][1])] * BASELINE_REPEATS
    timings = measure_in_batches_and_sweeps(items, sweeps=sweeps, threads=threads, desc=desc,
                                            orders=batch_orders(len(named), BASELINE_REPEATS, sweeps, seed=seed))
    timings[0] = [m for repeat in [timings[0]] + timings[len(named):] for m in repeat]
    predicted, _ = hardware.predict_candidates(target.analysis, [candidate for _, candidate in named])
    rows = [{"model": target.spec, "input_size": target.input_size, "name": name, "candidate": candidate.to_json(),
             "predicted_ms": float(ms), "measured_ms": min(m.best_ms for m in measured)}
            for (name, candidate), ms, measured in zip(named, predicted, timings[:len(named)])]
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_csv_atomic(Path(folder) / "own_candidates.csv", list(rows[0]), rows)
    references = [{k: r[k] for k in ("model", "input_size", "name", "predicted_ms", "measured_ms")} for r in rows]
    level = HostLevel.from_references(references)
    return HostLevel(level.ratio, level.references, baseline_ms=rows[0]["measured_ms"])

