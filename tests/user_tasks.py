"""A module of Tasks as a user writes them (imported from tmp_path by `--task user_task:NAME`),
and the command line run with it importable: shared by the Task tests and the bad-input tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

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


def run_cli_with_tasks(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "user_task.py").write_text(TASK_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS)])}
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)


