"""Latency budgets: ``5ms`` (absolute) or ``0.5x`` (a share of the baseline's predicted latency)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BudgetError

__all__ = ["Budget", "BudgetError"]

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|x)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    value: float
    unit: str  # "ms" or "x"

    @classmethod
    def parse(cls, text: str, *, flag: str = "--budget") -> "Budget":
        match = _PATTERN.match(str(text))
        if not match or float(match.group(1)) <= 0:
            raise BudgetError(f"{flag} {text!r}: write a positive latency in milliseconds (5ms) or a share of the "
                              "baseline's latency (0.5x)")
        return cls(float(match.group(1)), match.group(2).lower())

    def resolve(self, baseline_ms: float) -> float:
        """The budget in milliseconds, given the baseline's latency on the same hardware model."""
        return self.value * baseline_ms if self.unit == "x" else self.value

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit}"
