import json
import subprocess
import sys

import pytest

from autocompress.cli.main import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args], capture_output=True, text=True, timeout=600)


def test_inspect_lists_units_with_shares(capsys):
    assert main(["inspect", "resnet18", "--input-shape", "1,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet18: input (1, 3, 32, 32), 11,181,642 params, 37,016,576 MACs; 79 decision variables")
    assert "layer4.0.conv2" in out and "21.1%" in out
    assert "fc: output channels are the model's outputs; never pruned" in out
    assert "cell {original, narrow 0.5, dwsep, skip}" in out and "8 blocks with cell choices" in out
    assert "layer2.0: cell skip left out: the block is not residual" in out


@pytest.mark.parametrize("model, space, blocks, first", [
    ("mobilenet_v2", "search_spaces/mobile.yaml", 17, "mb e1 k7"),
    ("resnet18", "search_spaces/resnet.yaml", 8, "narrow 0.5"),
    ("autocompress.zoo:small_resnet", "search_spaces/example_user.yaml", 6, "narrow 0.75"),
])
def test_inspect_json_lists_the_blocks_with_cell_choices(capsys, model, space, blocks, first):
    assert main(["inspect", model, "--space", space, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["cells"]) == blocks and data["cells"][0]["cells"][:2] == ["original", first]
    assert data["search_space"]["path"].endswith(space.split("/")[-1])
    assert main(["inspect", model, "--space", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cells"] == []


@pytest.mark.parametrize("text, words", [
    ("name: x\nblocks:\n  - match: torchvision.models.resnet.NoSuchBlock\n    cells: [skip]\n",
     "blocks[0].match: no class 'torchvision.models.resnet.NoSuchBlock'"),
    ("name: x\nblocks:\n  - match: torchvision.models.mobilenetv2.InvertedResidual\n    cells:\n"
     "      - mb: {expand: [3], kernel: [4]}\n", "blocks[0].cells[0].mb.kernel: 4: a depthwise kernel must be odd"),
    ("name: x\nblocks: [\n", "YAML syntax error"),
])
def test_a_bad_space_file_is_one_line_and_exit_2_before_any_training(tmp_path, capsys, text, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = tmp_path / "run"
    assert main(["search", "mobilenet_v2", "--space", str(bad), "--budget", "0.5x", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(bad) in error and words in error
    assert not (out / "baseline.pt").exists()


def test_inspect_json_lists_heads_projections_and_ffn_of_a_transformer(capsys):
    assert main(["inspect", "autocompress.zoo:transformer_classifier", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    units = {(u["kind"], u["name"]): u for u in data["units"]}
    assert units["attention", "encoder.layers.0.self_attn"]["techniques"] == ["heads cut {0,1,2,3} of 4"]
    assert units["attention", "encoder.layers.0.self_attn"]["shape"].startswith("4 heads x 16, 64 tokens")
    assert units["layer", "encoder.layers.0.self_attn.q_proj"]["techniques"][0].startswith("bits")
    assert units["layer", "encoder.layers.0.linear1"]["techniques"][0].startswith("bits")
    assert units["channel group", "encoder.layers.0.linear1"]["techniques"][0].startswith("prune")
    assert abs(sum(u["macs_share"] for u in data["units"] if u["kind"] in ("layer", "attention")) - 1.0) < 1e-3
    assert data["analysis"]["total_params"] == 74954


@pytest.mark.parametrize("args, message", [
    (["inspect", "resnet99"], "not a torchvision classification model"),
    (["inspect", "resnet18", "--input-shape", "1,3,x"], "--input-shape '1,3,x' is not a shape"),
    (["inspect", "resnet18", "--weights", "missing.pt"], "does not exist"),
    (["apply", "resnet18", "--candidate", "nope.json", "--out", "o"], "neither a file, uniform"),
    (["apply", "resnet18", "--candidate", "random:x", "--out", "o"], "seed must be a non-negative integer"),
    (["apply", "resnet18", "--candidate", "random", "--dataset", "svhn", "--out", "o"], "unknown data set"),
    (["apply", "resnet18", "--candidate", "uniform:1.5,int8", "--out", "o"], "RATIO in [0, 1)"),
    (["apply", "resnet18", "--candidate", "uniform:0.5,int3", "--out", "o"], "BITS one of"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autocompress: error:") and message in lines[0]


def test_apply_writes_candidate_onnx_and_report(tmp_path):
    out = tmp_path / "run"
    result = run_cli("apply", "autocompress.zoo:transformer_classifier", "--candidate", "random:1",
                     "--train-steps", "300", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["footprint_from_candidate"] == report["footprint_from_model"]
    assert report["baseline"]["accuracy"] > 0.8
    assert (out / "model.onnx").stat().st_size == report["onnx_bytes"]
    assert "candidate-only accounting agrees" in result.stdout
    # The cached baseline is reused and a saved Candidate replays to the same model.
    again = run_cli("apply", "autocompress.zoo:transformer_classifier", "--candidate", str(out / "candidate.json"),
                    "--train-steps", "300", "--out", str(out))
    assert again.returncode == 0, again.stderr
    replay = json.loads((out / "report.json").read_text())
    assert replay["candidate"] == report["candidate"]
    assert replay["accuracy_torch"] == report["accuracy_torch"]
    assert replay["baseline"]["accuracy"] == report["baseline"]["accuracy"]


def test_api_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    from autocompress.errors import AutocompressError, DatasetError
    from autocompress.search.problem import ProblemSpec
    from autocompress.search.run import SearchSettings
    from autocompress.train.data import load_dataset

    with pytest.raises(AutocompressError, match=r"^timeout_s -1\.0: give a positive number of seconds"):
        SearchSettings(problem=ProblemSpec(model="resnet18"), budget="0.5x", out=tmp_path, timeout_s=-1.0)
    with pytest.raises(DatasetError, match=r"^image_size 4 is too small"):
        load_dataset("digits", image_size=4)
    assert main(["search", "resnet18", "--budget", "0.5x", "--out", str(tmp_path / "s"), "--timeout", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "autocompress: error: --timeout -1.0: give a positive number of seconds"
