"""Unstructured magnitude sparsity, the technique added through the seam: Space, Candidate JSON,
exact accounting on both paths, kernels (dense on ORT CPU), fine-tuning, export and inspect."""

from __future__ import annotations

import io
import json
import random
import zipfile

import onnx
import pytest
import torch
from onnx import numpy_helper

from autocompress import (Candidate, Space, SpaceOptions, analyze, apply_candidate, calibration_batches, export_onnx,
                          footprint_of_candidate, footprint_of_model, resolve_model)
from autocompress.cli.main import main
from autocompress.core.accounting import weight_bytes, zeroed_count
from autocompress.errors import InvalidCandidateError
from autocompress.hardware.kernels import kernels_of_candidate, kernels_of_model
from autocompress.techniques.sparsity import MASK
from autocompress.train.finetune import DistillationConfig, TeacherOutputs, distill

RATIOS = (0.0, 0.5, 0.75, 0.9)


def test_sparse_storage_counts_non_zeros_and_the_smaller_of_index_and_bitmask():
    # 1000 fp32 weights, 900 zero: 100 values (400 B) + a bitmask of 125 B beats a 2-byte index (200 B)
    assert weight_bytes(1000, 10, 32, zeros=900) == 400 + 125
    # int8, half zero: 500 values + 10 scales + the bitmask
    assert weight_bytes(1000, 10, 8, zeros=500) == 500 + 40 + 125
    # 100,000 weights at 99% zeros: 1,000 values; a 3-byte index (3,000 B) beats the bitmask (12,500 B)
    assert weight_bytes(100_000, 10, 32, zeros=99_000) == 4 * 1000 + 3 * 1000
    # few zeros: dense storage is smaller, and is what is counted
    assert weight_bytes(1000, 10, 32, zeros=10) == weight_bytes(1000, 10, 32) == 4000
    assert zeroed_count(1000, 0.75) == 750 and zeroed_count(7, 0.5) == 4


def test_sparsity_is_off_by_default_and_one_variable_per_layer_when_asked(tiny):
    example = torch.randn(1, 3, 16, 16)
    analysis = analyze(tiny, example)
    assert not [v for v in Space(analysis).variables if v.kind == "sparsity"]
    space = Space(analysis, SpaceOptions(sparsity_ratios=RATIOS))
    sparse_vars = [v for v in space.variables if v.kind == "sparsity"]
    assert [v.unit for v in sparse_vars] == [u.name for u in analysis.layers]
    assert all(v.choices == RATIOS for v in sparse_vars)
    # the old variables keep their order in front: seeded draws of old spaces reproduce
    assert [v.name for v in space.variables[:len(Space(analysis).variables)]] == \
        [v.name for v in Space(analysis).variables]
    with pytest.raises(ValueError, match="sparsity_ratios"):
        SpaceOptions(sparsity_ratios=(0.5, 0.9))


def test_candidate_json_keeps_its_old_shape_and_round_trips_sparsity():
    old = {"prune": {"a": 0.5}, "bits": {}, "rank": {}, "skip": {}, "kernel": {}, "channel_multiple": 8}
    candidate = Candidate.from_dict(old)
    assert candidate.to_dict() == old  # no "sparsity" key where none was decided
    assert candidate.to_json() == json.dumps(old, sort_keys=True)
    sparse = candidate.with_decision("sparsity", "conv", 0.75)
    assert Candidate.from_json(sparse.to_json()) == sparse and sparse.sparsity == {"conv": 0.75}
    assert sparse.prune == {"a": 0.5}


@pytest.mark.parametrize("spec", ["resnet18", "mobilenet_v2", "autocompress.zoo:transformer_classifier"])
def test_accounting_paths_agree_exactly_on_random_sparse_candidates(spec):
    model = resolve_model(spec)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example)
    space = Space(analysis, SpaceOptions(sparsity_ratios=RATIOS))
    rng = random.Random(f"sparse-{spec}")
    used = 0
    for density in (1.0, 0.4, 1.0, 0.4):
        candidate = space.sample(rng, density=density)
        used += sum(1 for r in candidate.sparsity.values() if r > 0)
        built = apply_candidate(model, candidate, analysis, example)
        assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, example), candidate.to_json()
    assert used > 0


