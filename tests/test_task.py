"""Your model, your data, your score: a Task with an nn.Module object, DataLoaders and a score of
its own, searched from Python and by `--task` on the command line, exported with its test split."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from reference_models import tiny_resnet
from torch.utils.data import DataLoader

from autocompress.errors import AutocompressError
from autocompress.export.card import export_from_search
from autocompress.search.folder import SearchFolder
from autocompress.search.run import SearchSettings, run_search
from autocompress.train.finetune import DistillationConfig, evaluate
from autocompress.train.scores import Score, model_outputs
from autocompress.train.task import Task
from autocompress.train.training import train_classifier

TESTS = Path(__file__).parent
FAST = DistillationConfig(steps=8)


def macro_f1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean over classes of F1: what an imbalanced task scores instead of top-1."""
    predicted = outputs.argmax(1)
    scores = []
    for c in targets.unique():
        tp = float(((predicted == c) & (targets == c)).sum())
        fp, fn = float(((predicted == c) & (targets != c)).sum()), float(((predicted != c) & (targets == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


@pytest.fixture(scope="module")
def trained_tiny(digits):
    torch.manual_seed(0)
    return train_classifier(tiny_resnet(), digits.train, steps=80)


@pytest.fixture(scope="module")
def object_search(tmp_path_factory, trained_tiny, digits):
    task = Task(model=trained_tiny, train=DataLoader(digits.train, batch_size=32), val=lambda: DataLoader(digits.val),
                test=digits.test, score=macro_f1, name="digits-f1")
    out = tmp_path_factory.mktemp("object_search")
    settings = SearchSettings(problem=task, budget="0.7x", out=out, trials=4, finetune=FAST, seed=2)
    return task, settings, run_search(settings, progress=False)


def test_a_model_object_with_loaders_and_its_own_score_is_searched_and_the_score_named_everywhere(
        object_search, trained_tiny, digits):
    task, settings, outcome = object_search
    out = settings.out
    # the baseline is the object as given (not trained again), scored by the task's score
    outputs, targets = model_outputs(trained_tiny, digits.val)
    assert outcome.baseline["score"] == "macro_f1"
    assert outcome.baseline["accuracy"] == pytest.approx(macro_f1(outputs, targets))
    assert outcome.baseline["accuracy"] != pytest.approx(float((outputs.argmax(1) == targets).float().mean()))
    assert sum(r.status in ("evaluated", "stopped_early") for r in outcome.records) == 4
    recorded = json.loads((out / "search.json").read_text())
    assert recorded["problem"]["task"] == "object" and recorded["problem"]["dataset"] == "digits-f1"
    assert recorded["problem"]["model"] == "object:TinyResNet" and recorded["score"] == "macro_f1"
    assert recorded["data"]["test"] == len(digits.test) and recorded["baseline_training"] is None
    with open(out / "pareto.csv", newline="") as handle:
        assert next(csv.reader(handle))[:2] == ["number", "macro_f1"]
    assert json.loads((out / "pareto.json").read_text())["score"] == "macro_f1"
    study = SearchFolder(out).load_study()
    assert study.metric_names == ["macro_f1", "latency_ms", "size_bytes"]


def test_the_export_of_a_task_search_scores_validation_and_test_and_needs_the_task_again(object_search, tmp_path,
                                                                                        trained_tiny, digits):
    task, settings, outcome = object_search
    best = outcome.best or outcome.front[0]
    with pytest.raises(AutocompressError, match="made with a Task object from Python"):
        export_from_search(settings.out, tmp_path / "none", trial=best.number, finetune_steps=2)
    card = export_from_search(settings.out, tmp_path / "export", trial=best.number, finetune_steps=5, passes=2,
                              runs=5, sweeps=1, pause_s=0.0, task=task)
    test = card["test"]
    assert test["score"] == card["accuracy"]["score"] == "macro_f1" and test["images"] == len(digits.test)
    assert test["baseline"] == pytest.approx(evaluate(trained_tiny, digits.test, score=Score(macro_f1, "macro_f1")))
    assert 0.0 <= test["exported_onnx"] <= 1.0 and abs(test["exported_onnx"] - test["exported_torch"]) < 0.05
    table = (tmp_path / "export" / "card.md").read_text()
    assert "| macro_f1 | validation | test |" in table and "no choice of the search saw it" in table


def test_pareto_test_scores_every_front_point_on_the_test_split_beside_its_validation_score(object_search, digits,
                                                                                           trained_tiny):
    from autocompress.export.front_test import front_on_test, front_on_test_table

    task, settings, outcome = object_search
    scored = front_on_test(settings.out, task=task)
    assert [p["number"] for p in scored["points"]] == [p.number for p in outcome.front]
    for point, record in zip(scored["points"], outcome.front):
        # the same fine-tune again, so the same validation score, give or take what its checkpoint moved
        assert point["validation"] == pytest.approx(record.accuracy, abs=0.03)
        assert 0.0 <= point["test"] <= 1.0
    assert scored["score"] == "macro_f1" and scored["test_items"] == len(digits.test)
    assert scored["baseline"]["test"] == pytest.approx(evaluate(trained_tiny, digits.test,
                                                                score=Score(macro_f1, "macro_f1")))
    table = front_on_test_table(scored)
    assert table.splitlines()[0].split()[:3] == ["trial", "latency", "ms"] and "macro_f1 % val (search)" in table


TASK_MODULE = '''
import torch
from autocompress.train.data import load_dataset
from autocompress.train.task import Task
from autocompress.train.training import train_classifier
from reference_models import tiny_resnet


def top5(outputs, targets):
    return float((outputs.topk(5, 1).indices == targets.view(-1, 1)).any(1).float().mean())


def make_task():
    splits = load_dataset("digits", image_size=16)
    torch.manual_seed(0)
    return Task(model=train_classifier(tiny_resnet(), splits.train, steps=30), train=splits.train, val=splits.val,
                test=splits.test, score=top5, name="digits16")


def broken():
    raise ValueError("no data here")


def not_a_task():
    return {"model": None}


def nan_score():
    task = make_task()
    return Task(model=task.model, train=task.train, val=task.val, score=lambda o, t: float("nan"), score_name="bad")


def empty_val():
    task = make_task()
    return Task(model=task.model, train=task.train, val=torch.utils.data.TensorDataset(torch.zeros(0, 3, 16, 16),
                torch.zeros(0, dtype=torch.long)))


def other_shape():
    task = make_task()
    return Task(model=task.model, train=task.train, val=task.val, example=torch.zeros(1, 3, 20, 20))
'''


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "user_task.py").write_text(TASK_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS)])}
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)


