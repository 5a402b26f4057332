"""NAS cells: built from their blocks with inherited weights, one joint space with the other
techniques, both accounting paths and both kernel lists equal, deterministic, and exportable."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

from autocompress.core.accounting import footprint_of_candidate, footprint_of_model
from autocompress.core.analysis import analyze
from autocompress.core.candidate import Candidate, candidate_summary
from autocompress.core.cells import build_cell
from autocompress.core.policies import warm_start_policies
from autocompress.core.search_space import CellSpec, load_search_space
from autocompress.core.space import Space, SpaceOptions
from autocompress.hardware.kernels import kernels_of_candidate, kernels_of_model
from autocompress.techniques import apply_candidate
from autocompress.zoo import small_resnet

MOBILE = load_search_space("search_spaces/mobile.yaml")
USER = load_search_space("search_spaces/example_user.yaml")
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class TinyMobile(nn.Module):
    """A stem and three inverted-residual blocks of torchvision's MobileNet-V2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.features = nn.Sequential(InvertedResidual(16, 24, 2, 6), InvertedResidual(24, 24, 1, 6),
                                      InvertedResidual(24, 32, 1, 1))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(self.stem(x)).mean((2, 3)))


def _randomised(model: nn.Module) -> nn.Module:
    """Running statistics away from 0/1, so BatchNorm is not the identity and cells must get it right."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def user():
    model = _randomised(small_resnet())
    return model, analyze(model, X, space=USER)


@pytest.fixture(scope="module")
def mobile():
    model = _randomised(TinyMobile())
    return model, analyze(model, X, space=MOBILE)


def test_the_analysis_lists_each_matched_block_with_its_cells(user, mobile):
    _, analysis = user
    assert [c.block for c in analysis.cells] == [f"blocks.{i}" for i in range(6)]
    first = analysis.cells[0]
    assert first.names == ("original", "narrow 0.75", "narrow 0.5", "dwsep", "skip")  # costliest first, skip last
    assert [o.macs for o in first.options[:-1]] == sorted((o.macs for o in first.options[:-1]), reverse=True)
    assert "skip" not in analysis.cells[2].names  # a strided block is not residual
    assert any("blocks.2: cell skip left out" in n for n in analysis.notes)
    _, analysis = mobile
    by_block = {c.block: c.names for c in analysis.cells}
    assert by_block["features.2"] == ("original",) + ("mb e1 k7", "mb e1 k5")  # no expansion layer to narrow
    assert set(by_block["features.1"]) == {"original", "mb e6 k7", "mb e6 k5", "mb e3 k7", "mb e3 k5", "mb e3 k3",
                                           "mb e1 k7", "mb e1 k5", "mb e1 k3", "skip"}


def test_cells_inherit_weights(mobile, user):
    model, analysis = mobile
    block = model.features[1]
    x = torch.randn(2, 24, 16, 16)
    wider_kernel = build_cell(block, CellSpec("mb", expand=6, kernel=7), x.shape)
    with torch.no_grad():  # a zero-padded kernel computes what the block computes
        assert torch.allclose(wider_kernel(x), block(x), atol=1e-5)
    exact = {o.name for o in analysis.cells[1].options if o.exact}
    assert exact == {"mb e6 k5", "mb e6 k7"}
    narrower = build_cell(block, CellSpec("mb", expand=3, kernel=3), x.shape)
    assert narrower.conv[1][0].in_channels == 72 and narrower.conv[0][0].out_channels == 72
    # the hidden channels kept are the strongest of the block's (as pruning ranks them), with their weights
    kept = narrower.conv[0][0].weight.flatten(1)
    original = block.conv[0][0].weight.flatten(1)
    assert all(any(torch.equal(row, o) for o in original) for row in kept)


def test_dwsep_starts_from_the_best_rank1_approximation():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():  # rank 1 per input channel: the separable form is exact
        conv.weight.copy_(torch.randn(6, 4, 1, 1) * torch.randn(1, 4, 3, 3))
    block = nn.Module()
    block.conv1, block.bn1, block.conv2, block.bn2 = conv, nn.BatchNorm2d(6).eval(), nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4).eval()
    block.forward = lambda x: torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + x)
    cell = build_cell(block, CellSpec("dwsep"), (1, 4, 8, 8))
    assert [n for n, _ in cell.named_children()] == ["conv1_dw", "conv1", "bn1", "conv2", "bn2"]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(cell(x), block(x), atol=1e-4)


@pytest.mark.parametrize("fixture", ["user", "mobile"])
def test_joint_candidates_agree_between_accounting_paths_and_kernel_lists(fixture, request):
    model, analysis = request.getfixturevalue(fixture)
    space = Space(analysis)
    rng = random.Random(3)
    chosen = set()
    for _ in range(10):
        candidate = space.sample(rng, density=0.6)
        chosen |= set(candidate.cell.values())
        built = apply_candidate(model, candidate, analysis, X)
        assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, X), candidate
        assert kernels_of_candidate(analysis, candidate) == kernels_of_model(built, X), candidate
    assert len(chosen - {"original"}) >= 3  # the draws did exercise cells


def test_pruning_bits_and_ranks_apply_to_the_chosen_cell(user):
    model, analysis = user
    candidate = Candidate(cell={"blocks.1": "dwsep", "blocks.3": "narrow 0.5"},
                          prune={"blocks.1.conv1": 0.5, "blocks.3.conv1": 0.5}, bits={"blocks.1.conv2": 8},
                          rank={"blocks.4.conv1": 0.5}, channel_multiple=8)
    Space(analysis).validate(candidate)
    built = apply_candidate(model, candidate, analysis, X)
    kernels = {k.layer: k for k in kernels_of_model(built, X)}
    assert kernels["blocks.1.conv1"].cout == 16 and kernels["blocks.1.conv2_dw"].cin == 16
    assert kernels["blocks.3.conv1"].cout == 16  # half of the narrow cell's 32, not of the block's 64
    assert kernels["blocks.1.conv2"].bits == 8 and kernels["blocks.1.conv2_dw"].bits == 8  # the dw follows its 1x1
    assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, X)


def test_the_same_candidate_builds_the_same_weights(user):
    model, analysis = user
    candidate = Candidate(cell={"blocks.0": "dwsep", "blocks.5": "narrow 0.75"}, prune={"blocks.5.conv1": 0.25})
    first = apply_candidate(model, candidate, analysis, X).state_dict()
    second = apply_candidate(model, candidate, analysis, X).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_distilled_cell_weights_are_used_when_given(user):
    model, analysis = user
    candidate = Candidate(cell={"blocks.0": "dwsep"})
    inherited = apply_candidate(model, candidate, analysis, X)
    learned = {k: v + 0.01 for k, v in inherited.blocks[0].state_dict().items() if v.is_floating_point()}
    learned |= {k: v for k, v in inherited.blocks[0].state_dict().items() if not v.is_floating_point()}
    distilled = apply_candidate(model, candidate, analysis, X, cell_weights={"blocks.0/dwsep": learned})
    assert torch.equal(distilled.blocks[0].conv1.weight, learned["conv1.weight"])


def test_old_candidates_load_and_skip_moves_into_the_cell_choice(user):
    _, analysis = user
    old = Candidate.from_json('{"prune": {}, "bits": {}, "rank": {}, "skip": {"blocks.1": true}, "kernel": {}, '
                              '"channel_multiple": 8}')
    assert old.cell == {}
    space = Space(analysis)
    names = {v.name for v in space.variables}
    assert "cell/blocks.1" in names and "skip/blocks.1" not in names  # one decision, not two
    off = Space(analysis, SpaceOptions(cells=False))
    assert "skip/blocks.1" in {v.name for v in off.variables} and not any(v.kind == "cell" for v in off.variables)


def test_warm_starts_and_summaries_name_the_cells(user):
    _, analysis = user
    space = Space(analysis)
    policies = warm_start_policies(space)
    cheapest = Candidate.from_dict({"cell": {k.split("/", 1)[1]: v for k, v in policies["cheapest-cells"].items()
                                             if k.startswith("cell/")}})
    assert set(cheapest.cell.values()) == {"dwsep"}
    assert "blocks.0: dwsep" in candidate_summary(cheapest.to_dict())


def test_cells_export_to_onnx_and_run_as_in_pytorch(user, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from autocompress.hardware.onnx_export import export_onnx

    model, analysis = user
    candidate = Candidate(cell={"blocks.0": "dwsep", "blocks.3": "narrow 0.5", "blocks.5": "skip"},
                          bits={"blocks.0.conv1": 8, "blocks.3.conv2": 8})
    built = apply_candidate(model, candidate, analysis, X)
    path = tmp_path / "cells.onnx"
    calibration = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))]
    export_onnx(built, X, path, calibration=calibration)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = calibration[0]
    ours = built(batch).argmax(1)
    theirs = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]).argmax(1)
    assert (ours == theirs).float().mean() >= 0.75


def test_a_cell_that_changes_its_blocks_output_shape_is_refused_naming_file_and_entry(monkeypatch):
    from autocompress.core import cell_choices
    from autocompress.core.cell_choices import CellShapeError

    def halves_the_channels(block, spec, input_shape):  # what a wrong cell builder would make
        return nn.Conv2d(input_shape[1], input_shape[1] // 2, 1)

    monkeypatch.setattr(cell_choices, "build_cell", halves_the_channels)
    with pytest.raises(CellShapeError) as caught:
        analyze(_randomised(small_resnet()), X, space=USER)
    message = str(caught.value)
    assert message.startswith("search_spaces/example_user.yaml: blocks[0].cells[0] cell narrow 0.5 turns block blocks.0")
    assert "a cell must keep its block's output shape" in message and "\n" not in message
