"""The search-space file format: the shipped files load and match real blocks; bad files are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torchvision
from reference_models import Residual
from torch import nn

from autocompress.core.search_space import (SHIPPED_SPACES, CellSpec, SearchSpaceError, load_search_space,
                                            resolve_search_space)
from autocompress.errors import AutocompressError

MB_NAMES = [f"mb e{e} k{k}{s}" for e in (1, 3, 6) for k in (3, 5, 7) for s in ("", " -se")]


@pytest.fixture(scope="module")
def mobilenet():
    return torchvision.models.mobilenet_v2(num_classes=10)


@pytest.fixture(scope="module")
def resnet():
    return torchvision.models.resnet18(num_classes=10)


def test_shipped_folder_holds_the_three_files():
    assert {"mobile.yaml", "resnet.yaml", "example_user.yaml"} <= {p.name for p in SHIPPED_SPACES.glob("*.yaml")}


def test_mobile_expands_to_every_mb_combination_plus_skip():
    space = load_search_space(SHIPPED_SPACES / "mobile.yaml")
    assert space.name == "mobile"
    [pattern] = space.patterns
    assert pattern.entry == "blocks[0]"
    assert pattern.class_names == ("torchvision.models.mobilenetv2.InvertedResidual",
                                   "torchvision.models.mobilenetv3.InvertedResidual",
                                   "torchvision.models.efficientnet.MBConv",
                                   "torchvision.models.mnasnet._InvertedResidual")
    assert len(pattern.cells) == 19
    assert [c.name for c in pattern.cells] == MB_NAMES + ["skip"]
    first = pattern.cells[0]
    assert (first.op, first.expand, first.kernel, first.se, first.entry) == ("mb", 1.0, 3, True, "blocks[0].cells[0]")
    assert pattern.cells[-1].entry == "blocks[0].cells[1]"


def test_resnet_cells():
    space = load_search_space(SHIPPED_SPACES / "resnet.yaml")
    [pattern] = space.patterns
    assert pattern.classes == (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)
    assert [c.name for c in pattern.cells] == ["narrow 0.5", "dwsep", "skip"]
    assert pattern.cells[0] == CellSpec("narrow", width=0.5)


def test_cell_names():
    assert CellSpec("mb", expand=0.5, kernel=3).name == "mb e0.5 k3"
    assert CellSpec("mb", expand=3.0, kernel=5, se=False).name == "mb e3 k5 -se"
    assert CellSpec("narrow", width=0.75).name == "narrow 0.75"


def test_pattern_for_real_torchvision_blocks(mobilenet, resnet):
    mobile = load_search_space(SHIPPED_SPACES / "mobile.yaml")
    blocks = [m for m in mobilenet.modules() if isinstance(m, torchvision.models.mobilenetv2.InvertedResidual)]
    assert len(blocks) == 17
    assert all(mobile.pattern_for(b) is mobile.patterns[0] for b in blocks)
    assert mobile.pattern_for(mobilenet.features[0]) is None
    assert mobile.pattern_for(resnet.layer1[0]) is None
    resnet_space = load_search_space(SHIPPED_SPACES / "resnet.yaml")
    assert resnet_space.pattern_for(resnet.layer1[0]) is resnet_space.patterns[0]
    assert resnet_space.pattern_for(resnet.conv1) is None


def test_subclass_is_not_caught_by_its_parents_pattern():
    class MyBlock(torchvision.models.resnet.BasicBlock):
        pass

    space = load_search_space(SHIPPED_SPACES / "resnet.yaml")
    assert space.pattern_for(MyBlock(8, 8)) is None


def test_resolve_picks_by_family(mobilenet, resnet):
    assert resolve_search_space("auto", mobilenet).name == "mobile"
    assert resolve_search_space(None, resnet).name == "resnet"
    assert resolve_search_space("auto", nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())) is None
    assert resolve_search_space("none", mobilenet) is None
    assert resolve_search_space(str(SHIPPED_SPACES / "resnet.yaml"), mobilenet).name == "resnet"


def test_relative_names_fall_back_to_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_search_space("mobile.yaml").path == str(SHIPPED_SPACES / "mobile.yaml")
    assert load_search_space("search_spaces/resnet.yaml").path == str(SHIPPED_SPACES / "resnet.yaml")
    (tmp_path / "mobile.yaml").write_text("name: mine\nblocks:\n  - match: torch.nn.Conv2d\n    cells: [skip]\n")
    assert load_search_space("mobile.yaml").name == "mine"  # a file here wins over the shipped one


def test_to_dict_is_json():
    data = json.loads(json.dumps(load_search_space(SHIPPED_SPACES / "resnet.yaml").to_dict()))
    assert data["name"] == "resnet"
    assert data["patterns"] == [{"entry": "blocks[0]",
                                 "match": ["torchvision.models.resnet.BasicBlock",
                                           "torchvision.models.resnet.Bottleneck"],
                                 "cells": ["narrow 0.5", "dwsep", "skip"]}]


def test_example_user_file_with_a_class_that_exists(tmp_path):
    text = (SHIPPED_SPACES / "example_user.yaml").read_text()
    assert "autocompress.zoo.ConvBlock" in text
    copy = tmp_path / "example_user.yaml"
    copy.write_text(text.replace("autocompress.zoo.ConvBlock", "reference_models.Residual"))
    space = load_search_space(copy)
    [pattern] = space.patterns
    assert pattern.classes == (Residual,)
    assert [c.name for c in pattern.cells] == ["narrow 0.5", "narrow 0.75", "dwsep", "skip"]
    assert space.pattern_for(Residual(4)) is pattern


def test_nested_class_resolves(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("name: n\nblocks:\n  - match: test_search_space_file.Holder.Inner\n    cells: [skip]\n")
    assert load_search_space(path).patterns[0].classes == (Holder.Inner,)


class Holder:
    class Inner(nn.Module):
        pass


GOOD_BLOCK = "blocks:\n  - match: torchvision.models.resnet.BasicBlock\n    cells:\n"

BAD_FILES = {
    # name: (file text, the entry the message must name, a word of the fix)
    "syntax": ("name: x\nblocks:\n  - match: a\n   cells: : [\n", "line 4, column", "indentation"),
    "unknown_class": ("name: x\nblocks:\n  - match: foo.Bar\n    cells: [skip]\n", "blocks[0].match", "dotted path"),
    "missing_class": ("name: x\nblocks:\n  - match: torchvision.models.resnet.Nope\n    cells: [skip]\n",
                      "blocks[0].match", "dotted path"),
    "not_a_module": ("name: x\nblocks:\n  - match: torchvision.models.resnet.resnet18\n    cells: [skip]\n",
                     "blocks[0].match", "torch.nn.Module"),
    "unknown_op": ("name: x\n" + GOOD_BLOCK + "      - skip\n      - squeeze\n", "blocks[0].cells[1]", "use one of"),
    "even_kernel": ("name: x\n" + GOOD_BLOCK + "      - mb: {expand: [3], kernel: [3, 4]}\n",
                    "blocks[0].cells[0].mb.kernel", "use 3, 5 or 7"),
    "kernel_zero": ("name: x\n" + GOOD_BLOCK + "      - mb: {expand: [3], kernel: [0]}\n",
                    "blocks[0].cells[0].mb.kernel", "use 3, 5 or 7"),
    "negative_expand": ("name: x\n" + GOOD_BLOCK + "      - skip\n      - mb: {expand: [-1], kernel: [3]}\n",
                        "blocks[0].cells[1].mb.expand", "e.g. 3 or 6"),
    "boolean_expand": ("name: x\n" + GOOD_BLOCK + "      - mb: {expand: [true], kernel: [3]}\n",
                       "blocks[0].cells[0].mb.expand", "write"),
    "wide_narrow": ("name: x\n" + GOOD_BLOCK + "      - narrow: {width: [1.5]}\n",
                    "blocks[0].cells[0].narrow.width", "e.g. 0.5"),
    "empty_cells": ("name: x\nblocks:\n  - match: torchvision.models.resnet.BasicBlock\n    cells: []\n",
                    "blocks[0].cells", "non-empty list"),
    "unknown_top_key": ("name: x\nversoin: 1\n" + GOOD_BLOCK + "      - skip\n", "top level", "use only"),
    "duplicate_cell": ("name: x\n" + GOOD_BLOCK + "      - skip\n      - narrow: {width: [0.5]}\n      - skip\n",
                       "blocks[0].cells[2]", "remove"),
    "duplicate_value": ("name: x\n" + GOOD_BLOCK + "      - mb: {expand: [3, 3.0], kernel: [3]}\n",
                        "blocks[0].cells[0]", "remove"),
    "unknown_parameter": ("name: x\n" + GOOD_BLOCK + "      - mb: {expand: [3], kernel: [3], stride: [2]}\n",
                          "blocks[0].cells[0].mb", "use only"),
    "parameter_on_skip": ("name: x\n" + GOOD_BLOCK + "      - skip: {p: 1}\n", "blocks[0].cells[0].skip", "remove"),
    "missing_parameter": ("name: x\n" + GOOD_BLOCK + "      - mb: {expand: [3]}\n", "blocks[0].cells[0].mb", "kernel"),
    "scalar_not_list": ("name: x\n" + GOOD_BLOCK + "      - narrow: {width: 0.5}\n",
                        "blocks[0].cells[0].narrow.width", "e.g. [0.5, 0.75]"),
    "bad_gate": ("name: x\n" + GOOD_BLOCK + "      - mb: {expand: [3], kernel: [3], se: [maybe]}\n",
                 "blocks[0].cells[0].mb.se", "keep, off"),
    "bad_version": ("version: 2\nname: x\n" + GOOD_BLOCK + "      - skip\n", "version", "version: 1"),
    "no_name": (GOOD_BLOCK + "      - skip\n", "name", "name: my_space"),
    "not_a_mapping": ("- skip\n", "top level", "copy the layout"),
    "empty_file": ("", "top level", "copy the layout"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_a_one_line_error(tmp_path, case):
    text, entry, fix = BAD_FILES[case]
    path = tmp_path / f"bad_{case}.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError) as caught:
        load_search_space(path)
    message = str(caught.value)
    assert isinstance(caught.value, AutocompressError)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert entry in message
    assert fix in message


def test_messages_say_what_is_wrong(tmp_path):
    cases = {"unknown_class": "no class 'foo.Bar' (No module named 'foo')",
             "even_kernel": "4: a depthwise kernel must be odd and at least 1 to keep the block's height and width",
             "boolean_expand": "True is not a number",
             "syntax": "YAML syntax error (",
             "duplicate_cell": "cell 'skip' is offered twice (also by blocks[0].cells[0])",
             "duplicate_value": "cell 'mb e3 k3' is offered twice from its own lists; remove the repeated value",
             "missing_parameter": "missing kernel; give each as a list, e.g. kernel: [3, 5]"}
    for case, words in cases.items():
        path = tmp_path / f"{case}.yaml"
        path.write_text(BAD_FILES[case][0])
        with pytest.raises(SearchSpaceError) as caught:
            load_search_space(path)
        assert words in str(caught.value), str(caught.value)


def test_gate_off_is_read_whether_quoted_or_not(tmp_path):
    # YAML 1.1 reads a bare off as false; both spellings mean the gate is removed.
    path = tmp_path / "gates.yaml"
    path.write_text("name: g\n" + GOOD_BLOCK + "      - mb: {expand: [3], kernel: [3], se: [keep, 'off']}\n")
    assert [c.se for c in load_search_space(path).patterns[0].cells] == [True, False]


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SearchSpaceError) as caught:
        load_search_space("x.yaml")
    message = str(caught.value)
    assert message.startswith("space file 'x.yaml' does not exist; pass a file from search_spaces/ (")
    assert "mobile.yaml" in message and "resnet.yaml" in message and message.endswith(" or none")
    assert "\n" not in message
    with pytest.raises(SearchSpaceError, match="does not exist"):
        resolve_search_space("x.yaml", nn.Identity())


def test_folder_is_refused(tmp_path):
    with pytest.raises(SearchSpaceError, match="is a folder"):
        load_search_space(tmp_path)


def test_example_user_file_loads_once_the_zoo_has_its_class():
    import autocompress.zoo as zoo

    if not hasattr(zoo, "ConvBlock"):
        pytest.skip("autocompress.zoo.ConvBlock is not there yet")
    space = load_search_space(Path(SHIPPED_SPACES / "example_user.yaml"))
    assert [c.name for c in space.patterns[0].cells] == ["narrow 0.5", "narrow 0.75", "dwsep", "skip"]
