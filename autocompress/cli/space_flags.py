"""Command-line flags for the Space, one per registered technique (its ``option``), so a new
technique gets its flag without touching the CLI: ``--prune-ratios 0,0.25,0.5``,
``--bit-widths 32,8``, ``--sparsity-ratios 0,0.5,0.75,0.9``, ``--skip-blocks off``."""

from __future__ import annotations

import argparse

from ..core.technique import registered
from ..errors import AutocompressError

__all__ = ["add_space_flags", "space_options_from_args"]


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def add_space_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search space (one flag per technique)")
    for t in registered():
        default = t.default_option
        if isinstance(default, bool):
            group.add_argument(_flag(t.option), choices=["on", "off"], default=None,
                               help=f"{t.kind} decisions on or off (default {'on' if default else 'off'})")
        else:
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) or "off"
            group.add_argument(_flag(t.option), default=None, metavar="VALUES",
                               help=f"comma-separated {t.kind} values to offer (default {shown})")


def space_options_from_args(args: argparse.Namespace) -> dict:
    """The SpaceOptions keywords given on the command line (JSON-able: lists, not tuples)."""
    given = {}
    for t in registered():
        text = getattr(args, t.option, None)
        if text is None:
            continue
        if isinstance(t.default_option, bool):
            given[t.option] = text == "on"
            continue
        try:
            values = [t.value_type(part) for part in text.split(",") if part.strip()]
            t.read_option(tuple(values))
        except ValueError as exc:
            raise AutocompressError(f"{_flag(t.option)} {text!r}: {exc}; write comma-separated values like "
                                    f"{','.join(str(v) for v in t.default_option) or '0,0.5,0.9'}") from exc
        given[t.option] = values
    return given
