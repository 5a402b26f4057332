"""The search: one Optuna multi-objective study per output folder, its warm start and its resumption.

Objectives: accuracy (max), predicted latency (min), size in bytes (min); the latency budget is
a constraint (``Trial.set_constraint``), so NSGA-II and TPE prefer feasible trials. A trial:

1. the sampler proposes a Candidate; the hardware model predicts its latency, the accounting its size;
2. over budget: told at once with accuracy 0 (milliseconds, no fine-tune), and a repaired copy
   that fits (see ``boundary``) is queued as the next trial;
3. otherwise a short distillation fine-tune (stopped early when hopeless, see ``stopping``) gives
   the held-out accuracy.

The ask-evaluate-tell loop lives in ``driver``; fine-tunes run on an executor (in this process, or
on a Ray cluster). The study (a journal file in the output folder, or any Optuna storage) is the
one source of truth:
running the same command again reopens it, keeps every finished trial, and fails and retries the
trials a killed process left running.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from .budget import Budget, ChanceConstraint
from .local_correction import LocalCorrection
from .latency_pipeline import search_latency_pipeline
from .near_budget import times_every_candidate
from .search_record import record_in_search_json, write_search_json
from .driver import TrialDriver
from ..errors import AutocompressError
from .executors import Executor, LocalExecutor, WorkerLost
from .folder import STUDY_NAME, SearchFolder
from .pareto import TrialRecord, best_under, pareto_front, records_from_study
from ..hardware import load_hardware_model
from ..hardware.candidates import ModelUnderTest
from ..hardware.host_level import REFERENCES, HostLevel, measure_host_level
from ..hardware.model_level import OWN_CANDIDATES, measure_model_level, profiled_on
from .preflight import check_reachable, preflight
from .problem import SearchProblem, build_problem, hardware_folder
from .storage import check_storage, search_fix
from .settings import GUIDES, ExecutionSettings, LatencySettings, SearchSettings
from .study import SAMPLERS, fail_stale_trials, open_study, population_size, warm_start_is_ours
from ..core.space import Space

__all__ = ["GUIDES", "SAMPLERS", "STUDY_NAME", "ExecutionSettings", "LatencySettings", "SearchOutcome",
           "SearchSettings", "open_study", "run_search"]

log = logging.getLogger(__name__)

@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    front: list[TrialRecord]
    budget_ms: float
    baseline: dict
    files: dict[str, Path]
    interrupted: bool = False
    near_budget: dict | None = None  # ``LocalCorrection.summary``: the candidates timed near the budget

    @property
    def best(self) -> TrialRecord | None:
        return best_under(self.front, self.budget_ms)


def run_search(settings: SearchSettings, *, progress: bool = True, problem: SearchProblem | None = None,
               executor: Executor | None = None) -> SearchOutcome:
    """Run (or resume) the search described by ``settings``; write its results into ``settings.out``.

    The steps, in order: check every input (nothing is written before) -> build the problem
    (baseline, cells) and calibrate its latency level -> the guide's measurements -> seed the study
    -> drive the trials -> write the results. ``problem``: one already built (tests, benchmarks);
    ``executor`` evaluates the fine-tunes (default: one at a time in this process; see
    ``search.executors.ray_pool.RayExecutor`` for a cluster)."""
    settings = settings.with_hardware_pinned()
    out = settings.out
    search_json = SearchFolder(out).search_json
    fresh = not search_json.is_file()
    budget = Budget.parse(settings.budget)
    chance = ChanceConstraint(settings.latency.budget_confidence)
    # A budget in ms is checked at the host's level, once it is known (``_calibrated_problem``).
    at_profile_level = _at_profile_level(settings, budget)
    checked = _check_inputs(settings, budget, chance, problem, executor, check_budget=at_profile_level)
    guide = settings.make_guide()
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(settings, score=(problem.score if problem is not None else checked.task.score).name)
    own_executor = executor is None
    if own_executor and settings.execution.executor == "ray":
        executor = _ray_executor(settings)  # its workers distill the cells before they fine-tune
    host_level, timed_own = None, False
    try:
        if problem is None:
            problem, host_level, timed_own = _calibrated_problem(settings, checked, fresh, executor, progress)
        problem.learn_kernels()
        if checked is None or not at_profile_level or host_level is not None:
            check_reachable(problem.space, problem.hardware, budget, problem.baseline_ms, chance=chance)  # no trial yet
        if guide.needs_sensitivities and problem.sensitivities is None:
            problem = problem.with_sensitivities(out, map_jobs=getattr(executor, "map_jobs", None), progress=progress)
        if own_executor:
            executor = executor.attach(problem) if executor is not None else make_executor(settings, problem)
    except BaseException:
        if own_executor and executor is not None:
            executor.close()
        raise
    # the misses measured so far (a resumed search's rows), loaded once; the model's own candidates
    # just timed are measured points too: the search reads them, and their neighbours, so
    correction = LocalCorrection.load(problem.space, out)
    if timed_own:
        correction.seed_with_own_candidates(out, host_level.ratio)
    budget_ms = budget.resolve(problem.baseline_ms)
    write_search_json(search_json, settings, problem, budget_ms, host_level)
    fail_stale_trials(study)
    time_everything = times_every_candidate(host_level)
    if time_everything and settings.latency.measure_near_budget > 0:
        log.warning("this model's own candidates are read %.0f%% off even at their level: every candidate is timed "
                    "before its fine-tune, not only those near the budget", 100 * host_level.residual_error)
    latency = search_latency_pipeline(settings, problem, budget_ms, correction=correction,
                                      time_everything=time_everything)
    guide.start(problem, study, budget_ms, chance, predictor=latency.predictor)
    _seed_study(settings, study, guide, problem.space)
    interrupted, cluster_lost = False, None
    try:
        TrialDriver(settings, problem, study, budget_ms, executor, guide=guide, latency=latency).run(progress=progress)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: the trials in flight are marked failed and will be retried on resume")
    except WorkerLost as exc:  # the executor has no worker left at all
        cluster_lost = exc
    finally:
        if own_executor:
            executor.close()
    near_budget = latency.correction.summary() | {"every_candidate": time_everything}
    return _write_outcome(settings, study, problem, budget_ms, near_budget, interrupted, cluster_lost)


def _check_inputs(settings: SearchSettings, budget: Budget, chance: ChanceConstraint, problem: SearchProblem | None,
                  executor: Executor | None, *, check_budget: bool):
    """Every input checked before anything is created in ``out`` or trained; the model, data and
    hardware model loaded on the way (``preflight``), None when a problem is given ready-made."""
    _check_resumable(SearchFolder(settings.out), settings)
    check_storage(settings.storage_url, **search_fix(settings.out, settings.execution.storage))
    if executor is None and settings.execution.ray_address:
        from .executors.ray_pool import check_ray_address

        check_ray_address(settings.execution.ray_address)
    if problem is not None:
        return None
    return preflight(settings.problem, budget, check_budget=check_budget, chance=chance,
                     task=settings.task)


def _at_profile_level(settings: SearchSettings, budget: Budget) -> bool:
    """Whether the search predicts at the hardware model's own level (nothing timed here first)."""
    latency = settings.latency
    return budget.unit == "x" or (not latency.calibrate_host and latency.calibrate_model == "off"
                                  and SearchFolder(settings.out).host_level() is None)


