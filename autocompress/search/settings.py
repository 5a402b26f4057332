"""What a search is asked to do, grouped by concern, with the one set of defaults both the Python
API and the command line use: what is searched (``SearchSettings``), how latency is judged
(``LatencySettings``) and where the work runs (``ExecutionSettings``).

The defaults are the search the benchmarks found best (``results/search_vs_hand_policy_amx/``): the
surrogate guide, the model's own level timed first where the hardware model was not profiled on it
or the budget is relative, and candidates near the budget timed before their fine-tune. The
command line's flags override single fields; a flag left out leaves the field at these defaults.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import AutocompressError
from ..train.finetune import DistillationConfig
from ..train.task import Task
from .budget import DEFAULT_CONFIDENCE, Budget, ChanceConstraint
from .folder import SearchFolder
from .guides import GUIDES as GUIDE_CLASSES
from .guides import Guide, make_guide
from .problem import ProblemSpec
from .study import SAMPLERS

__all__ = ["CALIBRATE_MODEL", "EXECUTORS", "GUIDES", "ExecutionSettings", "LatencySettings", "SearchSettings"]

GUIDES = tuple(GUIDE_CLASSES)  # what steers the search besides its sampler (``guides``)
EXECUTORS = ("local", "ray")
CALIBRATE_MODEL = ("auto", "on", "off")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise AutocompressError(f"{name} {value!r} is not one of {', '.join(allowed)}", parameters=(name,))


@dataclass(frozen=True)
class LatencySettings:
    """How a candidate's latency is judged against the budget."""

    # Time a few dozen of this model's own candidates first and predict at their level
    # (``hardware.model_level``): "on", "off", or "auto": under a relative budget, and on a model the
    # hardware model was not profiled on. It supersedes calibrate_host; a resumed search keeps its level.
    calibrate_model: str = "auto"
    # Time the hardware model's reference candidates first and predict at this host's speed now
    # (``hardware.host_level``); a resumed search keeps the level it started with.
    calibrate_host: bool = False
    # Time a candidate predicted within this share of the budget (either side) before its
    # fine-tune, and tell the study the measured latency (``search.near_budget``); 0: never.
    measure_near_budget: float = 0.1
    # A predicted candidate meets the budget when it does so with this probability
    # (``budget.ChanceConstraint``; 0.5: its predicted mean does); a measured one when it measures
    # ``budget.MEASURED_MARGIN`` under it, as the export demands.
    budget_confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        _one_of("calibrate_model", self.calibrate_model, CALIBRATE_MODEL)
        if not 0 <= self.measure_near_budget < 1:
            raise AutocompressError(f"measure_near_budget {self.measure_near_budget}: give a share of the budget "
                                    "from 0 (off) to below 1, e.g. 0.1", parameters=("measure_near_budget",))
        ChanceConstraint(self.budget_confidence)

    @classmethod
    def predicted_only(cls, budget_confidence: float = DEFAULT_CONFIDENCE) -> "LatencySettings":
        """Judge by the hardware model's predictions alone: nothing is timed during the search
        (quick, and the same on every machine; what tests and dry runs want)."""
        return cls(calibrate_model="off", measure_near_budget=0.0, budget_confidence=budget_confidence)


