"""Trials evaluated by a pool of Ray actors, on this machine or across a cluster.

Each actor is a stateless evaluator that declares its resources (CPUs per trial, and a GPU per
trial when the cluster has GPUs, in which case it fine-tunes on CUDA). The search problem (model,
data, analysis, hardware model) is put in the object store once and each actor deserializes it
once, when it starts, not once per trial.

When an actor's process dies mid-trial (killed, out of memory, or its node lost), Ray restarts it
(up to ``max_restarts`` times, wherever resources allow) and the driver gets ``WorkerLost``: the
trial is recorded as failed with the reason and queued again, so another worker retries it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from ...errors import AutocompressError
from .base import TrialJob, TrialResult, WorkerLost, evaluate_job

__all__ = ["RayExecutor"]

log = logging.getLogger(__name__)


class _TrialWorker:
    """One Ray actor: holds the search problem and fine-tunes the jobs it is given."""

    def __init__(self, problem, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))  # as many threads as CPUs declared: workers must not oversubscribe
        self.problem = problem.on_device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else problem

    def info(self) -> dict:
        import ray

        return {"host": socket.gethostname(), "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "device": str(self.problem.device)}

    def evaluate(self, job: TrialJob) -> TrialResult:
        return evaluate_job(self.problem, job, worker=self.info())


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail with one line when nothing listens at ``address`` (HOST:PORT or ray://HOST:PORT).

    ``ray.init`` retries a dead address for a minute or more before it gives up, and its error is
    many lines; a plain TCP connect answers in milliseconds. ``auto`` is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise AutocompressError(f"address {address!r} is not HOST:PORT (the head's GCS address, "
                                "port 6379 by default) or auto", parameters=("address",))
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise AutocompressError(f"address {address!r}: nothing answers there ({exc.strerror or exc}); "
                                "start a cluster with `ray start --head` or pass auto on a cluster node",
                                parameters=("address",)) from exc


_NOTHING = object()  # map_jobs was given no shared object (None may be one)


def _run_job(fn, job, threads: int, shared=_NOTHING):
    """One job of ``RayExecutor.map_jobs`` in a Ray task, with as many threads as CPUs it declared."""
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(job) if shared is _NOTHING else fn(shared, job)


class RayExecutor:
    """Connects to (or starts) Ray; ``map_jobs`` runs one-off jobs as tasks (the blockwise
    distillation of cells, one cell per task: each is small and independent, so tasks spread them
    with no data-parallel gradient traffic); the actors that fine-tune trials start with ``problem``,
    here or later through ``attach``."""

    def __init__(self, problem=None, *, workers: int | None = None, address: str | None = None,
                 cpus_per_trial: int = 1, gpus_per_trial: float | None = None, max_restarts: int = 3) -> None:
        import ray

        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # Workers must import what the driver imports (a ``package.module:factory`` model, say): on
            # this machine they get the driver's import path; other nodes need the same packages.
            runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}}
            if address:
                try:
                    ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    raise AutocompressError(f"address {address!r}: no Ray cluster answers there "
                                            f"({str(exc).splitlines()[0]}); start one with `ray start --head` "
                                            "or pass auto on a cluster node", parameters=("address",)) from exc
            else:
                ray.init(num_cpus=(workers or os.cpu_count() or 1) * cpus_per_trial, include_dashboard=False,
                         logging_level=logging.WARNING, runtime_env=runtime_env)
        resources = ray.cluster_resources()
        self.gpus_per_trial = gpus_per_trial if gpus_per_trial is not None else (1 if resources.get("GPU") else 0)
        self.cpus_per_trial, self._max_restarts = cpus_per_trial, max_restarts
        self._count = workers or max(1, int(resources.get("CPU", 1) // cpus_per_trial))
        self.actors, self.slots = [], 0
        if problem is not None:
            self.attach(problem)

    def map_jobs(self, fn, jobs, *, shared=_NOTHING):
        """``fn(job)`` for each job (``fn(shared, job)`` when ``shared`` is given), run as Ray tasks
        across the cluster, yielded as they finish. ``shared`` (a model, say) goes into the object
        store once, not once per task."""
        ray = self._ray
        task = ray.remote(num_cpus=self.cpus_per_trial)(_run_job)
        extra = () if shared is _NOTHING else (ray.put(shared),)
        pending = [task.remote(fn, job, self.cpus_per_trial, *extra) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def attach(self, problem) -> "RayExecutor":
        """Start the actors that fine-tune trials of ``problem``."""
        ray, count, cpus_per_trial = self._ray, self._count, self.cpus_per_trial
        max_restarts = self._max_restarts
        payload = ray.put(problem)  # once into the object store; each actor reads it once
        options = {"num_cpus": cpus_per_trial, "num_gpus": self.gpus_per_trial, "max_restarts": max_restarts,
                   "max_task_retries": 0}
        actor_class = ray.remote(_TrialWorker).options(**options)
        self._spawn = lambda: actor_class.remote(payload, cpus_per_trial)
        self.actors = [self._spawn() for _ in range(count)]
        self.info = dict(zip(self.actors, ray.get([a.info.remote() for a in self.actors]), strict=True))
        self.slots = count
        self._idle = list(self.actors)
        self._busy: dict = {}  # object ref -> actor
        return self

    def submit(self, job: TrialJob):
        actor = self._idle.pop(0)
        ref = actor.evaluate.remote(job)
        self._busy[ref] = actor
        return ref

    def worker_of(self, handle) -> dict | None:
        return self.info.get(self._busy.get(handle))

    def wait(self, handles: list) -> list[tuple[object, TrialResult | Exception]]:
        ray = self._ray
        ray.wait(handles, num_returns=1)
        ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return [(ref, self._collect(ref)) for ref in ready]

    def _collect(self, ref) -> TrialResult | Exception:
        ray = self._ray
        actor = self._busy.pop(ref)
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the fine-tune itself raised: not the worker's fault
            outcome = exc.cause if isinstance(exc.cause, Exception) else RuntimeError(str(exc).splitlines()[0])
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as exc:
            lost = self.info.get(actor, {})
            outcome = WorkerLost(f"{type(exc).__name__} on {lost.get('host')} (pid {lost.get('pid')}, node "
                                 f"{str(lost.get('node_id'))[:8]})")
            actor = self._revive(actor)
        if actor is not None:
            self._idle.append(actor)
        return outcome

    def _revive(self, actor):
        """The restarted actor (Ray restarts it, possibly on another node), or a fresh one."""
        ray = self._ray
        try:
            self.info[actor] = ray.get(actor.info.remote(), timeout=120)
            return actor
        except Exception:  # restarts exhausted, or no node can host it any more
            ray.kill(actor, no_restart=True)
            self.info.pop(actor, None)
            self.actors = [a for a in self.actors if a is not actor]
        fresh = self._spawn()
        try:
            self.info[fresh] = ray.get(fresh.info.remote(), timeout=120)
        except Exception:
            ray.kill(fresh, no_restart=True)
            self.slots -= 1  # the cluster shrank: carry on with fewer workers
            if self.slots < 1:
                raise WorkerLost("no Ray worker is left: the cluster lost every node that could host one") from None
            return None
        self.actors.append(fresh)
        return fresh

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)
        if self._owns_ray:
            self._ray.shutdown()
