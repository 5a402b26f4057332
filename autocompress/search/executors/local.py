"""Trials evaluated one at a time in the driver's own process (the default executor)."""

from __future__ import annotations

import itertools

from .base import TrialJob, TrialResult, evaluate_job

__all__ = ["LocalExecutor"]


class LocalExecutor:
    slots = 1

    def __init__(self, problem) -> None:
        self.problem = problem
        self._pending: dict[int, TrialJob] = {}
        self._ids = itertools.count()

    def submit(self, job: TrialJob) -> int:
        handle = next(self._ids)
        self._pending[handle] = job
        return handle

    def wait(self, handles: list) -> list[tuple[int, TrialResult | Exception]]:
        handle = handles[0]
        job = self._pending.pop(handle)
        try:
            return [(handle, evaluate_job(self.problem, job))]
        except Exception as exc:  # the driver records it; Ctrl-C (KeyboardInterrupt) still propagates
            return [(handle, exc)]

    def worker_of(self, handle: int) -> dict | None:
        return None

    def close(self) -> None:
        self._pending.clear()
