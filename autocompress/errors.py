"""The exception hierarchy. Every failure a user can cause is an AutocompressError.

Each message names the offending input and says how to fix it, in the words of the API: a
parameter is named as the function takes it (``sampler 'x' is not one of ...``) and listed in
``error.parameters``. The CLI prints the message as one line, with each such name replaced by the
flag that sets it (``--sampler 'x' ...``), and exits non-zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "AutocompressError",
    "ModelResolutionError",
    "WeightsMismatchError",
    "DatasetError",
    "InvalidCandidateError",
    "ExportError",
    "BudgetError",
    "ResultsError",
    "FinetuneDiverged",
    "WorkerLost",
]


class AutocompressError(Exception):
    """Base class of every user-facing error raised by autocompress."""

    def __init__(self, message: str, *, parameters: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.parameters = tuple(parameters)

    def in_terms_of(self, flag: Callable[[str], str]) -> str:
        """The message with the first mention of each parameter it names replaced by
        ``flag(parameter)`` (later ones are ordinary words: "hardware 'x' is not a hardware model")."""
        text = str(self)
        for name in self.parameters:  # a word of its own: not part of a path such as runs/out/study.db
            text = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w/])", flag(name), text, count=1)
        return text


class ModelResolutionError(AutocompressError):
    """A model name or ``package.module:factory`` spec could not be turned into a module."""


class WeightsMismatchError(AutocompressError):
    """A weights file does not fit the model it was loaded into."""


class DatasetError(AutocompressError):
    """A data set name or path could not be loaded."""


class InvalidCandidateError(AutocompressError):
    """A Candidate names units or values that its Space does not have."""


class ExportError(AutocompressError):
    """A model could not be exported to, or run in, ONNX Runtime."""


class BudgetError(AutocompressError):
    """A latency budget could not be read."""


class ResultsError(AutocompressError):
    """A results folder or study cannot be read as autocompress search results."""


# The two below are raised inside a search and handled there (a trial fails, or is retried
# elsewhere); they stay RuntimeErrors for code that catches those.
class FinetuneDiverged(AutocompressError, RuntimeError):
    """The loss became NaN or infinite: the candidate cannot be trained at these settings."""


class WorkerLost(AutocompressError, RuntimeError):
    """The process (or node) running a trial died; the trial is worth retrying elsewhere."""

