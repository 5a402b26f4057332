"""Read a declarative search-space file (YAML) into plain frozen dataclasses, refusing bad input.

A space file says which block classes may be replaced by which cells (``mb``, ``narrow``,
``dwsep``, ``skip``) so that a user can widen or narrow the architecture search without writing
Python. Everything is checked here, once, at load time: an unknown op, a mistyped parameter or a
class that does not import becomes one ``SearchSpaceError`` line naming the file, the entry and
the fix, instead of a failure deep inside a search that has already run for an hour.
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..errors import AutocompressError

__all__ = ["SHIPPED_SPACES", "BlockPattern", "CellSpec", "SearchSpaceError", "SearchSpaceFile",
           "load_search_space", "resolve_search_space"]

# The repository's folder when run from a checkout, the packaged copy in an installed wheel.
_SHIPPED_CANDIDATES = (Path(__file__).resolve().parents[2] / "search_spaces",
                       Path(__file__).resolve().parents[1] / "_search_spaces")
SHIPPED_SPACES = next((p for p in _SHIPPED_CANDIDATES if p.is_dir()), _SHIPPED_CANDIDATES[0])

_TOP_LEVEL_KEYS = ("version", "name", "description", "blocks")
_BLOCK_KEYS = ("match", "cells")
# op -> (required parameters, optional parameters)
_OPS = {"mb": (("expand", "kernel"), ("se",)), "narrow": (("width",), ()), "dwsep": ((), ()), "skip": ((), ())}
_EXAMPLE_VALUES = {"expand": "[3, 6]", "kernel": "[3, 5]", "width": "[0.5, 0.75]"}
_EXAMPLE_CLASS = "torchvision.models.resnet.BasicBlock"


class SearchSpaceError(AutocompressError):
    """A search-space file is missing, is not valid YAML, or does not follow the format."""


@dataclass(frozen=True)
class CellSpec:
    """One cell a matched block may become."""

    op: str
    expand: float | None = None
    kernel: int | None = None
    se: bool = True  # keep the squeeze-excitation gate where the block has one
    width: float | None = None
    entry: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        if self.op == "mb":
            return f"mb e{self.expand:g} k{self.kernel}" + ("" if self.se else " -se")
        if self.op == "narrow":
            return f"narrow {self.width:g}"
        return self.op


@dataclass(frozen=True)
class BlockPattern:
    """The cells offered to every block whose class is one of ``classes``."""

    classes: tuple[type, ...]
    class_names: tuple[str, ...]
    cells: tuple[CellSpec, ...]
    entry: str

    def matches(self, module: nn.Module) -> bool:
        # Exact type: a user's subclass may change the block's structure, so it is caught only when named.
        return type(module) in self.classes


@dataclass(frozen=True)
class SearchSpaceFile:
    path: str
    name: str
    description: str
    patterns: tuple[BlockPattern, ...]

    def pattern_for(self, module: nn.Module) -> BlockPattern | None:
        return next((p for p in self.patterns if p.matches(module)), None)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "description": self.description,
                "patterns": [{"entry": p.entry, "match": list(p.class_names), "cells": [c.name for c in p.cells]}
                             for p in self.patterns]}


def resolve_search_space(name: str | None, model: nn.Module) -> SearchSpaceFile | None:
    """The space file ``name`` names: a path, ``"none"`` (no cells), or ``"auto"``/None (by family)."""
    if name == "none":
        return None
    if name is None or name == "auto":
        if isinstance(getattr(model, "cell_space", None), SearchSpaceFile):
            return model.cell_space  # a supernet's own elastic dimensions (core.elastic_mobile)
        return None if _family_space(model) is None else load_search_space(SHIPPED_SPACES / _family_space(model))
    return load_search_space(name)


def load_search_space(path: str | os.PathLike) -> SearchSpaceFile:
    """Read and validate one space file; every problem raises a one-line SearchSpaceError."""
    found = _find_file(Path(path))
    label = str(found)
    document = _read_yaml(found, label)
    if not isinstance(document, dict):
        raise _error(label, "top level", "the file must be a mapping with keys name and blocks; "
                     f"copy the layout of {SHIPPED_SPACES / 'example_user.yaml'}")
    _refuse_unknown_keys(document, _TOP_LEVEL_KEYS, label, "top level")
    _check_version(document.get("version", 1), label)
    name = _required_string(document, "name", label)
    description = document.get("description", "")
    if not isinstance(description, str):
        raise _error(label, "description", f"{description!r} is not text; write the description as a string")
    blocks = _non_empty_list(document.get("blocks"), label, "blocks", "list the block patterns under blocks:")
    patterns = tuple(_parse_block(block, label, f"blocks[{i}]") for i, block in enumerate(blocks))
    return SearchSpaceFile(path=label, name=name, description=description.strip(), patterns=patterns)


def _family_space(model: nn.Module) -> str | None:
    """The shipped file for the model's block family, or None when it has no known family."""
    # Imported here: torchvision is needed only to recognise its own blocks.
    from torchvision.models import efficientnet, mnasnet, mobilenetv2, mobilenetv3, resnet

    mobile = (mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual, efficientnet.MBConv,
              efficientnet.FusedMBConv, mnasnet._InvertedResidual)
    types = {type(m) for m in model.modules()}
    if types.intersection(mobile):
        return "mobile.yaml"
    if types.intersection((resnet.BasicBlock, resnet.Bottleneck)):
        return "resnet.yaml"
    return None


