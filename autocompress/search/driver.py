"""The ask-evaluate-tell loop: one process keeps the study, an executor fine-tunes in parallel.

The driver does the cheap part of every trial itself (ask, predict latency, account size, tell
over-budget trials at once and queue their repairs) and hands only fine-tunes to the executor,
keeping up to ``executor.slots`` of them in flight. Samplers see in-flight trials as RUNNING
(TPE lies about them with ``constant_liar``; NSGA-II draws children independently), and a
candidate identical to one in flight is not fine-tuned twice.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import optuna
from optuna.trial import TrialState

from .boundary import repair_to_budget
from ..errors import AutocompressError
from ..files import is_disk_full
from .executors import Executor, TrialJob, TrialResult, WorkerLost
from .problem import SearchProblem
from .latency_pipeline import LatencyPipeline, search_latency_pipeline
from .guides import Guide
from .seeds import Seed
from ..core.space import Candidate
from .stopping import HopelessRule

__all__ = ["MAX_RETRIES", "TrialDriver", "queue_retry"]

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # times a trial is retried after its worker or its driver died
_FAILURES_IN_A_ROW = 10
_PROPOSALS_PER_TRIAL = 20  # proposals (most told over the budget at once) per trial asked for, at most


class TrialDriver:
    def __init__(self, settings, problem: SearchProblem, study: optuna.Study, budget_ms: float,
                 executor: Executor, *, guide: Guide | None = None, latency: LatencyPipeline | None = None) -> None:
        """``latency``: how the search judges latency (default: the pipeline ``latency_pipeline``
        makes of ``settings``, with the rows ``settings.out`` holds); ``guide``: the one the search
        started (default: the one ``settings`` names, started here)."""
        self.settings, self.problem, self.study, self.budget_ms = settings, problem, study, budget_ms
        self.executor = executor
        self.latency = latency if latency is not None else search_latency_pipeline(settings, problem, budget_ms)
        self.chance = self.latency.chance  # the repair reads the budget as the check does
        if guide is None:
            guide = settings.make_guide()
            guide.start(problem, study, budget_ms, self.chance, predictor=self.latency.predictor)
        self.guide = guide
        self.rule = HopelessRule()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("status") == "evaluated":
                self.rule.record(*t.values, t.user_attrs.get("checkpoint_accuracy"))
        self.in_flight: dict = {}  # executor handle -> (trial, job, candidate key)
        self.preparing: optuna.Trial | None = None  # asked, not yet told or submitted
        self.failures_in_a_row = 0
        self.out_of_proposals = False
        self._queue(guide.learn())  # a resumed search may have learnt enough to queue already

    def completed(self) -> int:
        """Trials fine-tuned so far: what ``trials`` counts. A proposal told over the budget costs
        milliseconds, so counting it would let a tight budget spend the search on proposals and
        leave a handful of fine-tunes."""
        return sum(t.user_attrs.get("status") != "over_budget"
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def proposals_left(self) -> bool:
        """False once so many proposals were made that the budget is all but out of the sampler's
        reach: the search ends with what fits rather than drawing forever."""
        asked = len(self.study.get_trials(deepcopy=False))
        if asked < _PROPOSALS_PER_TRIAL * self.settings.trials:
            return True
        if not self.out_of_proposals:
            self.out_of_proposals = True
            log.warning("%d proposals and only %d fine-tuned: few candidates the sampler draws fit %.3f ms; stopping "
                        "with what fits", asked, self.completed(), self.budget_ms)
        return False

    def run(self, *, progress: bool) -> None:
        from tqdm.auto import tqdm

        trials = self.settings.trials
        deadline = time.monotonic() + self.settings.timeout_s if self.settings.timeout_s else float("inf")
        bar = tqdm(total=trials, initial=min(self.completed(), trials), unit="trial", desc="search",
                   disable=not progress, dynamic_ncols=True)
        try:
            while True:
                while (len(self.in_flight) < self.executor.slots and time.monotonic() < deadline
                       and self.completed() + len(self.in_flight) < trials and self.proposals_left()):
                    self.preparing = self.study.ask()
                    self._start(self.preparing)
                    self.preparing = None
                if not self.in_flight:
                    break
                for handle, outcome in self.executor.wait(list(self.in_flight)):
                    trial, job, _ = self.in_flight.pop(handle)
                    self._finish(trial, job, outcome)
                bar.n = min(self.completed(), trials)
                bar.set_postfix_str(self._postfix(), refresh=True)
        except KeyboardInterrupt:
            interrupted = [trial for trial, _, _ in self.in_flight.values()]
            if self.preparing is not None:  # asked, and Ctrl-C came before it was told or submitted
                interrupted.append(self.preparing)
            for trial in interrupted:
                try:
                    self._fail(trial, "interrupted by the user", retry=True)
                except (RuntimeError, ValueError):  # it was told already (over budget, a twin)
                    pass
            self.in_flight.clear()
            raise
        finally:
            bar.close()

    def _start(self, trial: optuna.Trial) -> None:
        """Prepare ``trial``; tell it at once when no fine-tune is needed, else submit it."""
        try:
            job = self._prepare(trial)
        except Exception as exc:  # a candidate the model cannot take must not end the study
            self._failed(trial, exc)
            return
        if job is not None:
            self._submit(trial, job)

    def _submit(self, trial: optuna.Trial, job: TrialJob) -> None:
        handle = self.executor.submit(job)
        self.in_flight[handle] = (trial, job, _key(job.candidate))
        worker = self.executor.worker_of(handle)
        if worker:
            trial.set_user_attr("worker", worker)

    def _prepare(self, trial: optuna.Trial) -> TrialJob | None:
        started = time.perf_counter()
        # First, so that a resume never takes a trial this live process is still drawing for stale.
        trial.set_user_attr("driver", {"host": socket.gethostname(), "pid": os.getpid()})
        candidate = self.problem.space.suggest(trial)
        size = self.problem.size_bytes(candidate)
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("origin", trial.user_attrs.get("origin", "sampler"))
        verdict = self.latency.judge(trial.number, candidate)
        if verdict.corrected_ms != verdict.predicted_ms:
            trial.set_user_attr("uncorrected_ms", verdict.predicted_ms)
        trial.set_user_attr("predicted_ms", verdict.corrected_ms)
        trial.set_user_attr("predicted_std_ms", verdict.std_ms)
        trial.set_user_attr("size_bytes", size)
        if verdict.measured_ms is not None:
            trial.set_user_attr("measured_ms", verdict.measured_ms)
        latency = verdict.latency_ms
        trial.set_constraint("latency_over_budget_ms", verdict.over_budget_ms)
        if verdict.over_budget_ms > 0:
            trial.set_user_attr("status", "over_budget")
            trial.set_user_attr("finetune_steps", 0)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            self.study.tell(trial, [0.0, latency, size])
            if self.settings.repair:  # the repair reads it as the check just did: measured, or corrected
                self._queue_repair(trial.number, candidate, self.budget_ms)
            return None
        twin = next((t.number for t, _, key in self.in_flight.values() if key == _key(candidate.to_dict())), None)
        if twin is not None:
            self._fail(trial, f"the same candidate as trial {twin}, which is in flight", retry=False)
            return None
        screened = self.guide.screen(trial.user_attrs["origin"], candidate, latency, size)
        if screened:  # pruned, not complete: the sampler and the front ignore it, the trial count too
            trial.set_user_attr("status", "screened")
            trial.set_user_attr("fail_reason", screened)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            self.study.tell(trial, state=TrialState.PRUNED)
            return None
        return TrialJob(trial.number, candidate.to_dict(), self.settings.finetune, latency, size,
                        HopelessRule(finished=list(self.rule.finished), recoveries=list(self.rule.recoveries)))

    def _finish(self, trial: optuna.Trial, job: TrialJob, outcome: TrialResult | Exception) -> None:
        if isinstance(outcome, WorkerLost):
            # The worker died, not the candidate: the same trial goes to another worker at once,
            # a bounded number of times, and each loss is recorded on the trial.
            losses = [*trial.user_attrs.get("worker_failures", []), f"worker lost: {outcome}"]
            trial.set_user_attr("worker_failures", losses)
            if len(losses) > MAX_RETRIES or self.executor.slots < 1:
                self._fail(trial, losses[-1], retry=False)
            else:
                self._submit(trial, job)
            return
        if isinstance(outcome, Exception):
            self._failed(trial, outcome)
            return
        self.failures_in_a_row = 0
        trial.set_user_attr("status", "stopped_early" if outcome.stopped_early else "evaluated")
        trial.set_user_attr("accuracy", outcome.accuracy)
        trial.set_user_attr("checkpoint_accuracy", outcome.checkpoint_accuracy)
        trial.set_user_attr("finetune_steps", outcome.steps)
        trial.set_user_attr("seconds", outcome.seconds)
        trial.set_user_attr("worker", outcome.worker)
        self.study.tell(trial, [outcome.accuracy, job.latency_ms, job.size_bytes])
        if not outcome.stopped_early:
            self.rule.record(outcome.accuracy, job.latency_ms, job.size_bytes, outcome.checkpoint_accuracy)
            self._queue(self.guide.learn())

    def _failed(self, trial: optuna.Trial, exc: Exception) -> None:
        if is_disk_full(exc):  # not the candidate's fault: stop the search, which resumes once space is freed
            raise exc
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        log.warning("trial %d failed: %s", trial.number, reason)
        self._fail(trial, reason, retry=False)
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= _FAILURES_IN_A_ROW:
            raise AutocompressError(f"{_FAILURES_IN_A_ROW} trials in a row failed; the last one: {reason}") from exc

    def _queue(self, seeds: list[Seed]) -> None:
        """Queue what the guide asks for (a candidate already queued or tried is not queued again)."""
        for seed in seeds:
            self.study.enqueue_trial(seed.params, skip_if_exists=True, user_attrs={"origin": seed.origin})

    def _queue_repair(self, number: int, candidate: Candidate, target_ms: float) -> None:
        repaired = repair_to_budget(self.problem.space, self.latency.predictor, candidate, target_ms,
                                    damage=self.guide.damage(), chance=self.chance)
        if repaired is None:
            return
        fixed, _ = repaired
        self.study.enqueue_trial(self.problem.space.params_of(fixed),
                                 user_attrs={"origin": "boundary_repair", "repair_of": number})

    def _fail(self, trial: optuna.Trial, reason: str, *, retry: bool) -> None:
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("status", "failed")
        self.study.tell(trial, state=TrialState.FAIL)
        if retry:
            queue_retry(self.study, self.study.get_trials(deepcopy=False)[trial.number])

    def _postfix(self) -> str:
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
        evaluated = [t.values[0] for t in feasible if t.user_attrs.get("status") == "evaluated"]
        best = f"{max(evaluated):.2%}" if evaluated else "-"
        share = len(feasible) / len(complete) if complete else 0.0
        status = self.guide.status()
        screened = f", {status}" if status else ""
        sure = "" if self.chance.confidence == 0.5 else f" ({self.chance.confidence:.0%} sure)"
        return f"under budget{sure} {share:.0%}, best under {self.budget_ms:.3f} ms: {best}{screened}"


def retry_decision(frozen: optuna.trial.FrozenTrial) -> tuple[dict | None, str]:
    """The parameters to queue a failed trial again with (None when it must not be retried), and
    the outcome in words, for its fail reason.

    They are the parameters a queued trial (warm start, repair, retry) was queued with, which
    must not be lost even when its process died before drawing them, or else the candidate a
    sampler trial drew. None after ``MAX_RETRIES`` retries, and for a sampler trial killed before
    its candidate was whole: it holds part of one at most, and the sampler draws afresh.
    """
    if int(frozen.user_attrs.get("retries", 0)) >= MAX_RETRIES:
        return None, f"not retried: retried {MAX_RETRIES} times already"
    if "fixed_params" in frozen.system_attrs:
        return frozen.system_attrs["fixed_params"], "retried"
    if "candidate" in frozen.user_attrs:
        return frozen.params, "retried"
    return None, "not retried: it had drawn no candidate yet"


def queue_retry(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial's candidate again (see ``retry_decision``)."""
    params, _ = retry_decision(frozen)
    if params is None:
        return
    study.enqueue_trial(params, user_attrs={"origin": frozen.user_attrs.get("origin", "sampler"),
                                            "retries": int(frozen.user_attrs.get("retries", 0)) + 1,
                                            "retry_of": frozen.number})


def _key(candidate: dict) -> str:
    return Candidate.from_dict(candidate).to_json()
