"""Disk, memory and paths: a full disk stops a search in one line and the study resumes once space
is freed; a model too large for memory is refused with an estimate before training; nothing read
from a search folder chooses where the tool writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from optuna.trial import TrialState

from autocompress.cli.main import main
from autocompress.errors import AutocompressError
from autocompress.files import atomic_path, inside, is_disk_full
from autocompress.hardware.onnx_export import load_onnx
from autocompress.search.folder import SearchFolder
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.train.memory import training_memory

TESTS = Path(__file__).parent

INFLATES = '''
import torch
from torch import nn


class Inflates(nn.Module):
    """Small weights, huge activations: it blows a 32-pixel image up to 2048 pixels."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 3, padding=1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        x = nn.functional.interpolate(x, scale_factor=64)
        return self.fc(self.conv(x).mean((2, 3)))


def inflates(num_classes=10):
    return Inflates(num_classes)
'''


def _search(out: Path, weights: Path, trials: int) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "autocompress.cli", "search", "reference_models:tiny_resnet",
                           "--weights", str(weights), "--budget", "5ms", "--trials", str(trials),
                           "--finetune-steps", "10", "--out", str(out), "--quiet", "--calibrate-model", "off",
                           "--guide", "macs"],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root in a machine that allows it): {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(mount: Path, leave_bytes: int) -> Path:
    filler = mount / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with open(filler, "r+b") as f:  # give back what the search may use before the disk is full again
        f.truncate(max(0, filler.stat().st_size - leave_bytes))
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("leave_bytes", [96 * 1024])  # full a few trials into the resumed search
def test_a_full_disk_stops_the_search_in_one_line_and_the_study_resumes_once_space_is_freed(small_disk, tmp_path,
                                                                                            leave_bytes):
    weights_dir = tmp_path / "baseline"
    build_problem(ProblemSpec(model="reference_models:tiny_resnet", train_steps=60), cache_dir=weights_dir)
    out = small_disk / "run"
    first = _search(out, weights_dir / "baseline.pt", trials=3)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = {t.number: t.values for t in SearchFolder(out).load_study().get_trials(states=(TrialState.COMPLETE,))}

    filler = _fill(small_disk, leave_bytes)  # full now (0), or full a few trials later
    full = _search(out, weights_dir / "baseline.pt", trials=40)
    assert full.returncode == 2, full.stderr[-2000:]
    # a warning that the hardware model was measured on another machine class is no error line
    lines = [line for line in full.stderr.strip().splitlines()
             if not re.search(r": \w+Warning: ", line) and not line.startswith("  ")]
    assert len(lines) == 1 and "is full (no space left on device); free space and rerun" in lines[0], full.stderr

    filler.unlink()
    resumed = _search(out, weights_dir / "baseline.pt", trials=8)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = SearchFolder(out).load_study().get_trials()
    assert {t.number: t.values for t in trials if t.number in kept} == kept  # nothing finished was lost
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 8
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert json.loads((out / "pareto.json").read_text())["n_trials"] == len(trials)


def test_disk_full_is_recognised_through_the_wrappers_libraries_put_around_it():
    import sqlite3

    import sqlalchemy.exc

    full = OSError(28, "No space left on device")
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = full
    assert is_disk_full(full) and is_disk_full(wrapped)
    assert is_disk_full(sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk "
                                                                                                "is full")))
    assert not is_disk_full(OSError(13, "Permission denied")) and not is_disk_full(ValueError("x"))


def test_a_model_too_large_for_memory_is_refused_with_an_estimate_before_it_runs(capsys, tmp_path, monkeypatch):
    (tmp_path / "inflating.py").write_text(INFLATES)
    monkeypatch.syspath_prepend(str(tmp_path))
    memory = training_memory(__import__("inflating").inflates(), torch.zeros(1, 3, 32, 32), batch_size=64)
    assert memory.activation_bytes_per_sample == 256 * 2048 * 2048 * 4 + 10 * 4  # the conv's output, the logits
    code = main(["search", "inflating:inflates", "--budget", "0.5x", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training model 'inflating:inflates' at --input-size 32" in err and "4.0 GiB of activations per image" in err
    assert "give a smaller one, or a smaller model" in err
    assert not (tmp_path / "run").exists()
    sys.modules.pop("inflating", None)


def test_an_input_size_too_large_to_train_at_is_refused_before_anything_is_made(capsys, tmp_path):
    # the images are made at the input size one at a time, when read: only training must fit
    code = main(["search", "resnet18", "--input-size", "4096", "--budget", "0.5x", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training model 'resnet18' at --input-size 4096" in err and "give a smaller one" in err
    assert "images of the data set" not in err
    assert not (tmp_path / "run").exists()


def test_names_from_files_cannot_lead_out_of_their_folder(tmp_path):
    assert inside(tmp_path, "layer1.0__narrow_0.5.pt") == (tmp_path / "layer1.0__narrow_0.5.pt").resolve()
    (tmp_path / "elsewhere").symlink_to("/tmp")
    for name in ("../escape.pt", "/etc/passwd", "a/../../escape", "elsewhere/x"):
        with pytest.raises(AutocompressError, match="would lead out of"):
            inside(tmp_path, name)


def test_an_onnx_file_whose_external_data_points_outside_its_folder_is_refused(tmp_path):
    weight = numpy_helper.from_array(torch.ones(4, 4).numpy(), name="w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph)
    onnx.save(model, str(tmp_path / "ok.onnx"), save_as_external_data=True, location="ok.data",
              size_threshold=0)
    assert numpy_helper.to_array(load_onnx(tmp_path / "ok.onnx").graph.initializer[0]).sum() == 16
    loaded = onnx.load(str(tmp_path / "ok.onnx"), load_external_data=False)
    for entry in loaded.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../../secret.data"
    onnx.save(loaded, str(tmp_path / "bad.onnx"))
    with pytest.raises(AutocompressError, match="'../../secret.data' would lead out of"):
        load_onnx(tmp_path / "bad.onnx")


def test_a_study_named_in_search_json_outside_the_folder_is_read_never_created_or_changed(capsys, tmp_path):
    out, outside = tmp_path / "search", tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    (out / "search.json").write_text(json.dumps({
        "problem": {}, "budget": "0.5x", "budget_ms": 1.0, "finetune": {}, "storage": str(outside / "x.journal"),
        "baseline": {"accuracy": 0.9, "latency_ms": 1.0, "size_bytes": 100}}))
    assert main(["pareto", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(outside.iterdir())  # opening for reading created no journal there
    torn = b'{"op_code": 0, "worker_id": "w", "study_name": "autocompress", "directions": [1]}\n{"op_co'
    (outside / "x.journal").write_bytes(torn)
    with pytest.raises(AutocompressError):
        SearchFolder(out).live_front()  # read as it is: a study of other directions, refused
    assert (outside / "x.journal").read_bytes() == torn  # the torn record a writer would drop is left alone


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "pareto.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_text("half of the n")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["pareto.json"]