def _find_file(given: Path) -> Path:
    """``given``, or the shipped file of that name when a relative path does not exist here."""
    if given.exists() or given.is_absolute() or not given.parts:
        found = given
    else:
        inside = Path(*given.parts[1:]) if given.parts[0] == "search_spaces" and len(given.parts) > 1 else given
        found = SHIPPED_SPACES / inside if (SHIPPED_SPACES / inside).is_file() else given
    if not found.exists():
        shipped = ", ".join(sorted(p.name for p in SHIPPED_SPACES.glob("*.yaml"))) or "mobile.yaml, resnet.yaml"
        raise SearchSpaceError(f"space file '{given}' does not exist; "
                               f"pass a file from search_spaces/ ({shipped}) or none")
    if found.is_dir():
        raise SearchSpaceError(f"space file '{given}' is a folder; pass one .yaml file inside it")
    return found


def _read_yaml(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchSpaceError(f"{label}: cannot be read ({_one_line(exc)}); "
                               "pass a readable UTF-8 text file") from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise SearchSpaceError(f"{label}: {where}YAML syntax error ({_one_line(exc.problem or exc)}); "
                               "fix the file's indentation or quoting") from exc
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{label}: YAML error ({_one_line(exc)}); "
                               "fix the file's indentation or quoting") from exc


def _parse_block(block: Any, label: str, entry: str) -> BlockPattern:
    if not isinstance(block, dict):
        raise _error(label, entry, "a block pattern must be a mapping with keys match and cells")
    _refuse_unknown_keys(block, _BLOCK_KEYS, label, entry)
    names = block.get("match")
    names = [names] if isinstance(names, str) else names
    names = _non_empty_list(names, label, f"{entry}.match", f"name a block class, e.g. {_EXAMPLE_CLASS}")
    classes = tuple(_resolve_class(n, label, f"{entry}.match") for n in names)
    raw_cells = _non_empty_list(block.get("cells"), label, f"{entry}.cells", "list at least one cell, e.g. - skip")
    cells: dict[CellSpec, CellSpec] = {}
    for i, raw in enumerate(raw_cells):
        for cell in _parse_cell(raw, label, f"{entry}.cells[{i}]"):
            if cell in cells:
                raise _duplicate(cell, cells[cell], label)
            cells[cell] = cell
    return BlockPattern(classes=classes, class_names=tuple(names), cells=tuple(cells), entry=entry)


def _duplicate(cell: CellSpec, first: CellSpec, label: str) -> SearchSpaceError:
    where = "from its own lists" if cell.entry == first.entry else f"(also by {first.entry})"
    return _error(label, cell.entry, f"cell '{cell.name}' is offered twice {where}; remove the repeated value")


def _resolve_class(dotted: Any, label: str, entry: str) -> type:
    if not isinstance(dotted, str):
        raise _error(label, entry, f"{dotted!r} is not a class name; name a block class, e.g. {_EXAMPLE_CLASS}")
    try:
        found = _import_dotted(dotted)
    except Exception as exc:  # importing runs the user's module: any failure there is theirs to fix
        raise _error(label, entry, f"no class '{dotted}' ({_one_line(exc)}); name a block class by its dotted path, "
                     f"e.g. {_EXAMPLE_CLASS}") from exc
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise _error(label, entry, f"'{dotted}' is not a torch.nn.Module subclass; name a block class, "
                     f"e.g. {_EXAMPLE_CLASS}")
    return found


def _import_dotted(dotted: str) -> Any:
    """Import the module part of ``dotted`` and getattr the rest, so nested classes resolve too."""
    parts = dotted.split(".")
    found: Any = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        # A package does not always import its submodules itself.
        if not hasattr(found, part) and hasattr(found, "__path__"):
            importlib.import_module(".".join(parts[:i]))
        found = getattr(found, part)
    return found