def _calibrated_problem(settings: SearchSettings, checked, fresh: bool, executor: Executor | None,
                        progress: bool) -> tuple[SearchProblem, HostLevel | None, bool]:
    """The problem built (baseline trained or read, cells distilled) and predicting at the level
    this search judges latency at: its own candidates', the host's, or the hardware model's; the
    level; whether the own candidates were timed just now."""
    own_level = fresh and _wants_model_level(settings, checked.hardware)
    host_level = None if own_level else _host_level(SearchFolder(settings.out), settings)
    problem = build_problem(settings.problem, cache_dir=settings.out, host_level=host_level, progress=progress,
                            map_jobs=getattr(executor, "map_jobs", None), task=checked.task, hardware=checked.hardware,
                            analysis=checked.analysis)
    if own_level:
        host_level = _model_level(settings, problem, progress)
        problem = problem.at_level(host_level.ratio, host_level.baseline_ms)
    return problem, host_level, own_level


def _seed_study(settings: SearchSettings, study, guide, space: Space) -> None:
    """A fresh study starts from the guide's seeds, in its order, then sparse random candidates."""
    if not (settings.warm_start and warm_start_is_ours(study)):
        return
    for seed in guide.seeds():
        study.enqueue_trial(seed.params, user_attrs={"origin": seed.origin})
    for params in sparse_random_starts(space, population_size(settings.trials), settings.seed):
        study.enqueue_trial(params, user_attrs={"origin": "sparse_start"})
    study.set_user_attr("warm_started", True)


