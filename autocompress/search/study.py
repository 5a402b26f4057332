"""The study of a search: opened or created (once, whichever driver comes first), its sampler,
who queues its warm start, and the trials a killed process left running."""

from __future__ import annotations

import os
import socket
import warnings

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from .driver import queue_retry, retry_decision
from .folder import STUDY_NAME
from .storage import open_storage, storage_failure

__all__ = ["OBJECTIVES", "SAMPLERS", "fail_stale_trials", "make_sampler", "open_study", "population_size",
           "warm_start_is_ours"]

SAMPLERS = ("nsga2", "tpe", "random")
OBJECTIVES = ("accuracy", "latency_ms", "size_bytes")  # maximised, minimised, minimised


def open_study(settings, *, score: str = OBJECTIVES[0]) -> optuna.Study:
    """Create or reopen the study; the sampler's seed moves on with the trials already there, so a
    resumed run does not propose the first run's points again. ``score``: the name of the first
    objective (the task's score; top-1 accuracy is "accuracy")."""
    storage = settings.storage_url
    try:
        opened = open_storage(storage)
        try:  # exactly one of several drivers starting together creates it, and so warm-starts it
            study = optuna.create_study(storage=opened, study_name=STUDY_NAME,
                                        directions=["maximize", "minimize", "minimize"])
            study.set_user_attr("created_by", _this_process())
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(storage=opened, study_name=STUDY_NAME)
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise storage_failure(storage, exc) from exc
    if study.metric_names is None:  # named once, so optuna-dashboard shows what each objective is
        with warnings.catch_warnings():  # stable since Optuna 3.2, still flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([score, *OBJECTIVES[1:]])
    study.sampler = make_sampler(settings.sampler, settings.seed + len(study.get_trials(deepcopy=False)),
                                 settings.trials)
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


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def warm_start_is_ours(study: optuna.Study) -> bool:
    """Whether this driver queues the warm start: the one that created the study does, once; a
    later driver only when the creator died on this machine before it did (or the study predates
    ``created_by``). Several drivers starting together on one study so queue it once."""
    if study.user_attrs.get("warm_started"):
        return False
    creator = study.user_attrs.get("created_by")
    if creator is None or creator == _this_process():
        return True
    return creator.get("host") == socket.gethostname() and not _alive(creator.get("pid"))


def fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a process that no longer exists: failed, with a reason, and retried
    when they hold a candidate."""
    host = socket.gethostname()
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = frozen.user_attrs.get("driver") or {}
        if driver.get("host") not in (None, host) or _alive(driver.get("pid")):
            continue  # another machine's or a live process's trial: not ours to judge
        _, outcome = retry_decision(frozen)
        trial = optuna.trial.Trial(study, frozen._trial_id)
        try:
            trial.set_user_attr("fail_reason", f"left running by a process that stopped (killed?); {outcome}")
            trial.set_user_attr("status", "failed")
            study.tell(frozen.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # UpdateFinishedTrialError is a RuntimeError
            continue  # another driver resuming at the same moment failed it first, and queued its retry
        queue_retry(study, frozen)


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
