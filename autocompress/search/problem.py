"""What every trial of a search needs, built once: the baseline, data, analysis, space and hardware model.

``SearchProblem`` is the worker's view of a search. It evaluates one Candidate (apply it to the
baseline, fine-tune with distillation, return the held-out accuracy) and knows nothing about Optuna,
so the same object serves the local loop, a Ray worker, ``autocompress export`` and the benchmarks.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..core.accounting import footprint_of_candidate
from ..core.analysis import ModelAnalysis, analyze
from ..core.search_space import resolve_search_space
from ..train.blockwise import BlockwiseConfig, load_or_distill_cells
from ..train.sensitivity import JointDamage, Sensitivities, measure_sensitivities
from ..train.baseline import AUTO_STEPS, DEFAULT_TIME_CAP_S, baseline_model, baseline_training
from ..train.data import DatasetSplits, calibration_batches
from ..train.images import items_never_change, unaugmented
from ..train.scores import TOP1, Score
from ..train.task import Task, image_classification_task, load_task
from ..errors import AutocompressError
from ..train.finetune import DistillationConfig, FinetuneResult, TeacherOutputs, distill, evaluate
from ..hardware import HardwareModel, LatencyPrediction, find_hardware_model, load_hardware_model
from ..hardware.host_level import HostLevel
from ..hardware.store import AUTO, SHIPPED_MODELS
from ..core.space import Candidate, Space, SpaceOptions
from ..techniques import apply_candidate
from .sensitivity_chart import plot_sensitivities

__all__ = ["TASK_OBJECT", "ProblemSpec", "SearchProblem", "build_problem", "problem_classes", "task_for_spec"]

log = logging.getLogger(__name__)

TASK_OBJECT = "object"  # ProblemSpec.task of a search made with a Task object from Python


@dataclass(frozen=True)
class ProblemSpec:
    """The inputs that define what is searched: two searches with equal specs are comparable."""

    model: str
    dataset: str = "digits"
    input_size: int = 32
    weights: str | None = None
    num_classes: int | None = None
    # baseline training when no weights are given: "auto" (to a plateau of its held-out accuracy,
    # within train_time_cap_s seconds) or a number of steps
    train_steps: int | str = AUTO_STEPS
    train_time_cap_s: float = DEFAULT_TIME_CAP_S
    hardware: str = AUTO  # a hardware model folder, or "auto": one measured on a machine like this one
    # A search-space file of NAS cells (search_spaces/*.yaml), "auto" (the one for the model's family,
    # if any) or "none" (no cells).
    search_space: str = AUTO
    # SpaceOptions keywords that differ from the defaults, e.g. {"sparsity_ratios": [0.0, 0.5, 0.9]}
    space: dict = field(default_factory=dict)
    data_root: str = "data"  # where the standard data sets' files are (``train.standard_sets``)
    augment: bool | None = None  # random crops and flips on training items; None: the data set's default
    # "package.module:make_task": a function returning the Task searched (then model and dataset
    # only name it); "object": a Task passed from Python, which export needs passed again
    task: str | None = None

    def __post_init__(self) -> None:
        if self.train_steps != AUTO_STEPS and not (isinstance(self.train_steps, int) and self.train_steps >= 0):
            raise AutocompressError(f"train_steps {self.train_steps!r}: give {AUTO_STEPS} or a number of steps (0: "
                                    "keep the random initialisation)", parameters=("train_steps",))
        if not self.train_time_cap_s > 0:
            raise AutocompressError(f"train_time_cap_s {self.train_time_cap_s}: give a positive number of seconds",
                                    parameters=("train_time_cap_s",))
        try:
            self.space_options()
        except (TypeError, ValueError) as exc:
            raise AutocompressError(f"space options {self.space}: {exc}") from exc

    def space_options(self) -> SpaceOptions:
        return SpaceOptions.from_dict(self.space)

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.space:
            del out["space"]  # so the identity of a search from before space options stays the same
        if self.search_space == AUTO:
            del out["search_space"]  # likewise for searches from before search-space files
        if self.train_steps != AUTO_STEPS or self.train_time_cap_s == DEFAULT_TIME_CAP_S:
            del out["train_time_cap_s"]  # it changes nothing, or nothing from before the cap
        for key, default in (("data_root", "data"), ("augment", None), ("task", None)):
            if out[key] == default:
                del out[key]  # likewise for searches from before these settings
        return out

    @classmethod
    def for_task(cls, task: Task, /, **settings) -> "ProblemSpec":
        """The spec that names a Task object (``settings``: the other ProblemSpec fields)."""
        size = task.input_size or int(task.example_input().shape[-1])
        named = {"model": task.model_name, "dataset": task.name, "input_size": size, "task": TASK_OBJECT}
        return cls(**(named | settings))  # ``task=MODULE:FUNCTION``: the Task a --task function made


@dataclass(frozen=True)
class SearchProblem:
    """Everything a trial needs, built once by ``build_problem``; a step that learns more (the
    model's level, the sensitivities) makes a new one (``at_level``, ``with_sensitivities``)."""

    spec: ProblemSpec
    splits: DatasetSplits
    baseline: torch.nn.Module
    example: torch.Tensor
    analysis: ModelAnalysis
    space: Space
    hardware: HardwareModel
    teacher: TeacherOutputs  # the baseline's outputs for training batches (the distillation's targets)
    calibration: list[torch.Tensor]
    baseline_ms: float
    baseline_accuracy: float  # the task's score on the validation split (top-1 accuracy by default)
    baseline_bytes: int
    device: str = "cpu"
    cell_weights: dict = field(default_factory=dict)  # blockwise-distilled cells, by cell key
    sensitivities: Sensitivities | None = None  # measured by ``measure_sensitivities``
    baseline_training: dict | None = None  # how the baseline trained here (``train.baseline.baseline_training``)
    score: Score = TOP1
    loss: Callable | None = None  # the task's fine-tune loss; None: distillation on the logits

    def __getstate__(self) -> dict:
        # A problem whose data a worker can read from its source (a named data set, or a task
        # importable by name) travels without it, and the worker reads it there; a Task object
        # from a notebook travels whole (cloudpickle).
        state = dict(self.__dict__)
        if self.spec.task != TASK_OBJECT:
            state["splits"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.splits is None:
            self.__dict__["splits"] = task_for_spec(self.spec).splits()

    def predict(self, candidate: Candidate) -> LatencyPrediction:
        return self.hardware.predict_candidate(self.analysis, candidate)

    def learn_kernels(self) -> None:
        """Price most kernels the space's layers can take, once, in one batch (about a second): a
        search prices its proposals one at a time and its repairs by the hundred, and each of those
        calls then walks only what is new (``HardwareModel.learn_kernels``)."""
        self.hardware.learn_kernels(self.analysis, kernel_sample(self.space))

    def size_bytes(self, candidate: Candidate) -> int:
        return footprint_of_candidate(self.analysis, candidate).bytes

    def build(self, candidate: Candidate) -> torch.nn.Module:
        return apply_candidate(self.baseline, candidate, self.analysis, self.example,
                               rules=self.hardware.quantization_rules, cell_weights=self.cell_weights)

    def finetune(self, candidate: Candidate, config: DistillationConfig, *,
                 should_stop: Callable[[int, float], bool] | None = None) -> tuple[torch.nn.Module, FinetuneResult]:
        """Build ``candidate`` and fine-tune it with distillation from the baseline."""
        student = self.build(candidate)
        result = distill(student, self.splits.train, self.splits.val, self.teacher, config=config,
                         calibration=self.calibration, should_stop=should_stop, score=self.score, loss=self.loss,
                         device=self.device)
        return student.cpu(), result

    def with_sensitivities(self, folder: Path, *, map_jobs=None, progress: bool = False) -> SearchProblem:
        """This problem with the damage of each decision value alone (``train.sensitivity``),
        measured or read from ``folder``'s ``sensitivity/``, with its chart beside it."""
        table = measure_sensitivities(
            self.baseline, self.space, self.example, torch.cat(self.calibration), unaugmented(self.splits.train),
            Path(folder) / "sensitivity", rules=self.hardware.quantization_rules, cell_weights=self.cell_weights,
            map_jobs=map_jobs, progress=progress)
        plot_sensitivities(Path(folder) / "sensitivity" / "sensitivity.png", table)
        return replace(self, sensitivities=table)

    def at_level(self, ratio: float, baseline_ms: float | None = None) -> SearchProblem:
        """This problem predicting at ``ratio`` times the hardware model's level (``hardware.model_level``);
        ``baseline_ms``: the baseline as measured, which a relative budget is a share of."""
        return replace(self, hardware=self.hardware.at_level(ratio),
                       baseline_ms=self.baseline_ms if baseline_ms is None else baseline_ms)

    def on_device(self, device: str) -> SearchProblem:
        return replace(self, device=device)

    def joint_damage(self) -> JointDamage:
        """The damage of whole candidates, measured as the sensitivities are (``train.sensitivity``)."""
        return JointDamage(self.baseline, self.space, self.example, torch.cat(self.calibration),
                           unaugmented(self.splits.train),
                           rules=self.hardware.quantization_rules, cell_weights=self.cell_weights)

    def baseline_summary(self) -> dict:
        return {"accuracy": self.baseline_accuracy, "latency_ms": self.baseline_ms, "size_bytes": self.baseline_bytes,
                "score": self.score.name}

    def test_score(self, model: torch.nn.Module) -> float | None:
        """The task's score of ``model`` on the test split, which no choice of the search saw (None
        where the task has none)."""
        return None if self.splits.test is None else evaluate(model, self.splits.test, score=self.score,
                                                              device=self.device)


def build_problem(spec: ProblemSpec, *, cache_dir: Path, device: str = "cpu", host_level: HostLevel | None = None,
                  map_jobs=None, progress: bool = False, task: Task | None = None,
                  hardware: HardwareModel | None = None, analysis: ModelAnalysis | None = None) -> SearchProblem:
    """Load the data and hardware model, train (or load) the baseline and distill its cells, cached
    in ``cache_dir``. ``host_level``: predict at that level of the host (``hardware.host_level``), not
    the profile's. ``map_jobs(fn, jobs)``: where blockwise distillation and supernet training run
    (default: here). ``task``: the Task searched, already made (``preflight``; a Task object from
    Python); default: the one ``spec`` names. ``hardware``: the hardware model already loaded;
    ``analysis``: the model's analysis already made with the weights searched (``preflight``)."""
    hardware_dir = hardware_folder(spec.hardware) if hardware is None else None
    task = task or task_for_spec(spec)
    splits = task.splits()
    if isinstance(task.model, torch.nn.Module):  # the user's trained model: searched as it is
        baseline = copy.deepcopy(task.model)
    else:
        classes = problem_classes(spec, splits)
        baseline = baseline_model(task.model, num_classes=classes,
                                  weights=Path(spec.weights) if spec.weights else None, train_steps=spec.train_steps,
                                  splits=splits, cache_dir=Path(cache_dir), train_time_cap_s=spec.train_time_cap_s,
                                  map_jobs=map_jobs, progress=progress)
    baseline.eval()
    example = task.example_input()
    analysis = analysis or analyze(baseline, example, space=resolve_search_space(spec.search_space, baseline))
    space = Space(analysis, spec.space_options())
    cell_weights = {}
    if any(v.kind == "cell" for v in space.variables):
        images = torch.cat(calibration_batches(splits.train, num_samples=BlockwiseConfig().samples, batch_size=256))
        cell_weights = load_or_distill_cells(baseline, analysis, images, Path(cache_dir) / "cells",
                                             map_jobs=map_jobs, progress=progress)
    hardware = hardware or load_hardware_model(hardware_dir)
    if host_level is not None:
        hardware = hardware.at_level(host_level.ratio)
    return SearchProblem(
        spec=spec, splits=splits, baseline=baseline, example=example, analysis=analysis, space=space,
        hardware=hardware, teacher=TeacherOutputs(baseline, splits.train, cache=items_never_change(splits.train)),
        calibration=calibration_batches(splits.train),
        # a measured baseline (own candidates' level) is what a relative budget is a share of
        baseline_ms=(host_level.baseline_ms if host_level is not None and host_level.baseline_ms is not None
                     else hardware.predict_candidate(analysis, space.default()).ms),
        baseline_accuracy=evaluate(baseline, splits.val, score=task.score),
        baseline_bytes=footprint_of_candidate(analysis, space.default()).bytes,
        device=device, cell_weights=cell_weights,
        baseline_training=None if spec.weights or spec.train_steps == 0 or not isinstance(task.model, str) else
        baseline_training(Path(cache_dir)),
        score=task.score, loss=task.loss,
    )


def task_for_spec(spec: ProblemSpec) -> Task:
    """The Task ``spec`` names: its --task function's, or image classification on its data set."""
    if spec.task == TASK_OBJECT:
        raise AutocompressError(f"this search was made with a Task object from Python ({spec.model} on "
                                f"{spec.dataset}); pass the same Task again (task=...), from Python",
                                parameters=("task",))
    if spec.task:
        return load_task(spec.task)
    return image_classification_task(spec.model, spec.dataset, input_size=spec.input_size, root=spec.data_root,
                                     augment=spec.augment)


def kernel_sample(space: Space, count: int = 2000) -> list[Candidate]:
    """Random candidates of ``space`` (each with a random share of its decisions changed): what
    ``HardwareModel.learn_kernels`` prices at a search's start."""
    rng = random.Random(0)
    return [space.sample(rng, density=rng.uniform(0.1, 1.0)) for _ in range(count)]


def problem_classes(spec: ProblemSpec, splits: DatasetSplits) -> int:
    """The classes of the model's head: ``num_classes``, else the data set's; never fewer than its."""
    classes = spec.num_classes or splits.num_classes
    if classes < splits.num_classes:
        raise AutocompressError(f"num_classes {classes} is below the {splits.num_classes} classes of "
                                f"{spec.dataset!r}", parameters=("num_classes",))
    return classes


def hardware_folder(name: str) -> Path:
    """``name`` as given; for "auto", ``find_hardware_model``'s pick; for a relative name not found
    here, the hardware model shipped beside the package (so ``hardware_models/ort-cpu-1t`` works
    from any working directory). Raises a one-line error unless it is a hardware model folder."""
    if name == AUTO:
        return find_hardware_model()
    path = Path(name)
    shipped = SHIPPED_MODELS.parent / path
    if not path.is_absolute() and not (path / "metadata.json").is_file() and (shipped / "metadata.json").is_file():
        return shipped
    if not (path / "metadata.json").is_file():
        raise AutocompressError(f"hardware {name!r} is not a hardware model folder; pass one written by "
                                "`autocompress profile`, e.g. hardware_models/ort-cpu-1t, or auto",
                                parameters=("hardware",))
    return path