@dataclass(frozen=True)
class ExecutionSettings:
    """Where the fine-tunes run and where the study is stored; none of it changes what is found."""

    executor: str = "local"  # or "ray"
    workers: int | None = None  # Ray actors (default: the cluster's CPUs / cpus_per_trial)
    ray_address: str | None = None  # join this cluster ("auto", "host:port"); default: start Ray locally
    cpus_per_trial: int = 1
    gpus_per_trial: float | None = None  # default: 1 when the cluster has GPUs, else 0
    storage: str | None = None  # default: the journal file in the search folder (``SearchFolder.default_storage``)

    def __post_init__(self) -> None:
        if self.ray_address and self.executor == "local":
            object.__setattr__(self, "executor", "ray")  # joining a cluster means running on it
        _one_of("executor", self.executor, EXECUTORS)
        if self.executor == "ray" and importlib.util.find_spec("ray") is None:
            raise AutocompressError("executor ray needs Ray, an optional extra: pip install 'autocompress[ray]'",
                                    parameters=("executor",))
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise AutocompressError(f"gpus_per_trial {self.gpus_per_trial}: give 0 or more",
                                    parameters=("gpus_per_trial",))
        if self.workers is not None and self.workers < 1 or self.cpus_per_trial < 1:
            raise AutocompressError(f"workers {self.workers} / cpus_per_trial {self.cpus_per_trial}: give at "
                                    "least 1", parameters=("workers", "cpus_per_trial"))


@dataclass(frozen=True)
class SearchSettings:
    """A search: what is searched, under which budget, into which folder, and how.

    ``problem``: a ProblemSpec (names), or a Task (your model object, your data, your score), which
    is then kept in ``task`` and named in ``problem``."""

    problem: ProblemSpec | Task
    budget: str
    out: Path
    trials: int = 100
    timeout_s: float | None = None
    guide: str = "surrogate"  # one of GUIDES
    guide_options: dict = field(default_factory=dict)  # fields of the guide's Config that differ from its defaults
    finetune: DistillationConfig = field(default_factory=DistillationConfig)
    sampler: str = "nsga2"
    seed: int = 0
    warm_start: bool = True
    repair: bool = True
    latency: LatencySettings = field(default_factory=LatencySettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    task: Task | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.problem, Task):
            object.__setattr__(self, "task", self.problem)
            object.__setattr__(self, "problem", ProblemSpec.for_task(self.problem))
        object.__setattr__(self, "out", Path(self.out))
        _one_of("sampler", self.sampler, SAMPLERS)
        self.make_guide()  # a bad name or option is refused here, before anything runs
        if self.trials < 1:
            raise AutocompressError(f"trials {self.trials}: give at least 1", parameters=("trials",))
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise AutocompressError(f"timeout_s {self.timeout_s}: give a positive number of seconds",
                                    parameters=("timeout_s",))
        Budget.parse(self.budget)
        if self.out.exists() and not self.out.is_dir():
            raise AutocompressError(f"out {self.out} is a file, not a folder; choose another out folder (the file is "
                                    "left as it is)", parameters=("out",))

    def make_guide(self) -> Guide:
        return make_guide(self.guide, self.guide_options)

    @property
    def storage_url(self) -> str:
        return self.execution.storage or SearchFolder(self.out).default_storage

    def with_hardware_pinned(self) -> "SearchSettings":
        """These settings with an "auto" hardware model resolved to the folder it picks here, so
        that a resumed search and its export read the model the search started with, on any machine."""
        from ..hardware.store import AUTO, find_hardware_model

        if self.problem.hardware != AUTO:
            return self
        return replace(self, problem=replace(self.problem, hardware=str(find_hardware_model())), task=self.task)

    def identity(self) -> dict:
        """What must match for a run to resume a study (trials, timeout and storage may change)."""
        identity = {"problem": self.problem.to_dict(), "budget": self.budget, "finetune": asdict(self.finetune)}
        if self.latency.budget_confidence != 0.5:  # searches from before the chance constraint read the mean
            identity["budget_confidence"] = self.latency.budget_confidence
        return identity

    def to_dict(self) -> dict:
        """The settings by concern, as search.json records them (the problem and fine-tune apart)."""
        execution = asdict(self.execution) | {"storage": self.storage_url if self.execution.storage else None}
        return {"search": {"trials": self.trials, "timeout_s": self.timeout_s, "guide": self.guide,
                           "guide_config": self.make_guide().config_dict(), "sampler": self.sampler,
                           "seed": self.seed, "warm_start": self.warm_start, "repair": self.repair},
                "latency": asdict(self.latency), "execution": execution}