def test_a_task_factory_runs_from_the_command_line(tmp_path):
    out = tmp_path / "search"
    run = _cli(tmp_path, "search", "--task", "user_task:make_task", "--budget", "0.7x", "--trials", "2",
               "--finetune-steps", "4", "--out", str(out), "--quiet", "--calibrate-model", "off",
               "--measure-near-budget", "0")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "top5 %" in run.stdout  # the front's table names the score
    recorded = json.loads((out / "search.json").read_text())
    assert recorded["problem"]["task"] == "user_task:make_task" and recorded["score"] == "top5"
    assert recorded["data"]["test"] > 0 and recorded["baseline"]["accuracy"] > 0.5


@pytest.mark.parametrize("task, message", [
    ("no_such_module:make", "cannot import module 'no_such_module'"),
    ("user_task:nothing", "has no function 'nothing'"),
    ("user_task:broken", "raised ValueError: no data here; fix the function"),
    ("user_task:not_a_task", "returned a dict, not an autocompress Task"),
    ("user_task:nan_score", "score 'bad' returned nan, not a finite number"),
    ("user_task:empty_val", "val holds no items"),
    ("user_task:other_shape", "train's inputs have shape \\(3, 16, 16\\), the example input \\(1, 3, 20, 20\\)"),
])
def test_a_bad_task_is_one_line_exit_2_and_writes_nothing(tmp_path, task, message):
    out = tmp_path / "search"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    run = _cli(tmp_path, "search", "--task", task, "--budget", "0.7x", "--out", str(out), "--quiet")
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autocompress: error: "), run.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_a_data_root_without_the_files_is_one_line_exit_2(tmp_path):
    run = _cli(tmp_path, "search", "resnet18", "--dataset", "cifar100", "--data-root", str(tmp_path / "nothing"),
               "--budget", "0.5x", "--out", str(tmp_path / "s"))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar100 is not under --data-root" in lines[0] and "cifar-100-python" in lines[0]
    assert not (tmp_path / "s").exists()
