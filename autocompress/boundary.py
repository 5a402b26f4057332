"""Boundary repair: turn a candidate predicted over the latency budget into one just under it.

The latency predictor answers in milliseconds, so a sampled candidate that misses the budget need
not be thrown away: the smallest change that makes it fit is found by asking the predictor, and
the result (the sampler's other choices kept) is queued as the next trial. This is what
concentrates a search's fine-tunes near the budget, where the best accuracy under budget lies.

The moves, cheapest in accuracy first: the slowest layers that are not int8 become int8, one more
at a time (int8 runs about 3x faster than float on ORT's CPU kernels, and int4 has no kernel at
all); only if every layer at int8 still misses, every channel group is pruned one notch more.
"""

from __future__ import annotations

from dataclasses import replace

from .space import Candidate, Space

__all__ = ["repair_to_budget"]


def repair_to_budget(space: Space, hardware, candidate: Candidate, budget_ms: float,
                     per_layer_ms: dict[str, float]) -> tuple[Candidate, float] | None:
    """The smallest modification of ``candidate`` predicted within ``budget_ms``, and its latency.

    ``per_layer_ms`` is the candidate's predicted breakdown (it orders the layers). Returns None
    when even every layer at int8 with every group pruned to the space's largest ratio misses.
    """
    analysis = space.analysis
    bits_vars = [v for v in space.variables if v.kind == "bits" and 8 in v.choices]
    slowest_first = sorted((v for v in bits_vars if candidate.bits_of(v.unit) != 8),
                           key=lambda v: -per_layer_ms.get(v.unit, 0.0))
    to_int8 = []
    bits = dict(candidate.bits)
    for var in slowest_first:
        bits[var.unit] = 8
        to_int8.append(replace(candidate, bits=dict(bits)))
    found = _first_within(hardware, analysis, to_int8, budget_ms)
    if found is not None:
        return found
    all_int8 = to_int8[-1] if to_int8 else candidate
    prune_vars = [v for v in space.variables if v.kind == "prune"]
    deeper = []
    for notch in range(1, max((len(v.choices) for v in prune_vars), default=1)):
        prune = {}
        for var in prune_vars:
            choices = sorted(var.choices)
            current = choices.index(min(choices, key=lambda c: abs(c - all_int8.ratio(var.unit))))
            prune[var.unit] = choices[min(current + notch, len(choices) - 1)]
        deeper.append(replace(all_int8, prune=prune))
    return _first_within(hardware, analysis, deeper, budget_ms)


def _first_within(hardware, analysis, candidates: list[Candidate], budget_ms: float):
    if not candidates:
        return None
    latencies, _ = hardware.predict_candidates(analysis, candidates)  # one batched call: ~1 ms per candidate
    for candidate, ms in zip(candidates, latencies):
        if ms <= budget_ms:
            return candidate, float(ms)
    return None
