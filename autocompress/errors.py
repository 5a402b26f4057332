"""The exception hierarchy. Every failure a user can cause is an AutocompressError.

The CLI prints ``str(error)`` as one line and exits non-zero, so each message names the offending
input and says how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AutocompressError",
    "ModelResolutionError",
    "WeightsMismatchError",
    "DatasetError",
    "InvalidCandidateError",
    "ExportError",
]


class AutocompressError(Exception):
    """Base class of every user-facing error raised by autocompress."""


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
