"""The search driver: one Optuna multi-objective study, asked and told one trial at a time.

Objectives: accuracy (max), predicted latency (min), size in bytes (min); the latency budget is
a constraint (``Trial.set_constraint``), so NSGA-II and TPE prefer feasible trials. A trial:

1. the sampler proposes a Candidate; the hardware model predicts its latency, the accounting its size;
2. over budget: told at once with accuracy 0 (milliseconds, no fine-tune), and a repaired copy
   that fits (see ``boundary``) is queued as the next trial;
3. otherwise a short distillation fine-tune (stopped early when hopeless, see ``stopping``) gives
   the held-out accuracy.

The study (SQLite in the output folder, or any Optuna storage URL) is the one source of truth:
running the same command again reopens it, keeps every finished trial, and fails and retries the
trials a killed process left running.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .boundary import repair_to_budget
from .budget import Budget
from .errors import AutocompressError
from .finetune import DistillationConfig
from .pareto import TrialRecord, best_under, pareto_front, records_from_study, write_results
from .problem import ProblemSpec, SearchProblem, build_problem
from .space import Candidate, Space
from .stopping import HopelessRule

__all__ = ["SAMPLERS", "STUDY_NAME", "SearchOutcome", "SearchSettings", "default_storage", "open_study", "run_search"]

log = logging.getLogger(__name__)

SAMPLERS = ("nsga2", "tpe", "random")
STUDY_NAME = "autocompress"
MAX_RETRIES = 2  # a candidate whose trial died this many times is not queued again
WARM_START_RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75)


@dataclass(frozen=True)
class SearchSettings:
    problem: ProblemSpec
    budget: str
    out: Path
    trials: int = 100
    timeout_s: float | None = None
    sampler: str = "nsga2"
    seed: int = 0
    storage: str | None = None  # default: SQLite in ``out``
    finetune: DistillationConfig = field(default_factory=DistillationConfig)
    warm_start: bool = True
    repair: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise AutocompressError(f"--sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.trials < 1:
            raise AutocompressError(f"--trials {self.trials}: give at least 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise AutocompressError(f"--timeout {self.timeout_s}: give a positive number of seconds")
        Budget.parse(self.budget)

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage(self.out)

    def identity(self) -> dict:
        """What must match for a run to resume a study (trials, timeout and storage may change)."""
        return {"problem": self.problem.to_dict(), "budget": self.budget, "finetune": asdict(self.finetune)}


@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    front: list[TrialRecord]
    budget_ms: float
    baseline: dict
    files: dict[str, Path]
    interrupted: bool = False

    @property
    def best(self) -> TrialRecord | None:
        return best_under(self.front, self.budget_ms)


def run_search(settings: SearchSettings, *, progress: bool = True, problem: SearchProblem | None = None
               ) -> SearchOutcome:
    """Run (or resume) the search described by ``settings``; write its results into ``settings.out``."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out / "search.json", settings)
    budget = Budget.parse(settings.budget)
    problem = problem or build_problem(settings.problem, cache_dir=out)
    budget_ms = budget.resolve(problem.baseline_ms)
    _write_search_json(out / "search.json", settings, problem, budget_ms)
    study = open_study(settings, existing_trials_seed=True)
    _fail_stale_trials(study)
    if settings.warm_start and not study.user_attrs.get("warm_started"):
        for name, params in warm_start_policies(problem.space).items():
            study.enqueue_trial(params, user_attrs={"origin": f"warm_start:{name}"})
        for params in sparse_random_starts(problem.space, population_size(settings.trials), settings.seed):
            study.enqueue_trial(params, user_attrs={"origin": "sparse_start"})
        study.set_user_attr("warm_started", True)
    driver = _TrialDriver(settings, problem, study, budget_ms)
    interrupted = False
    try:
        driver.run(progress=progress)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: the trial in flight is marked failed and will be retried on resume")
    records = records_from_study(study)
    files = write_results(out, records, budget_ms=budget_ms, baseline=problem.baseline_summary())
    return SearchOutcome(records, pareto_front(records), budget_ms, problem.baseline_summary(), files, interrupted)


def default_storage(out: Path) -> str:
    """Where a search keeps its study unless ``--storage`` says otherwise: SQLite in its folder."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def open_study(settings: SearchSettings, *, existing_trials_seed: bool = False) -> optuna.Study:
    """Create or reopen the study; the sampler's seed moves on with the trials already there, so a
    resumed run does not propose the first run's points again."""
    storage = settings.storage_url
    try:
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                    directions=["maximize", "minimize", "minimize"])
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as exc:
        raise AutocompressError(f"--storage {storage!r} cannot be opened ({exc}); give an Optuna storage URL such as "
                                "sqlite:///study.db or postgresql://user@host/db") from exc
    offset = len(study.get_trials(deepcopy=False)) if existing_trials_seed else 0
    study.sampler = make_sampler(settings.sampler, settings.seed + offset, settings.trials)
    return study