def test_sparsity_saves_bytes_but_no_kernel_changes(tiny):
    example = torch.randn(1, 3, 16, 16)
    analysis = analyze(tiny, example)
    dense = Candidate(bits={"stem.0": 8}, channel_multiple=1)
    sparse = dense.replace(sparsity={u.name: 0.9 for u in analysis.layers})
    before, after = footprint_of_candidate(analysis, dense), footprint_of_candidate(analysis, sparse)
    assert after.bytes < 0.5 * before.bytes
    assert (after.params, after.macs) == (before.params, before.macs)
    # ORT CPU runs sparse weights dense: the kernels the predictor prices are the same
    assert kernels_of_candidate(analysis, sparse) == kernels_of_candidate(analysis, dense)
    built = apply_candidate(tiny, sparse, analysis, example)
    assert kernels_of_model(built, example) == kernels_of_candidate(analysis, sparse)


def test_zeros_survive_fine_tuning_and_quantization(digits, example_input):
    model = resolve_model("reference_models:tiny_resnet", num_classes=10)
    analysis = analyze(model, example_input)
    layers = [u.name for u in analysis.layers]
    candidate = Candidate(sparsity={name: 0.75 for name in layers}, bits={layers[0]: 8}, rank={},
                          channel_multiple=1)
    built = apply_candidate(model, candidate, analysis, example_input)
    distill(built, digits.train, digits.val, TeacherOutputs(model, digits.train, cache=True),
            config=DistillationConfig(steps=5),
            calibration=calibration_batches(digits.train))
    for module in built.modules():
        if hasattr(module, MASK):
            weight, mask = module.weight.detach(), getattr(module, MASK)
            assert torch.all(weight[mask == 0] == 0)
            assert int((mask == 0).sum()) == zeroed_count(weight.numel(), 0.75)
    assert footprint_of_model(built, example_input) == footprint_of_candidate(analysis, candidate)


def test_the_exported_onnx_file_holds_the_zeros_and_zips_smaller(tiny, tmp_path):
    example = torch.randn(1, 3, 16, 16)
    analysis = analyze(tiny, example)
    layers = [u.name for u in analysis.layers]
    dense_path = export_onnx(apply_candidate(tiny, Candidate(), analysis, example), example, tmp_path / "d.onnx").path
    sparse = Candidate(sparsity={name: 0.9 for name in layers})
    result = export_onnx(apply_candidate(tiny, sparse, analysis, example), example, tmp_path / "s.onnx")
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(result.path)).graph.initializer if t.dims and
               len(t.dims) == 4]
    zero_share = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zero_share > 0.85  # BatchNorm folding keeps zeros at zero

    def zipped(path) -> int:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(path, path.name)
        return buffer.getbuffer().nbytes

    assert result.zipped_bytes == zipped(result.path)
    assert result.zipped_bytes < 0.5 * zipped(dense_path)
    assert result.file_bytes == pytest.approx(dense_path.stat().st_size, rel=0.05)  # stored dense in ONNX


def test_inspect_lists_sparsity_with_its_latency_note(capsys):
    assert main(["inspect", "resnet18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    techniques = {t["kind"]: t for t in data["techniques"]}
    assert set(techniques) == {"prune", "bits", "rank", "skip", "kernel", "sparsity", "cell", "heads"}
    assert techniques["sparsity"]["enabled"] is False and techniques["sparsity"]["option"] == "sparsity_ratios"
    assert "dense" in techniques["sparsity"]["latency"]
    assert main(["inspect", "resnet18", "--json", "--sparsity-ratios", "0,0.5,0.9"]) == 0
    data = json.loads(capsys.readouterr().out)
    layer = {(u["kind"], u["name"]): u for u in data["units"]}["layer", "layer1.0.conv1"]
    assert any(t.startswith("sparsity {0.0,0.5,0.9}") and "dense" in t for t in layer["techniques"])
    assert {t["kind"]: t for t in data["techniques"]}["sparsity"]["variables"] == 21


def test_a_sparse_candidate_on_a_space_without_sparsity_names_the_option(tiny):
    analysis = analyze(tiny, torch.randn(1, 3, 16, 16))
    with pytest.raises(InvalidCandidateError, match="sparsity_ratios"):
        Space(analysis).validate(Candidate(sparsity={"stem.0": 0.5}))


def test_bad_sparsity_flag_is_one_line(capsys):
    assert main(["inspect", "resnet18", "--sparsity-ratios", "0,2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sparsity-ratios '0,2'" in err[0]


def test_the_smallest_weights_are_the_ones_zeroed():
    from autocompress.techniques.sparsity import sparsify

    torch.manual_seed(0)
    layer = torch.nn.Conv2d(8, 16, 3)
    original = layer.weight.detach().abs().clone()
    sparsify(layer, 0.5)
    mask = getattr(layer, MASK)
    assert int((layer.weight == 0).sum()) == zeroed_count(layer.weight.numel(), 0.5)
    assert float(original[mask == 1].min()) >= float(original[mask == 0].max())
