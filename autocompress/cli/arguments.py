"""argparse types shared by the commands: each turns a bad value into one line naming the flag."""

from __future__ import annotations

import argparse

from ..errors import AutocompressError

__all__ = ["_count", "_parse_shape", "_positive"]


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
