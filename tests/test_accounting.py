import random

import pytest
import torch

from autocompress import (
    Candidate,
    Space,
    analyze,
    apply_candidate,
    footprint_of_candidate,
    footprint_of_model,
    resolve_model,
)
from autocompress.core.accounting import weight_bytes
from autocompress.core.technique import LayerShape, ModelShapes

MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
          "autocompress.zoo:transformer_classifier", "shufflenet_v2_x0_5"]


@pytest.mark.parametrize("spec", MODELS)
def test_candidate_and_model_accounting_agree(spec):
    model = resolve_model(spec)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example)
    space = Space(analysis)
    uncompressed = footprint_of_candidate(analysis, space.default())
    assert uncompressed == footprint_of_model(model, example)
    assert uncompressed.params == sum(p.numel() for p in model.parameters())
    assert uncompressed.bytes == 4 * uncompressed.params
    rng = random.Random(spec)
    for density in (1.0, 0.3, 1.0, 0.3, 1.0, 0.6):
        candidate = space.sample(rng, density=density)
        built = apply_candidate(model, candidate, analysis, example)
        from_model = footprint_of_model(built, example)
        assert footprint_of_candidate(analysis, candidate) == from_model, candidate.to_json()
        assert from_model.params == sum(p.numel() for p in built.parameters())


def test_macs_of_a_known_layer_stack(tiny):
    example = torch.randn(1, 3, 16, 16)
    analysis = analyze(tiny, example)
    stem = analysis.layer("stem.0")
    assert stem.macs == 16 * 3 * 9 * 16 * 16
    dw = analysis.layer("dw.0")
    assert dw.depthwise and dw.macs == 32 * 1 * 25 * 8 * 8
    # Halving the stem group (16 -> 8 channels, carried through block1's residual add) cuts the
    # stem's outputs, block1.conv1's inputs, block1.conv2's outputs and down.0's inputs.
    half = footprint_of_candidate(analysis, Candidate(prune={"stem.0": 0.5}, channel_multiple=1))
    full = footprint_of_candidate(analysis, Candidate())
    saved = 8 * 3 * 9 * 256 + 16 * 8 * 9 * 256 + 8 * 16 * 9 * 256 + 32 * 8 * 9 * 64
    assert full.macs - half.macs == saved
    bn_and_weights = 8 * 3 * 9 + 2 * 8 + 16 * 8 * 9 + 8 * 16 * 9 + 2 * 8 + 32 * 8 * 9
    assert full.params - half.params == bn_and_weights


def test_bytes_follow_bit_widths():
    assert weight_bytes(1000, 10, 32) == 4000
    assert weight_bytes(1000, 10, 16) == 2000
    assert weight_bytes(1000, 10, 8) == 1000 + 40
    assert weight_bytes(1001, 10, 4) == 501 + 40


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5"])
def test_joint_candidates_with_cells_agree_on_every_family(spec):
    """Every family of the shipped spaces: cells (expansions, kernels, gates removed, separable
    convs, skips) with pruning, bits and ranks on top, accounted and built alike."""
    from autocompress.core.search_space import resolve_search_space
    from autocompress.hardware.kernels import kernels_of_candidate, kernels_of_model

    model = resolve_model(spec)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example, space=resolve_search_space("auto", model))
    assert len(analysis.cells) >= 6
    space = Space(analysis)
    rng = random.Random(f"cells-{spec}")
    chosen = set()
    for density in (1.0, 0.5, 1.0, 0.5):
        candidate = space.sample(rng, density=density)
        chosen |= set(candidate.cell.values())
        built = apply_candidate(model, candidate, analysis, example)
        assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, example), candidate.to_json()
        assert kernels_of_candidate(analysis, candidate) == kernels_of_model(built, example), candidate.to_json()
    assert len(chosen - {"original"}) >= 3


def _shapes_of(names):
    from types import SimpleNamespace as Unit
    units = {n: Unit(name=n, in_channels=8, out_channels=8, groups=1, kernel_size=(3, 3)) for n in names}
    norms = {n + "_bn": Unit(name=n + "_bn", channels=8) for n in names}
    return ModelShapes(layers={n: LayerShape(8, 8, 1, (3, 3)) for n in names},
                       norm_channels={n + "_bn": 8 for n in names}, units=units, norms=norms)


def _cell(block, width):
    from types import SimpleNamespace as Unit
    layers = (Unit(name=f"{block}.new", in_channels=8, out_channels=width, groups=1, kernel_size=(1, 1)),)
    return block, layers, (Unit(name=f"{block}.new_bn", channels=width),), {f"{block}.new": "x"}


def test_swapping_many_blocks_at_once_is_swapping_them_one_after_the_other():
    """The predictor swaps all of a candidate's cells in one pass; it must leave what one swap
    after the other leaves: the same entries in the same order, the cell where its block's first
    entry stood; nested blocks fall back to one after the other."""
    names = ["stem", "a.0", "a.1", "b.0", "b.1.x", "head"]
    swaps = [_cell("a", 4), _cell("b.1", 2), _cell("missing", 6)]
    together, apart = _shapes_of(names), _shapes_of(names)
    together.replace_blocks(swaps)
    for swap in swaps:
        apart.replace_blocks([swap])
    assert list(together.units) == ["stem", "a.new", "b.0", "b.1.new", "head", "missing.new"] == list(apart.units)
    assert together.layers == apart.layers and together.norm_channels == apart.norm_channels
    assert together.layers["a.new"] == LayerShape(8, 4, 1, (1, 1)) and together.follows == apart.follows
    nested, one_by_one = _shapes_of(names), _shapes_of(names)
    nested.replace_blocks([_cell("b", 4), _cell("b.1", 2)])
    for swap in [_cell("b", 4), _cell("b.1", 2)]:
        one_by_one.replace_blocks([swap])
    assert list(nested.units) == list(one_by_one.units) == ["stem", "a.0", "a.1", "b.new", "head", "b.1.new"]
