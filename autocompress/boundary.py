"""Boundary repair: turn a candidate predicted over the latency budget into one just under it.

The latency predictor answers in milliseconds, so a sampled candidate that misses the budget need
not be thrown away: a greedy walk, guided by the predictor, makes the changes that buy the most
latency for the least expected accuracy loss until it fits, keeping the sampler's other choices,
and the result is queued as the next trial. This is what concentrates a search's fine-tunes near
the budget, where the best accuracy under budget lies.

Moves, and what each is assumed to cost in accuracy (a proxy: the share of the model's MACs it
touches, weighted by how destructive the change is):

- a layer to int8 (cheap: 0.2 x its MAC share), or from int4 to int8 or float (free: more accurate);
  which precision is fastest differs per layer on ORT (int8 depthwise convs can be slower than float);
- a factorized layer made whole again (free: it runs as one kernel instead of two);
- a channel group pruned one notch more (the notch times the MAC share of the layers it cuts);
- a residual block skipped (its whole MAC share, plus a fixed penalty).
"""

from __future__ import annotations

from dataclasses import replace

from .space import Candidate, Space

__all__ = ["repair_to_budget"]

_MAX_STEPS = 25
_MOVES_PER_STEP = 3  # the best few moves are applied together: fewer predictor calls per repair
_SKIP_PENALTY = 0.02
_EPS = 1e-3


def repair_to_budget(space: Space, hardware, candidate: Candidate, budget_ms: float) -> tuple[Candidate, float] | None:
    """A modification of ``candidate`` predicted within ``budget_ms``, and its predicted latency.

    Returns None when no sequence of moves gets there (or none saves latency any more).
    """
    analysis = space.analysis
    shares = _mac_shares(space)
    current = candidate
    for _ in range(_MAX_STEPS):
        moves = list(_moves(space, current, shares))
        if not moves:
            return None
        now, _ = hardware.predict_candidates(analysis, [current])
        latencies, _ = hardware.predict_candidates(analysis, [c for c, _, _ in moves])
        scored = sorted(((float(now[0]) - ms) / (damage + _EPS), index)
                        for index, ((_, _, damage), ms) in enumerate(zip(moves, latencies)))
        useful = [(score, index) for score, index in reversed(scored) if score > 0]
        if not useful:
            return None
        crossing = [i for _, i in useful if latencies[i] <= budget_ms]
        if crossing:  # one move is enough: take the best-scoring one that fits, so we land near the boundary
            return moves[crossing[0]][0], float(latencies[crossing[0]])
        current = _combine(current, [moves[i] for _, i in useful[:_MOVES_PER_STEP]])
    final, _ = hardware.predict_candidates(analysis, [current])
    return (current, float(final[0])) if final[0] <= budget_ms else None


def _mac_shares(space: Space) -> dict[str, float]:
    analysis = space.analysis
    total = max(1, sum(u.macs for u in analysis.layers))
    layer = {u.name: u.macs / total for u in analysis.layers}
    shares = {f"bits/{name}": share for name, share in layer.items()}
    for group in analysis.groups:
        shares[f"prune/{group.id}"] = sum(layer.get(m.module, 0.0) for m in group.members)
    for block in analysis.blocks:
        shares[f"skip/{block.name}"] = block.macs / total
    return shares


def _moves(space: Space, candidate: Candidate, shares: dict[str, float]):
    """(modified candidate, the variable changed, accuracy-damage proxy) for every single move."""
    for var in space.variables:
        share = shares.get(var.name, 0.0)
        if var.kind == "bits":
            bits = candidate.bits_of(var.unit)
            for target in (8, 32):
                if target != bits and target in var.choices and not (target == 32 and bits == 16):
                    damage = 0.0 if bits == 4 or target == 32 else 0.2 * share
                    yield replace(candidate, bits=candidate.bits | {var.unit: target}), var.name, damage
        elif var.kind == "rank" and candidate.rank_ratio(var.unit) < 1.0:
            # a factorized layer runs as two kernels: undoing it often saves time and always accuracy
            yield replace(candidate, rank=candidate.rank | {var.unit: 1.0}), var.name, 0.0
        elif var.kind == "prune":
            choices = sorted(var.choices)
            ratio = candidate.ratio(var.unit)
            deeper = [c for c in choices if c > ratio + 1e-9]
            if deeper:
                yield (replace(candidate, prune=candidate.prune | {var.unit: deeper[0]}), var.name,
                       (deeper[0] - ratio) * share)
        elif var.kind == "skip" and not candidate.skip.get(var.unit, False):
            yield replace(candidate, skip=candidate.skip | {var.unit: True}), var.name, share + _SKIP_PENALTY


def _combine(candidate: Candidate, moves) -> Candidate:
    """Apply several single moves (each on a different variable) to ``candidate`` at once."""
    seen, combined = set(), candidate
    for moved, name, _ in moves:
        if name in seen:
            continue
        seen.add(name)
        kind, unit = name.split("/", 1)
        field = getattr(combined, kind) | {unit: getattr(moved, kind)[unit]}
        combined = replace(combined, **{kind: field})
    return combined
