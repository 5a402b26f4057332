"""What a change to a candidate is expected to cost in accuracy: the one ranking the repair, the
allocation and the seed order read, injected into them by the guide (``guides``).

Two kinds. ``MacShareDamage`` is the proxy that needs no measurement: a move costs the share of the
model's MACs its decision touches, weighted by how destructive the change is (the technique's
``repair_moves`` say how). ``MeasuredDamage`` reads the damage each value did alone to the trained
model (``train.sensitivity``, optionally weighted by technique: ``recovery_weights``): a move costs
the damage of its new value less that of the old one, so moves the model shrugs off go first
whatever their MAC share, and a candidate's expected damage is the sum over its decisions.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MAC_SHARE", "Damage", "MacShareDamage", "MeasuredDamage"]


class Damage:
    """The cost of moving one decision from ``current`` to ``value``."""

    # Added to every cost before the latency gained is divided by it: a free move ranks by its gain,
    # not at infinity. In the cost's own units, well under any real cost.
    epsilon: float = 1e-3

    def move_cost(self, name: str, current, value, mac_proxy: float) -> float:
        """``name``: the variable; ``mac_proxy``: the technique's MAC-share estimate of the move."""
        raise NotImplementedError


class MacShareDamage(Damage):
    """The MAC-share proxy: nothing measured, the technique's estimate of each move."""

    epsilon = 1e-3  # in MAC shares

    def move_cost(self, name: str, current, value, mac_proxy: float) -> float:
        return mac_proxy

    def __repr__(self) -> str:
        return "MacShareDamage()"


MAC_SHARE = MacShareDamage()


class MeasuredDamage(Damage):
    """The damage each value did alone (``of(name, value)``, e.g. ``Sensitivities.kl``); callable as
    that function, which the allocation and the accuracy model read directly."""

    epsilon = 1e-5  # in nats of KL divergence: well under any damage a change makes

    def __init__(self, of: Callable[[str, object], float]) -> None:
        self.of = of

    def __call__(self, name: str, value) -> float:
        return self.of(name, value)

    def move_cost(self, name: str, current, value, mac_proxy: float) -> float:
        return max(0.0, self.of(name, value) - self.of(name, current))
