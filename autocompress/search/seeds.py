"""The candidates a search starts from, and the order it fine-tunes them in.

Every search starts from the simple hand policies (``core.policies``), so that its front is judged
against them; a guide with measured damages (``guides``: sensitivity, surrogate) adds the
budget-aware allocations (``allocation``) and fine-tunes all of them front first: in the order of
the hypervolume each adds under the budget, as the latency predictor (at the search's confidence)
and the additive prior of accuracy (``allocation.expected_damage``) expect it. The order is layered, as non-dominated
sorting is: once no seed left adds to the layer ordered so far, the next layer starts from none.

Why: a search cut short (a trial budget, early stopping, an interrupt) has then fine-tuned the
seeds that make its front, and the sampler's first generation learns from them, not from the
slow end of the hand policies, which came first only because a hand wrote them so. Seeds
predicted over the budget come last: they are told at once, without a fine-tune, whatever their
place. The MAC-share guide keeps the hand order: it is the ablation of everything measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.policies import warm_start_policies
from ..core.space import Space
from .allocation import allocate, expected_damage
from .budget import ChanceConstraint
from .damage import MeasuredDamage
from .pareto import dominated_area

__all__ = ["Seed", "front_first", "front_first_seeds", "hand_policy_seeds"]


@dataclass(frozen=True)
class Seed:
    origin: str  # warm_start:NAME or allocation:SHAREx, as the study records it
    params: dict


def hand_policy_seeds(space: Space) -> list[Seed]:
    """The hand policies (``core.policies``), in their written order."""
    return [Seed(f"warm_start:{name}", params) for name, params in warm_start_policies(space).items()]


def front_first_seeds(space: Space, hardware, damage: MeasuredDamage, budget_ms: float,
                      chance: ChanceConstraint) -> list[Seed]:
    """The hand policies and the allocations under the budget by the measured ``damage``, all
    ordered front first, as the predictor (at ``chance``'s confidence) and the additive prior expect them."""
    seeds = hand_policy_seeds(space)
    seeds += [Seed(f"allocation:{a.share:g}x", space.params_of(a.candidate))
              for a in allocate(space, hardware, damage, budget_ms, chance=chance)]
    candidates = [space.from_params(seed.params) for seed in seeds]
    latencies = chance.predict_upper_ms(hardware, space.analysis, candidates)
    # exp(-KL): the share of the teacher's belief a candidate is expected to keep, in (0, 1]: an
    # accuracy-like scale on which the hypervolume can weigh damage against latency.
    kept = [math.exp(-expected_damage(space, c, damage)) for c in candidates]
    return [seeds[i] for i in front_first([float(ms) for ms in latencies], kept, budget_ms)]


def front_first(latencies: Sequence[float], accuracies: Sequence[float], budget_ms: float) -> list[int]:
    """Indices of the points ``(latencies[i], accuracies[i])`` (accuracies above 0), each next the
    one that adds the most area under ``budget_ms`` to its layer; the points not under the budget
    last, in their given order. Ties keep the given order."""
    under = [i for i, ms in enumerate(latencies) if ms < budget_ms]
    order, layer = [], []
    while under:
        base = dominated_area(layer, ref_latency_ms=budget_ms)
        gains = [dominated_area([*layer, (latencies[i], accuracies[i])], ref_latency_ms=budget_ms) - base
                 for i in under]
        best = max(range(len(under)), key=lambda k: (gains[k], -k))
        if gains[best] <= 0 and not layer:  # none adds anything even alone (no accuracy left at all)
            order += under
            break
        if gains[best] <= 0:
            layer = []  # every seed left is dominated by this layer: the next layer starts
            continue
        i = under.pop(best)
        order.append(i)
        layer.append((latencies[i], accuracies[i]))
    return order + [i for i, ms in enumerate(latencies) if not ms < budget_ms]
