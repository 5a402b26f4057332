"""Every input of a search, checked before anything is written or trained.

The data set (read in full), the model (its spec, its weights, and a first run on an example of
the data), the search-space file (its cells built against the model's blocks), the hardware model
(its measurements read in full), and whether the budget can be reached at all: each failure is one
line naming the input and what to pass instead, found in seconds, where it would otherwise surface
as a traceback after the baseline has trained, or as a search whose every trial is over budget.
What passes is handed on to ``build_problem``, so nothing is loaded twice: the task, the hardware
model, and the model's analysis where the search keeps the weights it was made with (a model
object, or ``weights``); a baseline trained here is analysed again once trained, since its weights
decide which cells compute what their block computes (``CellOption.exact``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..core.analysis import ModelAnalysis, analyze
from ..core.search_space import resolve_search_space
from ..core.space import Space
from ..errors import BudgetError
from ..hardware import HardwareModel, load_hardware_model
from ..train.images import ImageFiles
from ..train.task import Task, check_batches, check_score
from ..train.finetune import DistillationConfig
from ..train.memory import check_fits, training_memory
from ..train.models import check_model_runs, resolve_model
from .boundary import fastest_candidate
from .budget import ON_THE_MEAN, Budget, ChanceConstraint
from .problem import ProblemSpec, hardware_folder, problem_classes, task_for_spec

__all__ = ["CheckedInputs", "check_reachable", "preflight"]


@dataclass(frozen=True)
class CheckedInputs:
    task: Task
    hardware: HardwareModel  # at the profile's level
    # The model's analysis (with the cells of its search space) where its weights are the ones
    # searched; None where the baseline is still to be trained here.
    analysis: ModelAnalysis | None = None


def preflight(spec: ProblemSpec, budget: Budget, *, check_budget: bool = True,
              chance: ChanceConstraint = ON_THE_MEAN, task: Task | None = None) -> CheckedInputs:
    """Check the inputs of a search in the order they are cheap to check; ``check_budget``: also
    whether ``budget`` can be reached, at ``chance``'s confidence, at the hardware model's own level
    (a budget in ms under a host level measured later is checked once the level is known).
    ``task``: a Task object from Python (default: the one ``spec`` names)."""
    task = task or task_for_spec(spec)
    splits = task.splits()
    for part in (splits.train, splits.val, splits.test):
        if isinstance(part, ImageFiles):
            part.check_readable()
    model = task.model if isinstance(task.model, nn.Module) else \
        resolve_model(task.model, num_classes=problem_classes(spec, splits), weights=spec.weights,
                      image_size=splits.image_size)
    example = task.example_input()
    check_batches(task, example)
    memory = training_memory(model, example, batch_size=DistillationConfig().batch_size)
    if memory is not None:  # before its first real run, which alone could exhaust the memory
        check_fits(memory.total_bytes, f"training model {spec.model!r} at input_size {spec.input_size} "
                   f"({memory.describe()})", "give a smaller one, or a smaller model",
                   parameters=("input_size",))
    check_model_runs(model, example, spec=spec.model, needs=lambda size: f"it needs input_size {size}",
                     size_name="input_size", parameters=("input_size",))
    check_score(task, model)
    # The search space's cells are built against the model's blocks now, so a file's mistakes
    # show before anything trains, and the budget check prices the cells too (they may be faster
    # than any compression of the blocks).
    analysis = analyze(model, example, space=resolve_search_space(spec.search_space, model))
    hardware = load_hardware_model(hardware_folder(spec.hardware))
    if check_budget:
        check_reachable(Space(analysis, spec.space_options()), hardware, budget, chance=chance)
    searched_as_given = isinstance(task.model, nn.Module) or bool(spec.weights)
    return CheckedInputs(task, hardware, analysis if searched_as_given else None)


def check_reachable(space: Space, hardware: HardwareModel, budget: Budget, baseline_ms: float | None = None, *,
                    chance: ChanceConstraint = ON_THE_MEAN) -> None:
    """A one-line BudgetError when no candidate of ``space`` is predicted within ``budget`` at
    ``chance``'s confidence: every trial would be over budget, and the search would only find that
    out trial by trial. ``baseline_ms``: what a relative budget is a share of (default: the
    baseline's predicted mean)."""
    if baseline_ms is None:
        baseline_ms = hardware.predict_candidate(space.analysis, space.default()).ms
    budget_ms = budget.resolve(baseline_ms)
    _, fastest_ms = fastest_candidate(space, hardware, stop_at_ms=budget_ms, chance=chance)
    if fastest_ms <= budget_ms:
        return
    ratio = fastest_ms / baseline_ms
    least = f"{math.ceil(ratio * 100) / 100:g}x" if budget.unit == "x" else f"{math.ceil(fastest_ms * 1000) / 1000:g}ms"
    sure = "" if chance.confidence == 0.5 else f" at {chance.confidence:.0%} confidence"
    lower = "" if chance.confidence == 0.5 else ", or give a lower budget_confidence"
    raise BudgetError(f"budget {budget} ({budget_ms:.3f} ms) cannot be reached: the fastest candidate found in the "
                      f"space is predicted at {fastest_ms:.3f} ms{sure} ({ratio:.3g}x the baseline's {baseline_ms:.3f} "
                      f"ms); give budget {least} or more, or let the space compress more (prune_ratios, bit_widths, "
                      f"...){lower}", parameters=("budget", "prune_ratios", "bit_widths", "budget_confidence"))
