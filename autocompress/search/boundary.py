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
The ``Damage`` the guide injects (``damage``) prices each move: that proxy, or the damages
measured on the trained model.

Latencies are read at the search's confidence (``budget.ChanceConstraint``): a repair lands where
the candidate meets the budget with that probability, not where its mean does.
"""

from __future__ import annotations

from ..core.space import Candidate, Space
from ..core.technique import technique
from .budget import ON_THE_MEAN, ChanceConstraint
from .damage import MAC_SHARE, Damage

__all__ = ["fastest_candidate", "repair_to_budget"]

_MAX_STEPS = 25  # enough from a sampled candidate; a walk from the uncompressed model needs more
_FASTEST_PASSES = 30
_MOVES_PER_STEP = 3  # the best few moves are applied together: fewer predictor calls per repair
# Far from the budget a step takes more moves, best score first, until their latency gains (each
# priced alone) add up to this share of the gap. Measured damages rank first the moves that cost
# nearly nothing, and most of those gain little: three a step, a repair from a typical sampled
# MobileNet-V2 candidate to a quarter of its latency ran out of steps every time.
_GAP_SHARE_PER_STEP = 0.5


def repair_to_budget(space: Space, hardware, candidate: Candidate, budget_ms: float, *,
                     damage: Damage = MAC_SHARE,
                     chance: ChanceConstraint = ON_THE_MEAN,
                     max_steps: int = _MAX_STEPS) -> tuple[Candidate, float] | None:
    """A modification of ``candidate`` predicted within ``budget_ms`` at ``chance``'s confidence,
    and its latency read there (``ChanceConstraint.upper_ms``).

    ``damage``: what ranks the moves (the guide's; default the MAC-share proxy). Returns None when
    no sequence of ``max_steps`` steps gets there (or no move saves latency any more).
    """
    analysis = space.analysis
    shares = _mac_shares(space)
    current = candidate
    for _ in range(max_steps):
        moves = list(_moves(space, current, shares, damage))
        if not moves:
            return None
        now = chance.predict_upper_ms(hardware, analysis, [current])
        if current is not candidate and now[0] <= budget_ms:  # the moves of the last step, together, were enough
            return current, float(now[0])
        latencies = chance.predict_upper_ms(hardware, analysis, [c for c, _, _ in moves])
        scored = sorted(((float(now[0]) - ms) / (cost + damage.epsilon), index)
                        for index, ((_, _, cost), ms) in enumerate(zip(moves, latencies)))
        useful = [(score, index) for score, index in reversed(scored) if score > 0]
        if not useful:
            return None
        crossing = [i for _, i in useful if latencies[i] <= budget_ms]
        if crossing:  # one move is enough: take the best-scoring one that fits, so we land near the boundary
            return moves[crossing[0]][0], float(latencies[crossing[0]])
        gains = [float(now[0]) - float(ms) for ms in latencies]
        current = _combine(current, _step(moves, useful, gains, float(now[0]) - budget_ms))
    final = chance.predict_upper_ms(hardware, analysis, [current])
    return (current, float(final[0])) if final[0] <= budget_ms else None


def _step(moves: list, useful: list[tuple[float, int]], gains_ms: list[float], gap_ms: float) -> list:
    """The moves of one step, best score first, one per variable: at least ``_MOVES_PER_STEP``, more
    while their gains, each priced alone, add up to less than ``_GAP_SHARE_PER_STEP`` of the gap."""
    taken, names, gained = [], set(), 0.0
    for _, index in useful:
        if len(taken) >= _MOVES_PER_STEP and gained >= _GAP_SHARE_PER_STEP * gap_ms:
            break
        if moves[index][1] not in names:
            taken.append(moves[index])
            names.add(moves[index][1])
            gained += gains_ms[index]
    return taken


def _mac_shares(space: Space) -> dict[str, float]:
    return {v.name: technique(v.kind).mac_share(space.analysis, v.unit) for v in space.variables}


def _moves(space: Space, candidate: Candidate, shares: dict[str, float], damage: Damage):
    """(modified candidate, the variable changed, its accuracy cost) for every single move."""
    for var in space.variables:
        current = space.value_of(candidate, var)
        for value, proxy in technique(var.kind).repair_moves(var, current, shares.get(var.name, 0.0)):
            yield (candidate.with_decision(var.kind, var.unit, value), var.name,
                   damage.move_cost(var.name, current, value, proxy))


def _combine(candidate: Candidate, moves) -> Candidate:
    """Apply several single moves (each on a different variable: ``_step`` picks them so) to
    ``candidate`` at once."""
    combined = candidate
    for moved, name, _ in moves:
        kind, unit = name.split("/", 1)
        combined = combined.with_decision(kind, unit, moved.of(kind)[unit])
    return combined


def fastest_candidate(space: Space, hardware, *, stop_at_ms: float = 0.0,
                      chance: ChanceConstraint = ON_THE_MEAN) -> tuple[Candidate, float]:
    """About the fastest candidate of ``space`` the predictor knows of (or the first one found
    within ``stop_at_ms``), and its predicted latency, both read at ``chance``'s confidence.

    A coordinate descent from the uncompressed model: each pass prices every single change of
    every variable in one batch, then takes each variable's fastest change together (or, when
    those together are no faster, the fastest single change), until nothing is faster: no single
    change, hence no move of ``repair_to_budget``, gains anything from there. Latency is not
    monotonic in the choices (an int4 layer runs a float kernel, slower than int8), so no choice
    is assumed to be the fastest of its variable."""
    analysis = space.analysis
    current = space.default()
    now = float(chance.predict_upper_ms(hardware, analysis, [current])[0])
    for _ in range(_FASTEST_PASSES):
        if now <= stop_at_ms:
            break
        changes = [(var, value) for var in space.variables for value in var.choices
                   if value != space.value_of(current, var)]
        if not changes:
            break
        latencies = chance.predict_upper_ms(
            hardware, analysis, [current.with_decision(var.kind, var.unit, value) for var, value in changes])
        best: dict[str, tuple[float, object, object]] = {}
        for (var, value), ms in zip(changes, latencies):
            if ms < now and ms < best.get(var.name, (now,))[0]:
                best[var.name] = (float(ms), var, value)
        if not best:
            break
        together = current
        for _, var, value in best.values():
            together = together.with_decision(var.kind, var.unit, value)
        ms = float(chance.predict_upper_ms(hardware, analysis, [together])[0])
        if ms >= now:  # the changes interact: take the single best one
            ms, var, value = min(best.values(), key=lambda item: item[0])
            together = current.with_decision(var.kind, var.unit, value)
        current, now = together, ms
    return current, now