def _write_outcome(settings: SearchSettings, study, problem: SearchProblem, budget_ms: float, near_budget: dict,
                   interrupted: bool, cluster_lost: WorkerLost | None) -> SearchOutcome:
    """pareto.csv/json, trials.csv and the plots, what was timed near the budget into search.json;
    the outcome (a lost cluster: one line saying where the results so far are)."""
    out = settings.out
    records = records_from_study(study)
    files = SearchFolder(out).write_results(records, budget_ms=budget_ms, baseline=problem.baseline_summary())
    record_in_search_json(SearchFolder(out).search_json, near_budget=near_budget)
    if cluster_lost is not None:
        raise AutocompressError(f"{cluster_lost}; the results so far are in {out}: add workers or nodes and rerun "
                                "the same command to resume")
    return SearchOutcome(records, pareto_front(records), budget_ms, problem.baseline_summary(), files, interrupted,
                         near_budget)


def make_executor(settings: SearchSettings, problem: SearchProblem) -> Executor:
    if settings.execution.executor == "local":
        return LocalExecutor(problem)
    return _ray_executor(settings).attach(problem)


def _ray_executor(settings: SearchSettings):
    from .executors.ray_pool import RayExecutor

    execution = settings.execution
    return RayExecutor(workers=execution.workers, address=execution.ray_address,
                       cpus_per_trial=execution.cpus_per_trial, gpus_per_trial=execution.gpus_per_trial)


def sparse_random_starts(space: Space, count: int, seed: int) -> list[dict]:
    """Random candidates that change only some decisions (density 0.15 to 0.6), as trial parameters.

    A sampler's first generation draws every variable uniformly, so a typical first candidate
    factorizes three layers in four and puts a quarter of them at int4: far from anything good.
    Starting the population from sparse draws puts it where useful models are.
    """
    rng = random.Random(f"sparse-starts-{seed}")
    return [space.params_of(space.sample(rng, density=rng.uniform(0.15, 0.6))) for _ in range(count)]


def _check_resumable(folder: SearchFolder, settings: SearchSettings) -> None:
    previous = folder.identity()
    if previous is None:
        return  # a new search, or one written by an older version or damaged: the study itself is the truth
    current = json.loads(json.dumps(settings.identity()))
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise AutocompressError(f"out {settings.out} holds a search with different {', '.join(changed)}; rerun with "
                                "the same arguments to resume it, or pick another folder", parameters=("out",))


def _wants_model_level(settings: SearchSettings, hardware) -> bool:
    """Whether to time the model's own candidates first. "auto": on a model the hardware model was
    not profiled on (its level can be tens of percent off), and under a relative budget, which is a
    share of the original as measured here, not of its prediction: the host's speed drifts, and a
    budget read off a prediction at another level is not the one the user asked for."""
    if settings.latency.calibrate_model == "auto":
        return Budget.parse(settings.budget).unit == "x" or not profiled_on(hardware, settings.problem.model)
    return settings.latency.calibrate_model == "on"


def _model_level(settings: SearchSettings, problem: SearchProblem, progress: bool) -> HostLevel:
    """Time the model's own candidates (``hardware.model_level``), into ``latency/`` of the search
    folder; their level, which the search predicts at from now on."""
    spec = settings.problem
    target = ModelUnderTest(spec.model, spec.input_size, problem.baseline, problem.analysis, problem.example)
    log.info("timing %d of this model's own candidates to correct the hardware model for it", OWN_CANDIDATES)
    level = measure_model_level(problem.hardware, target, problem.space, Path(settings.out) / "latency",
                                desc="timing own candidates" if progress else None)
    errors = level.to_dict()
    log.info("own candidates measured %.3fx the predictions; RMS error %.1f%% before, %.1f%% after", level.ratio,
             100 * errors.get("rms_error_before", 0.0), 100 * errors.get("rms_error_after", 0.0))
    return level


def _host_level(folder: SearchFolder, settings: SearchSettings) -> HostLevel | None:
    """The host level to predict at: the one this search recorded when it started (a resumed
    search reads all its trials alike), else, with ``calibrate_host``, one measured now."""
    if folder.search_json.is_file():
        recorded = folder.host_level()
        if recorded is not None or not settings.latency.calibrate_host:
            return recorded
        log.warning("this search started without --calibrate-host: its trials were predicted at the hardware "
                    "model's level, and it resumes at that level")
        return None
    if not settings.latency.calibrate_host:
        return None
    folder = hardware_folder(settings.problem.hardware)
    hardware = load_hardware_model(folder)
    log.info("timing %d candidates measured in %s to set this host's level", REFERENCES, folder)
    level = measure_host_level(hardware.predictor, folder, threads=hardware.metadata.get("threads", 1))
    log.info("host level: the references measured %.3fx the predictor's reading of them; predictions are scaled "
             "by that", level.ratio)
    return level
