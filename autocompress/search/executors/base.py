"""What crosses the border between the search driver and its workers, and how a worker scores a job."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from ...errors import WorkerLost
from ...train.finetune import DistillationConfig
from ...core.space import Candidate
from ..stopping import HopelessRule

__all__ = ["Executor", "TrialJob", "TrialResult", "WorkerLost", "evaluate_job"]


@dataclass(frozen=True)
class TrialJob:
    number: int
    candidate: dict
    config: DistillationConfig
    latency_ms: float
    size_bytes: int
    rule: HopelessRule = field(default_factory=HopelessRule)  # a snapshot of the driver's early-stopping state


@dataclass(frozen=True)
class TrialResult:
    accuracy: float
    steps: int
    stopped_early: bool
    checkpoint_accuracy: float | None
    seconds: float
    worker: dict  # host, pid, device and (on Ray) node id: where the fine-tune ran


class Executor(Protocol):
    slots: int  # how many trials may be in flight at once

    def submit(self, job: TrialJob) -> Hashable: ...

    def wait(self, handles: list) -> list[tuple[Hashable, TrialResult | Exception]]:
        """Block until at least one of ``handles`` finished; return every finished one with its outcome."""

    def worker_of(self, handle: Hashable) -> dict | None: ...

    def close(self) -> None: ...


def evaluate_job(problem, job: TrialJob, *, worker: dict | None = None) -> TrialResult:
    """Fine-tune the job's Candidate with distillation and score it on the held-out split."""
    started = time.perf_counter()
    should_stop = job.rule.for_candidate(job.latency_ms, job.size_bytes)
    _, result = problem.finetune(Candidate.from_dict(job.candidate), job.config, should_stop=should_stop)
    checkpoint = result.checkpoint_accuracies[0][1] if result.checkpoint_accuracies else None
    where = {"host": socket.gethostname(), "pid": os.getpid(), "device": str(problem.device)} | (worker or {})
    return TrialResult(result.accuracy, result.steps, result.stopped_early, checkpoint,
                       time.perf_counter() - started, where)