def population_size(trials: int) -> int:
    """NSGA-II's generation size: several generations even in a 100-trial search (Optuna's 50 would
    leave two)."""
    return max(8, min(50, trials // 4))


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size(trials), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=min(10, max(2, trials // 5)))
    return optuna.samplers.RandomSampler(seed=seed)


def warm_start_policies(space: Space) -> dict[str, dict]:
    """The simple hand policies, as trial parameters: every layer int8, and uniform pruning + int8.

    Uniform pruning in float is there too: on ORT's CPU kernels int8 is not always the faster
    precision (MobileNet-V2's small depthwise convs at 32x32 run slower in int8)."""
    neutral = {v.name: Space._neutral(v) for v in space.variables}
    int8 = {v.name: 8 for v in space.variables if v.kind == "bits" and 8 in v.choices}
    policies = {"int8": neutral | int8}
    prune_vars = [v for v in space.variables if v.kind == "prune"]
    for ratio in WARM_START_RATIOS:
        if prune_vars and all(ratio in v.choices for v in prune_vars):
            policies[f"uniform-{ratio:g}-int8"] = neutral | int8 | {v.name: ratio for v in prune_vars}
    for ratio in WARM_START_RATIOS:
        if prune_vars and all(ratio in v.choices for v in prune_vars):
            policies[f"uniform-{ratio:g}-fp32"] = neutral | {v.name: ratio for v in prune_vars}
    return policies


def sparse_random_starts(space: Space, count: int, seed: int) -> list[dict]:
    """Random candidates that change only some decisions (density 0.15 to 0.6), as trial parameters.

    A sampler's first generation draws every variable uniformly, so a typical first candidate
    factorizes three layers in four and puts a quarter of them at int4: far from anything good.
    Starting the population from sparse draws puts it where useful models are.
    """
    rng = random.Random(f"sparse-starts-{seed}")
    return [candidate_params(space, space.sample(rng, density=rng.uniform(0.15, 0.6))) for _ in range(count)]


class _TrialDriver:
    """The ask-evaluate-tell loop of one process."""

    def __init__(self, settings: SearchSettings, problem: SearchProblem, study: optuna.Study, budget_ms: float):
        self.settings, self.problem, self.study, self.budget_ms = settings, problem, study, budget_ms
        self.rule = HopelessRule()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("status") == "evaluated":
                self.rule.record(*t.values, t.user_attrs.get("checkpoint_accuracy"))

    def completed(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def run(self, *, progress: bool) -> None:
        from tqdm.auto import tqdm

        deadline = time.monotonic() + self.settings.timeout_s if self.settings.timeout_s else float("inf")
        done = self.completed()
        bar = tqdm(total=self.settings.trials, initial=min(done, self.settings.trials), unit="trial",
                   desc="search", disable=not progress, dynamic_ncols=True)
        failures_in_a_row = 0
        try:
            while done < self.settings.trials and time.monotonic() < deadline:
                trial = self.study.ask()
                try:
                    self.run_trial(trial)
                    failures_in_a_row = 0
                except KeyboardInterrupt:
                    self._fail(trial, "interrupted by the user", retry=True)
                    raise
                except Exception as exc:  # noqa: BLE001 - a broken candidate must not end the study
                    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                    log.warning("trial %d failed: %s", trial.number, reason)
                    self._fail(trial, reason, retry=False)
                    failures_in_a_row += 1
                    if failures_in_a_row >= 10:
                        raise AutocompressError(f"10 trials in a row failed; the last one: {reason}") from exc
                done = self.completed()
                bar.n = min(done, self.settings.trials)
                bar.set_postfix_str(self._postfix(), refresh=True)
        finally:
            bar.close()

    def run_trial(self, trial: optuna.Trial) -> None:
        started = time.perf_counter()
        space, problem = self.problem.space, self.problem
        candidate = space.suggest(trial)
        prediction = problem.predict(candidate)
        size = problem.size_bytes(candidate)
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("origin", trial.user_attrs.get("origin", "sampler"))
        trial.set_user_attr("predicted_ms", prediction.ms)
        trial.set_user_attr("predicted_std_ms", prediction.std_ms)
        trial.set_user_attr("size_bytes", size)
        trial.set_user_attr("driver", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_constraint("latency_over_budget_ms", prediction.ms - self.budget_ms)
        if prediction.ms > self.budget_ms:
            trial.set_user_attr("status", "over_budget")
            trial.set_user_attr("finetune_steps", 0)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            self.study.tell(trial, [0.0, prediction.ms, size])
            if self.settings.repair:
                self._queue_repair(trial.number, candidate)
            return
        _, result = problem.finetune(candidate, self.settings.finetune,
                                     should_stop=self.rule.for_candidate(prediction.ms, size))
        checkpoint = result.checkpoint_accuracies[0][1] if result.checkpoint_accuracies else None
        trial.set_user_attr("status", "stopped_early" if result.stopped_early else "evaluated")
        trial.set_user_attr("accuracy", result.accuracy)
        trial.set_user_attr("checkpoint_accuracy", checkpoint)
        trial.set_user_attr("finetune_steps", result.steps)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        self.study.tell(trial, [result.accuracy, prediction.ms, size])
        if not result.stopped_early:
            self.rule.record(result.accuracy, prediction.ms, size, checkpoint)

    def _queue_repair(self, number: int, candidate: Candidate) -> None:
        repaired = repair_to_budget(self.problem.space, self.problem.hardware, candidate, self.budget_ms)
        if repaired is None:
            return
        fixed, _ = repaired
        self.study.enqueue_trial(candidate_params(self.problem.space, fixed),
                                 user_attrs={"origin": "boundary_repair", "repair_of": number})

    def _fail(self, trial: optuna.Trial, reason: str, *, retry: bool) -> None:
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("status", "failed")
        self.study.tell(trial, state=TrialState.FAIL)
        if retry:
            _queue_retry(self.study, self.study.get_trials(deepcopy=False)[trial.number])

    def _postfix(self) -> str:
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
        evaluated = [t.values[0] for t in feasible if t.user_attrs.get("status") == "evaluated"]
        best = f"{max(evaluated):.2%}" if evaluated else "-"
        share = len(feasible) / len(complete) if complete else 0.0
        return f"feasible {share:.0%}, best under {self.budget_ms:.3f} ms: {best}"


def candidate_params(space: Space, candidate: Candidate) -> dict:
    """A Candidate as the trial parameters that make ``space.suggest`` return it."""
    params = {}
    for var in space.variables:
        value = getattr(candidate, var.kind).get(var.unit, Space._neutral(var))
        params[var.name] = value
    return params


def _fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a process that no longer exists: failed, with a reason, and retried."""
    host = socket.gethostname()
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = frozen.user_attrs.get("driver") or {}
        if driver.get("host") not in (None, host) or _alive(driver.get("pid")):
            continue  # another machine's or a live process's trial: not ours to judge
        trial = optuna.trial.Trial(study, frozen._trial_id)
        trial.set_user_attr("fail_reason", "left running by a process that stopped (killed?); retried")
        trial.set_user_attr("status", "failed")
        study.tell(frozen.number, state=TrialState.FAIL)
        _queue_retry(study, frozen)


def _queue_retry(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
    retries = int(frozen.user_attrs.get("retries", 0))
    if retries >= MAX_RETRIES or not frozen.params:
        return
    origin = frozen.user_attrs.get("origin", "sampler")
    study.enqueue_trial(frozen.params, user_attrs={"origin": origin, "retries": retries + 1,
                                                   "retry_of": frozen.number})


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return False  # our own earlier incarnation in this process cannot be running a trial now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_resumable(path: Path, settings: SearchSettings) -> None:
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())["identity"]
    except (OSError, KeyError, json.JSONDecodeError):
        return  # written by an older version or damaged: the study itself is still the truth
    current = json.loads(json.dumps(settings.identity()))
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise AutocompressError(f"--out {settings.out} holds a search with different {', '.join(changed)}; rerun with "
                                "the same arguments to resume it, or pick another --out folder")


def _write_search_json(path: Path, settings: SearchSettings, problem: SearchProblem, budget_ms: float) -> None:
    path.write_text(json.dumps({
        "identity": settings.identity(),
        "problem": settings.problem.to_dict(),
        "budget": settings.budget,
        "budget_ms": budget_ms,
        "baseline": problem.baseline_summary(),
        "finetune": asdict(settings.finetune),
        "sampler": settings.sampler,
        "seed": settings.seed,
        "storage": settings.storage_url if settings.storage else None,
        "space_size": len(problem.space),
    }, indent=2, default=str) + "\n")