def _parse_cell(raw: Any, label: str, entry: str) -> list[CellSpec]:
    """One cell entry, expanded to the product of its parameter lists."""
    if isinstance(raw, dict) and len(raw) == 1:
        op, params = next(iter(raw.items()))
    elif isinstance(raw, str):
        op, params = raw, None
    else:
        raise _error(label, entry, "a cell must be an op name (skip) or a mapping with one op, "
                     "e.g. - narrow: {width: [0.5]}")
    if op not in _OPS:
        raise _error(label, entry, f"unknown op {op!r}; use one of {', '.join(_OPS)}")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise _error(label, f"{entry}.{op}", f"{params!r} is not a mapping of parameters; "
                     "write e.g. {width: [0.5]}, or nothing after the op")
    required, optional = _OPS[op]
    _refuse_unknown_keys(params, required + optional, label, f"{entry}.{op}")
    missing = [p for p in required if p not in params]
    if missing:
        raise _error(label, f"{entry}.{op}", f"missing {', '.join(missing)}; give each as a list, "
                     f"e.g. {missing[0]}: {_EXAMPLE_VALUES[missing[0]]}")
    at = f"{entry}.{op}"
    if op == "mb":
        expands = _values(params["expand"], _positive_number, label, f"{at}.expand", "write e.g. [3, 6]")
        kernels = _values(params["kernel"], _odd_kernel, label, f"{at}.kernel", "write e.g. [3, 5]")
        gates = _values(params.get("se", ["keep"]), _se_choice, label, f"{at}.se", "write e.g. [keep, off]")
        return [CellSpec("mb", expand=e, kernel=k, se=s, entry=entry)
                for e, k, s in itertools.product(expands, kernels, gates)]
    if op == "narrow":
        widths = _values(params["width"], _share, label, f"{at}.width", "write e.g. [0.5, 0.75]")
        return [CellSpec("narrow", width=w, entry=entry) for w in widths]
    return [CellSpec(op, entry=entry)]


def _values(raw: Any, check: Callable[[Any, str, str], Any], label: str, entry: str, fix: str) -> list:
    """A parameter's list, each value checked (and converted) by ``check``."""
    return [check(v, label, entry) for v in _non_empty_list(raw, label, entry, fix)]


def _positive_number(value: Any, label: str, entry: str) -> float:
    number = _number(value, label, entry, "a multiple of the block's input channels such as 3 or 6")
    if number <= 0:
        raise _error(label, entry, f"{value!r} is not above 0; the hidden width is a positive multiple of the "
                     "block's input channels, e.g. 3 or 6")
    return number


def _share(value: Any, label: str, entry: str) -> float:
    number = _number(value, label, entry, "a share of the block's internal width such as 0.5")
    if not 0 < number < 1:
        raise _error(label, entry, f"{value!r} is not between 0 and 1 (exclusive); it is the share of the "
                     "block's internal width kept, e.g. 0.5 or 0.75")
    return number


def _number(value: Any, label: str, entry: str, example: str) -> float:
    # YAML reads true/false as booleans, which Python would otherwise take as 1 and 0.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _error(label, entry, f"{value!r} is not a number; write {example}")
    return float(value)


def _odd_kernel(value: Any, label: str, entry: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(label, entry, f"{value!r} is not a whole number; a depthwise kernel is an odd size, "
                     "use 3, 5 or 7")
    if value < 1 or value % 2 == 0:
        raise _error(label, entry, f"{value}: a depthwise kernel must be odd and at least 1 to keep the block's "
                     "height and width; use 3, 5 or 7")
    return value


def _se_choice(value: Any, label: str, entry: str) -> bool:
    # YAML 1.1 reads an unquoted off as false, so false stands for off here.
    if value is False or value == "off":
        return False
    if value == "keep":
        return True
    raise _error(label, entry, f"{value!r} is not a gate choice; use keep, off or both: [keep, off]")


def _check_version(version: Any, label: str) -> None:
    if isinstance(version, bool) or version != 1:
        raise _error(label, "version", f"{version!r} is not a known format version; "
                     "write version: 1 or leave it out")


def _required_string(document: dict, key: str, label: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _error(label, key, f"missing or not text ({value!r}); give the space a {key}, "
                     f"e.g. {key}: my_space")
    return value.strip()


def _non_empty_list(value: Any, label: str, entry: str, fix: str) -> list:
    if not isinstance(value, list) or not value:
        what = "empty" if value == [] else "missing" if value is None else f"{value!r} is not a list"
        raise _error(label, entry, f"{what}; a non-empty list is needed: {fix}")
    return value


def _refuse_unknown_keys(mapping: dict, known: tuple[str, ...], label: str, entry: str) -> None:
    unknown = [k for k in mapping if k not in known]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        allowed = f"use only {', '.join(known)}" if known else "this op takes no parameters, remove them"
        raise _error(label, entry, f"unknown key {names}; {allowed}")


def _error(label: str, entry: str, text: str) -> SearchSpaceError:
    return SearchSpaceError(f"{label}: {entry}: {_one_line(text)}")


def _one_line(text: Any) -> str:
    """The CLI prints each error as one line: fold any line breaks (YAML's own messages have them)."""
    return " ".join(str(text).split())
