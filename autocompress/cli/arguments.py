"""argparse types shared by the commands: each turns a bad value into one line naming the flag."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import AutocompressError

__all__ = ["OneLineParser", "UsageError", "_count", "_parse_shape", "_positive", "add_baseline_flags",
           "add_model_arguments"]


class UsageError(AutocompressError):
    """A command line argparse cannot read: an unknown flag or choice, a missing or malformed value."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2, like every other user error,
    instead of the usage block that argparse prints above its message."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse reads any value that starts with "-" as a flag unless it looks like a negative
        # number; "--budget -1ms" would then say "expected one argument" without naming -1ms. A
        # negative latency is a value too, so the flag's own check can say what is wrong with it.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)\s*(ms|x)?$", re.IGNORECASE)

    def error(self, message: str):
        raise UsageError(f"{message}; `{self.prog} --help` lists the options")


def _count(text: str) -> int:
    """argparse type for step counts and sizes: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise AutocompressError(f"--input-shape {text!r} is not a shape; write positive integers like 1,3,32,32")
    return shape


def add_baseline_flags(parser: argparse.ArgumentParser, *, when: str = "without --weights") -> None:
    """--train-steps and --train-time-cap: how the baseline trains when no weights are given."""
    from ..train.baseline import AUTO_STEPS, DEFAULT_TIME_CAP_S

    parser.add_argument("--train-steps", type=_steps_or_auto, default=AUTO_STEPS,
                        help=f"{when}, train the baseline until its held-out accuracy stops improving (auto, the "
                             "default) or this many steps (cached in the folder); for a space:PATH supernet, its "
                             "sandwich steps (auto: 400)")
    parser.add_argument("--train-time-cap", type=_seconds, default=DEFAULT_TIME_CAP_S, metavar="SECONDS",
                        help=f"with --train-steps auto: stop training the baseline after this long (default "
                             f"{DEFAULT_TIME_CAP_S:g})")


def _steps_or_auto(text: str) -> int | str:
    if text == "auto" or text.isdigit():
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is neither auto nor a non-negative integer")


def _positive_float(text: str, unit: str = "") -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number{unit}")
    return value


def _seconds(text: str) -> float:
    return _positive_float(text, " of seconds")


def add_model_arguments(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    parser.add_argument("model", nargs="?" if optional else None,
                        help="torchvision name (resnet18, torchvision:mobilenet_v2) or package.module:factory")
    parser.add_argument("--weights", type=Path, help="state dict file (loaded with weights_only=True)")
    parser.add_argument("--num-classes", type=_count, default=None, help="classes of the model's head (default 10, "
                        "or the data set's)")
    parser.add_argument("--space", default="auto", help="search-space file of NAS cells (e.g. search_spaces/mobile.yaml), "
                        "auto (default: the one for the model's family) or none")
