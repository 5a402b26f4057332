"""The Task: what a search needs to know of the user's problem, and nothing of the search.

A Task is the model (an ``nn.Module`` object, trained, or a name to build and train here), its
train, validation and test data (any map-style ``Dataset``, a ``DataLoader`` over one, or a
function returning either), a score (higher better, top-1 by default, named on the front and the
card), and the fine-tune's loss (distillation on the logits by default; give your own when the
outputs are not class logits). Baseline training, sensitivities, blockwise distillation,
fine-tunes, export and the card all read the data through it, in batches.

Image classification on the data sets autocompress names (``load_dataset``) is one Task, built by
``image_classification_task``; a user's comes from Python, or from ``--task package.module:make_task``
on the command line (a function taking no arguments and returning a Task), which is also how a
Ray worker or a later ``export`` gets it again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import AutocompressError
from .data import DatasetSplits, load_dataset
from .scores import Score, as_score

__all__ = ["Task", "check_batches", "check_score", "image_classification_task", "load_task"]


@dataclass(frozen=True)
class Task:
    model: nn.Module | str
    train: Dataset | DataLoader | Callable
    val: Dataset | DataLoader | Callable
    test: Dataset | DataLoader | Callable | None = None
    score: Score | Callable | None = None  # (outputs, targets) -> number, higher better; None: top-1
    score_name: str | None = None  # default: the score function's name
    loss: Callable | None = None  # (student outputs, teacher outputs, targets) -> loss; None: distillation
    example: torch.Tensor | None = None  # one batch of one input; None: the first validation item's
    num_classes: int | None = None  # of a model built from its name; None: the labels'
    name: str = "task"  # names the data in search.json and the card
    test_source: str = "the task's test split"
    input_size: int | None = None
    _splits: DatasetSplits | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, (nn.Module, str)):
            raise AutocompressError(f"task {self.name!r}: model is a {type(self.model).__name__}; give an nn.Module "
                                    "or a model name", parameters=("model",))
        if self.loss is not None and not callable(self.loss):
            raise AutocompressError(f"task {self.name!r}: loss {self.loss!r} is not callable; give a function "
                                    "(student outputs, teacher outputs, targets) -> loss", parameters=("loss",))
        object.__setattr__(self, "score", as_score(self.score, self.score_name))
        for part in ("train", "val", "test"):
            value = getattr(self, part)
            if value is not None:
                object.__setattr__(self, part, _dataset(value, self.name, part))

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else f"object:{type(self.model).__name__}"

    def example_input(self) -> torch.Tensor:
        return self.example if self.example is not None else self.val[0][0].unsqueeze(0)

    def splits(self) -> DatasetSplits:
        """The data as the search reads it."""
        if self._splits is not None:
            return self._splits
        example = self.example_input()
        classes = self.num_classes or _label_count(self.train)
        return DatasetSplits(self.name, self.train, self.val, classes, int(example.shape[-1]), self.test,
                             self.test_source if self.test is not None else "")


def image_classification_task(model: str, dataset: str, *, input_size: int = 32, root: str = "data",
                              augment: bool | None = None) -> Task:
    """The built-in task: a model named as ``resolve_model`` takes it, on a data set ``load_dataset`` names."""
    splits = load_dataset(dataset, image_size=input_size, root=root, augment=augment)
    return Task(model=model, train=splits.train, val=splits.val, test=splits.test, name=splits.name,
                num_classes=splits.num_classes, test_source=splits.test_source, input_size=input_size,
                _splits=splits)


def load_task(path: str) -> Task:
    """The Task that ``package.module:make_task`` returns; every failure one line naming ``path``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise AutocompressError(f"task {path!r}: give package.module:function, a function that returns a Task",
                                parameters=("task",))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AutocompressError(f"task {path!r}: cannot import module {module_name!r} ({exc}); install it or add "
                                "its folder to PYTHONPATH", parameters=("task",)) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AutocompressError(f"task {path!r}: {module_name!r} has no function {attr!r}; name a function that "
                                "returns a Task", parameters=("task",))
    try:
        task = factory()
    except AutocompressError:
        raise
    except Exception as exc:  # the user's code: one line naming it
        first = (str(exc).strip().splitlines() or [""])[0]
        raise AutocompressError(f"task {path!r} raised {type(exc).__name__}: {first}; fix the function",
                                parameters=("task",)) from exc
    if not isinstance(task, Task):
        raise AutocompressError(f"task {path!r} returned a {type(task).__name__}, not an autocompress Task; return "
                                "Task(model=..., train=..., val=..., test=...)", parameters=("task",))
    return task


def _dataset(value, task: str, part: str) -> Dataset:
    """A map-style data set from what the user gave: one, a DataLoader over one, or a function
    returning either (called once)."""
    if callable(value) and not isinstance(value, (Dataset, DataLoader)):
        try:
            value = value()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise AutocompressError(f"task {task!r}: the {part} factory raised {type(exc).__name__}: {first}; fix it",
                                    parameters=(part,)) from exc
    if isinstance(value, DataLoader):
        value = value.dataset
    if not (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
        raise AutocompressError(f"task {task!r}: {part} is a {type(value).__name__}; give a map-style Dataset "
                                "(with __len__ and __getitem__), a DataLoader over one, or a function returning "
                                "either", parameters=(part,))
    if len(value) == 0:
        raise AutocompressError(f"task {task!r}: {part} holds no items; give it at least one", parameters=(part,))
    item = value[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
        raise AutocompressError(f"task {task!r}: {part}[0] is a {type(item).__name__}; each item must be (input "
                                "tensor, target)", parameters=(part,))
    return value


def _label_count(dataset: Dataset) -> int:
    """The classes the labels name (the largest label plus one); 0 where the targets are no labels."""
    targets = getattr(dataset, "targets", None)
    labels = targets() if callable(targets) else targets
    if labels is None:
        labels = [dataset[i][1] for i in range(min(len(dataset), 5000))]
    try:
        return int(max(int(v) for v in labels)) + 1
    except (TypeError, ValueError):
        return 0


def check_batches(task: Task, example: torch.Tensor) -> None:
    """Every split's inputs have the example's shape (the example is one batch of one of them)."""
    for part in ("train", "val", "test"):
        data = getattr(task, part)
        if data is None:
            continue
        shape = tuple(data[0][0].shape)
        if shape != tuple(example.shape[1:]):
            raise AutocompressError(f"task {task.name!r}: {part}'s inputs have shape {shape}, the example input "
                                    f"{tuple(example.shape)}; give inputs of one shape, and an example of one batch "
                                    "of one of them", parameters=(part,))


def check_score(task: Task, model: nn.Module, *, items: int = 64) -> None:
    """The score, on the model's outputs for the first validation items, is a finite number: a
    score that fails says so now, in one line, not after the baseline has trained."""
    count = min(items, len(task.val))
    inputs = torch.stack([task.val[i][0] for i in range(count)])
    targets = torch.as_tensor([task.val[i][1] for i in range(count)])
    with torch.no_grad():
        outputs = model.eval()(inputs)
    task.score(outputs, targets)
