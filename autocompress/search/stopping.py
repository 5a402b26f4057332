"""Our own early stopping of fine-tunes (Optuna cannot prune multi-objective trials).

A fine-tune is hopeless when, at a checkpoint, even the largest recovery any finished fine-tune
made from its checkpoint to its end would leave it dominated: a finished trial at most as slow and
at most as large is more accurate than that. Until a few fine-tunes have finished, the recovery
assumed is generous, so early trials are never stopped on a guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["HopelessRule"]


@dataclass
class HopelessRule:
    default_recovery: float = 0.3  # assumed until ``min_observations`` recoveries were seen
    min_observations: int = 5
    slack: float = 0.05  # added to the largest recovery seen
    finished: list[tuple[float, float, int]] = field(default_factory=list)  # (accuracy, latency ms, bytes)
    recoveries: list[float] = field(default_factory=list)

    def record(self, accuracy: float, latency_ms: float, size_bytes: int,
               checkpoint_accuracy: float | None = None) -> None:
        """Remember a finished fine-tune (and how much it gained after its checkpoint)."""
        self.finished.append((accuracy, latency_ms, size_bytes))
        if checkpoint_accuracy is not None:
            self.recoveries.append(accuracy - checkpoint_accuracy)

    @property
    def recovery(self) -> float:
        if len(self.recoveries) < self.min_observations:
            return self.default_recovery
        return max(self.recoveries) + self.slack

    def for_candidate(self, latency_ms: float, size_bytes: int) -> Callable[[int, float], bool]:
        """The ``should_stop(step, accuracy)`` callback for a candidate of this latency and size."""
        bar = max((acc for acc, ms, size in self.finished if ms <= latency_ms and size <= size_bytes), default=None)

        def should_stop(step: int, accuracy: float) -> bool:
            return bar is not None and accuracy + self.recovery < bar

        return should_stop
