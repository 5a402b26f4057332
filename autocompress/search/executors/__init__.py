"""Executors evaluate prepared trials: in this process (``LocalExecutor``) or on a Ray cluster (``RayExecutor``).

The search driver keeps the one Optuna study and asks, predicts and tells; an executor only maps
"fine-tune this Candidate and score it" over its workers. Workers are stateless evaluators: they
hold the search problem (baseline, data, analysis), receive a ``TrialJob`` and return a
``TrialResult``.
"""

from .base import Executor, TrialJob, TrialResult, WorkerLost, evaluate_job
from .local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "TrialJob", "TrialResult", "WorkerLost", "evaluate_job"]
