"""Read a supernet space file (YAML): the elastic dimensions of a weight-sharing network.

A supernet file describes a network that does not exist yet: stages of inverted-residual blocks
whose depth, expansion ratio and depthwise kernel are elastic, in the spirit of Once-for-All's
``ofa_mbv3_d234_e346_k357``. ``space:PATH`` as a model name builds its largest subnet
(``core.elastic_mobile``), trains every subnet at once by weight sharing, and lets the search pick
a subnet jointly with its pruning, bit widths and ranks. Everything is checked here, before any
training, with one ``SearchSpaceError`` line naming the file, the entry and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .nb201_file import Nb201Spec, read_nb201
from .search_space import (SearchSpaceError, _error, _find_file, _non_empty_list, _number, _odd_kernel,
                           _positive_number, _read_yaml, _refuse_unknown_keys, _required_string)

__all__ = ["MAX_STAGE_DEPTH", "SPACE_PREFIX", "SearchSpaceError", "StageSpec", "SupernetFile", "is_space_spec", "load_supernet_file"]

SPACE_PREFIX = "space:"
MAX_STAGE_DEPTH = 8  # blocks in one stage: deeper stages add latency a 32-pixel map cannot use
_TOP_LEVEL_KEYS = ("version", "name", "description", "supernet")
_SUPERNET_KEYS = ("family", "stem", "stem_stride", "width_multiplier", "expand", "kernel", "stages", "head")
_STAGE_KEYS = ("channels", "depth", "stride")
_FAMILIES = ("elastic_mobile", Nb201Spec.family)
_EXAMPLE = "search_spaces/mobile_supernet.yaml"


@dataclass(frozen=True)
class StageSpec:
    """Blocks of one width: the first may change width and stride, the rest are residual."""

    channels: int
    depths: tuple[int, ...]  # how many blocks the stage may keep, ascending
    stride: int

    @property
    def max_depth(self) -> int:
        return self.depths[-1]


@dataclass(frozen=True)
class SupernetFile:
    path: str
    name: str
    description: str
    stem: int
    width_multiplier: float
    head: int
    expands: tuple[float, ...]  # every block's expansion ratios (one set: the cells match blocks by type)
    kernels: tuple[int, ...]
    stages: tuple[StageSpec, ...]
    # 2: the stem halves the map, as MobileNet-V2's and Once-for-All's do; every block then runs on a
    # quarter of the pixels, which is what reaches the latencies of small hand-designed networks.
    stem_stride: int = 1

    family = "elastic_mobile"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "family": self.family, "stem": self.stem,
                "stem_stride": self.stem_stride, "width_multiplier": self.width_multiplier, "head": self.head,
                "expand": list(self.expands),
                "kernel": list(self.kernels),
                "stages": [{"channels": s.channels, "depth": list(s.depths), "stride": s.stride} for s in self.stages]}


def is_space_spec(model_spec: str) -> bool:
    return isinstance(model_spec, str) and model_spec.strip().startswith(SPACE_PREFIX)


def load_supernet_file(path: str | os.PathLike) -> SupernetFile | Nb201Spec:
    """Read and check one supernet file; every problem raises a one-line SearchSpaceError."""
    found = _find_file(Path(path))
    label = str(found)
    document = _read_yaml(found, label)
    if not isinstance(document, dict) or "supernet" not in document:
        raise _error(label, "top level", "a supernet file needs a supernet: mapping (family, stages, ...); "
                     f"copy the layout of {_EXAMPLE}, or pass a cell space with --space instead")
    _refuse_unknown_keys(document, _TOP_LEVEL_KEYS, label, "top level")
    if document.get("version", 1) != 1 or isinstance(document.get("version", 1), bool):
        raise _error(label, "version", f"{document.get('version')!r} is not a known format version; write version: 1")
    name = _required_string(document, "name", label)
    description = document.get("description", "")
    if not isinstance(description, str):
        raise _error(label, "description", f"{description!r} is not text; write the description as a string")
    net = document["supernet"]
    if not isinstance(net, dict):
        raise _error(label, "supernet", f"{net!r} is not a mapping; give family, stem, expand, kernel, stages, head")
    family = net.get("family", "elastic_mobile")
    if family not in _FAMILIES:
        raise _error(label, "supernet.family", f"unknown family {family!r}; use one of {', '.join(_FAMILIES)}")
    if family == Nb201Spec.family:
        return read_nb201(net, label, name, description.strip())
    _refuse_unknown_keys(net, _SUPERNET_KEYS, label, "supernet")
    expands = _choices(net.get("expand"), _positive_number, label, "supernet.expand", "[3, 4, 6]")
    kernels = _choices(net.get("kernel"), _odd_kernel, label, "supernet.kernel", "[3, 5, 7]")
    raw_stages = _non_empty_list(net.get("stages"), label, "supernet.stages",
                                 "list the stages, e.g. - {channels: 24, depth: [2, 3, 4], stride: 2}")
    stages = tuple(_stage(raw, label, f"supernet.stages[{i}]") for i, raw in enumerate(raw_stages))
    multiplier = _number(net.get("width_multiplier", 1.0), label, "supernet.width_multiplier", "a factor such as 1.0")
    if multiplier <= 0:
        raise _error(label, "supernet.width_multiplier", f"{multiplier:g} is not above 0; write e.g. 1.0 or 0.75")
    stem_stride = _stride(net.get("stem_stride", 1), label, "supernet.stem_stride", "the stem")
    return SupernetFile(path=label, name=name, description=description.strip(),
                        stem=_channels(net.get("stem", 16), label, "supernet.stem"), stem_stride=stem_stride,
                        width_multiplier=multiplier,
                        head=_channels(net.get("head", 256), label, "supernet.head"), expands=expands, kernels=kernels,
                        stages=stages)


def _stage(raw: Any, label: str, entry: str) -> StageSpec:
    if not isinstance(raw, dict):
        raise _error(label, entry, "a stage must be a mapping, e.g. {channels: 24, depth: [2, 3, 4], stride: 2}")
    _refuse_unknown_keys(raw, _STAGE_KEYS, label, entry)
    if "channels" not in raw or "depth" not in raw:
        raise _error(label, entry, "a stage needs channels and depth, e.g. {channels: 24, depth: [2, 3, 4]}")
    depths = _choices(raw["depth"], _depth, label, f"{entry}.depth", "[2, 3, 4]")
    stride = _stride(raw.get("stride", 1), label, f"{entry}.stride", "a stage")
    return StageSpec(channels=_channels(raw["channels"], label, f"{entry}.channels"), depths=depths, stride=stride)


def _stride(value: Any, label: str, entry: str, what: str) -> int:
    if value not in (1, 2) or isinstance(value, bool):
        raise _error(label, entry, f"{value!r} is not 1 or 2; {what} keeps (1) or halves (2) the map")
    return value


def _choices(raw: Any, check, label: str, entry: str, example: str) -> tuple:
    values = _non_empty_list(raw, label, entry, f"write e.g. {example}")
    return tuple(sorted({check(v, label, entry) for v in values}))


def _depth(value: Any, label: str, entry: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(label, entry, f"{value!r} is not a whole number of blocks; write e.g. [2, 3, 4]")
    if not 1 <= value <= MAX_STAGE_DEPTH:
        raise _error(label, entry, f"depth {value} is outside what a stage allows (1 to {MAX_STAGE_DEPTH} blocks: "
                     "its first block changes the width and cannot be skipped); use depths from 1 to "
                     f"{MAX_STAGE_DEPTH}")
    return value


def _channels(value: Any, label: str, entry: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _error(label, entry, f"{value!r} is not a positive whole number of channels; write e.g. 24")
    return value

