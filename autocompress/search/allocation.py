"""Budget-aware allocation: candidates that keep the most of the model (the least measured damage)
under a ladder of latency budgets, found with the latency predictor in the loop.

This is the greedy path of the Lagrangian relaxation of "least total damage under a latency
budget" (the knapsack HAQ, MCT and HAWQ solve per layer): from the uncompressed model, each step
takes the moves that buy the most predicted latency per unit of measured damage
(``boundary.repair_to_budget`` with the sensitivities), and the path stops at each rung of the
ladder on its way down. Greedy rather than integer programming, because the latency of a
candidate is not a sum of per-layer figures (fusions, the int8 islands of a quantized graph, the
channels one pruning group sets for the next layer): every step prices whole candidates with the
predictor, so what is checked is what the search will be told, not a sum.

A greedy path keeps early moves that later ones made unnecessary, so at each rung a give-back
pass then undoes (or softens) the changes whose damage is largest while the candidate still fits.
The rungs are spread below the user's budget (``BUDGET_SHARES``) so that the front fills in, not
only its fastest end; they seed the study after the uniform warm starts and before the sampler.
A budget the uncompressed model already meets (a loose absolute one, or a supernet whose largest
subnet fits) would put every rung at the uncompressed model, so the rungs then stand below its
latency instead: the front still wants its faster points.
Latencies are read at the search's confidence (``budget.ChanceConstraint``), as the budget is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.space import Candidate, Space
from .boundary import repair_to_budget
from .budget import ON_THE_MEAN, ChanceConstraint
from .damage import MeasuredDamage

__all__ = ["Allocation", "BUDGET_SHARES", "allocate", "expected_damage"]

BUDGET_SHARES = (1.0, 0.85, 0.7, 0.55, 0.4, 0.3)  # of the user's budget, loosest first
# Steps of the walk down from the uncompressed model (each applies a few moves): a deep rung of
# a large model can take a move for every variable, more than a repair from a sampled candidate.
_WALK_STEPS = 200
_GIVE_BACK_STEPS = 200  # each step undoes one change: never more than there are variables to undo


@dataclass(frozen=True)
class Allocation:
    share: float  # of the user's budget (of the uncompressed model's latency, when that is lower)
    target_ms: float
    candidate: Candidate
    predicted_ms: float  # read at the confidence the allocation was made for (``ChanceConstraint.upper_ms``)
    damage: float  # the sum of the measured damages of its decisions (the additive prior)


def expected_damage(space: Space, candidate: Candidate, damage: Callable[[str, object], float]) -> float:
    """The additive prior of a candidate's accuracy loss: the sum over its decisions of the damage
    each did alone (``Sensitivities.kl``); 0 for the uncompressed model."""
    return sum(damage(var.name, space.value_of(candidate, var)) for var in space.variables)


def allocate(space: Space, hardware, damage: Callable[[str, object], float], budget_ms: float, *,
             shares: tuple[float, ...] = BUDGET_SHARES, chance: ChanceConstraint = ON_THE_MEAN) -> list[Allocation]:
    """One candidate per rung ``share * budget_ms`` the space can reach (of the uncompressed model's
    latency where that is lower), loosest first, each predicted within its rung at ``chance``'s
    confidence; distinct candidates only (two rungs can land on the same one). ``damage(name,
    value)``: the damage of each value alone (a ``MeasuredDamage``, or a plain function)."""
    analysis = space.analysis
    walk_by = damage if isinstance(damage, MeasuredDamage) else MeasuredDamage(damage)
    current = space.default()
    now = float(chance.predict_upper_ms(hardware, analysis, [current])[0])
    found: list[Allocation] = []
    ladder = min(budget_ms, now)
    for share in sorted(shares, reverse=True):
        target = share * ladder
        if now > target:
            walked = repair_to_budget(space, hardware, current, target, damage=walk_by, chance=chance,
                                      max_steps=_WALK_STEPS)
            if walked is None:
                break  # no move gains latency any more: deeper rungs are out of reach too
            current, now = walked
        current, now = _give_back(space, hardware, current, now, target, damage, chance)
        if all(a.candidate != current for a in found):
            found.append(Allocation(share, target, current, now, expected_damage(space, current, damage)))
    return found


def _give_back(space: Space, hardware, candidate: Candidate, now: float, target: float,
               damage: Callable[[str, object], float], chance: ChanceConstraint) -> tuple[Candidate, float]:
    """Undo the most damaging changes that are no longer needed: each step prices, in one batch,
    every change of a compressed decision to a less damaging value, and takes the one that removes
    the most damage while staying within ``target``."""
    analysis = space.analysis
    for _ in range(_GIVE_BACK_STEPS):
        softer = []
        for var in space.variables:
            value = space.value_of(candidate, var)
            here = damage(var.name, value)
            for other in var.choices:
                if other != value and damage(var.name, other) < here:
                    softer.append((here - damage(var.name, other), candidate.with_decision(var.kind, var.unit, other)))
        if not softer:
            break
        latencies = chance.predict_upper_ms(hardware, analysis, [c for _, c in softer])
        fitting = [(gain, -float(ms), index) for index, ((gain, _), ms) in enumerate(zip(softer, latencies))
                   if ms <= target]
        if not fitting:
            break
        _, minus_ms, index = max(fitting)
        candidate, now = softer[index][1], -minus_ms
    return candidate, now
