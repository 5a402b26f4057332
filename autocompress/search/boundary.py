"""Boundary repair: turn a candidate predicted over the latency budget into one just under it.

The latency predictor answers in milliseconds, so a sampled candidate that misses the budget need
not be thrown away: a greedy walk, guided by the predictor, makes the changes that buy the most
latency for the least expected accuracy loss until it fits, keeping the sampler's other choices,
and the result is queued as the next trial. This is what concentrates a search's fine-tunes near
the budget, where the best accuracy under budget lies.

Moves come from the techniques (``Technique.repair_moves``), each with an accuracy-damage proxy:
the share of the model's MACs the decision touches (``Technique.mac_share``), weighted by how
destructive the change is (int8 a fifth of its share, one notch more pruning the notch times its
share, a skipped block its share plus a penalty; undoing int4 or a factorization costs nothing).
"""

from __future__ import annotations

from ..core.space import Candidate, Space
from ..core.technique import technique

__all__ = ["repair_to_budget"]

_MAX_STEPS = 25
_MOVES_PER_STEP = 3  # the best few moves are applied together: fewer predictor calls per repair
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
    return {v.name: technique(v.kind).mac_share(space.analysis, v.unit) for v in space.variables}


def _moves(space: Space, candidate: Candidate, shares: dict[str, float]):
    """(modified candidate, the variable changed, accuracy-damage proxy) for every single move."""
    for var in space.variables:
        current = candidate.of(var.kind).get(var.unit, space.neutral(var))
        for value, damage in technique(var.kind).repair_moves(var, current, shares.get(var.name, 0.0)):
            yield candidate.with_decision(var.kind, var.unit, value), var.name, damage


def _combine(candidate: Candidate, moves) -> Candidate:
    """Apply several single moves (each on a different variable) to ``candidate`` at once."""
    seen, combined = set(), candidate
    for moved, name, _ in moves:
        if name in seen:
            continue
        seen.add(name)
        kind, unit = name.split("/", 1)
        combined = combined.with_decision(kind, unit, moved.of(kind)[unit])
    return combined
