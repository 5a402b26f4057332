"""Your model, your data, your score: a Task with an nn.Module object, DataLoaders and a score of
its own, searched from Python and by `--task` on the command line, exported with its test split."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from reference_models import tiny_resnet
from torch.utils.data import DataLoader
from user_tasks import run_cli_with_tasks

from autocompress.errors import AutocompressError
from autocompress.export.card import export_from_search
from autocompress.search.folder import SearchFolder
from autocompress.search.run import LatencySettings, SearchSettings, run_search
from autocompress.train.finetune import DistillationConfig, evaluate
from autocompress.train.scores import Score, model_outputs
from autocompress.train.task import Task
from autocompress.train.training import train_classifier

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
    settings = SearchSettings(problem=task, budget="0.7x", out=out, trials=4, finetune=FAST, seed=2, guide="macs",
                              latency=LatencySettings.predicted_only())
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


def test_a_problem_travels_to_a_worker_without_the_data_it_can_read_from_its_source(tmp_path, object_search):
    import pickle

    from autocompress.search.problem import ProblemSpec, build_problem

    named = build_problem(ProblemSpec(model="reference_models:tiny_resnet", train_steps=20), cache_dir=tmp_path)
    assert named.__getstate__()["splits"] is None  # a worker reads digits itself
    arrived = pickle.loads(pickle.dumps(named))
    assert arrived.splits is not named.splits and len(arrived.splits.test) == len(named.splits.test)
    assert torch.equal(arrived.splits.val[7][0], named.splits.val[7][0])
    task, _, _ = object_search  # a Task object made here travels whole: no worker could make it again
    made_here = build_problem(ProblemSpec.for_task(task), cache_dir=tmp_path / "object", task=task)
    assert made_here.__getstate__()["splits"] is made_here.splits


def test_a_task_factory_runs_from_the_command_line(tmp_path):
    out = tmp_path / "search"
    run = run_cli_with_tasks(tmp_path, "search", "--task", "user_task:make_task", "--budget", "0.7x", "--trials", "2",
               "--finetune-steps", "4", "--out", str(out), "--quiet", "--calibrate-model", "off",
               "--measure-near-budget", "0", "--guide", "macs")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "top5 %" in run.stdout  # the front's table names the score
    recorded = json.loads((out / "search.json").read_text())
    assert recorded["problem"]["task"] == "user_task:make_task" and recorded["score"] == "top5"
    assert recorded["data"]["test"] > 0 and recorded["baseline"]["accuracy"] > 0.5
