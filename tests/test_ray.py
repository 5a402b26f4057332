"""The search on a real Ray cluster: several nodes on loopback, workers and drivers killed mid-search."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autocompress.train.finetune import DistillationConfig
from autocompress.search.problem import ProblemSpec
from reference_models import TINY_SEARCH as TINY
from autocompress.search.folder import SearchFolder
from autocompress.search.run import ExecutionSettings, LatencySettings, SearchSettings, open_study, run_search

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent


@pytest.fixture
def cluster():
    """A head (no CPUs for trials: it only coordinates) and three nodes of one CPU each, on loopback."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def _study(out: Path) -> optuna.Study:
    return SearchFolder(out).load_study()


def _finetuned(trials) -> list:
    """The finished trials that were fine-tuned: --trials counts these; proposals told over the budget come on top."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("status") != "over_budget"]


def _settings(out: Path, *, trials: int, steps: int = 12, **ray_args) -> SearchSettings:
    return SearchSettings(problem=TINY, budget="5ms", out=out, trials=trials, finetune=DistillationConfig(steps=steps),
                          guide="macs", latency=LatencySettings.predicted_only(),
                          execution=ExecutionSettings(executor="ray", cpus_per_trial=1, **ray_args))


def test_trials_run_on_every_node_of_a_multi_node_cluster(cluster, tiny_search_problem, tmp_path):
    cluster_, _ = cluster
    outcome = run_search(_settings(tmp_path, trials=9, workers=3, ray_address=cluster_.address), progress=False,
                         problem=tiny_search_problem)
    trials = _finetuned(_study(tmp_path).get_trials())
    assert len(trials) == 9 and len(outcome.front) >= 1
    nodes = {t.user_attrs["worker"]["node_id"] for t in trials}
    assert len(nodes) == 3  # every node fine-tuned trials
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)  # trials in flight together were never the same candidate


def _kill_when_running(out: Path, kill, stop: threading.Event) -> dict:
    """Wait for a trial a worker is fine-tuning, then ``kill(worker)``; returns that trial's number and worker."""
    while not stop.is_set():
        try:
            running = _study(out).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study is not created yet
            running = []
        for trial in running:
            worker = trial.user_attrs.get("worker")
            if worker and trial.user_attrs.get("status") is None:
                time.sleep(0.5)  # well inside its fine-tune
                kill(worker)
                return {"number": trial.number, "worker": worker}
        time.sleep(0.1)
    return {}


@pytest.mark.parametrize("what", ["worker process", "node"])
def test_a_worker_or_node_lost_mid_trial_is_retried_and_nothing_finished_is_lost(what, cluster, tiny_search_problem,
                                                                                 tmp_path):
    cluster_, nodes = cluster

    def kill(worker):
        if what == "worker process":
            os.kill(worker["pid"], signal.SIGKILL)
        else:  # two workers on three nodes: the lost worker restarts on the spare node
            cluster_.remove_node(next(n for n in nodes if n.node_id == worker["node_id"]))

    settings = _settings(tmp_path, trials=4, steps=100, workers=2, ray_address=cluster_.address)
    open_study(settings)  # created before the watcher polls it: SQLite must not see two creators at once
    killed: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: killed.update(_kill_when_running(tmp_path, kill, stop)))
    watcher.start()
    try:
        run_search(settings, progress=False, problem=tiny_search_problem)
    finally:
        stop.set()
        watcher.join()
    assert killed, "no trial was caught running"
    trials = _study(tmp_path).get_trials()
    hit = trials[killed["number"]]
    assert hit.state == TrialState.COMPLETE  # retried on another worker, and finished
    assert [f.split(" on ")[0] for f in hit.user_attrs["worker_failures"]] in (
        ["worker lost: RayActorError"], ["worker lost: ActorDiedError"], ["worker lost: ActorUnavailableError"],
        ["worker lost: WorkerCrashedError"], ["worker lost: NodeDiedError"])
    assert hit.user_attrs["worker"]["pid"] != killed["worker"]["pid"]
    assert len(_finetuned(trials)) == 4
    assert not [t for t in trials if t.state == TrialState.FAIL]


def test_a_driver_killed_with_sigkill_resumes_and_keeps_every_finished_trial(tmp_path):
    out = tmp_path / "search"
    command = [sys.executable, "-m", "autocompress.cli", "search", "reference_models:tiny_resnet", "--budget", "5ms",
               "--trials", "8", "--train-steps", "80", "--finetune-steps", "20", "--out", str(out), "--quiet",
               "--executor", "ray", "--workers", "2", "--calibrate-model", "off", "--guide", "macs"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    finished: dict = {}
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            finished = {t.number: t.values for t in _study(out).get_trials(states=(TrialState.COMPLETE,))}
        except Exception:
            finished = {}
        if len(finished) >= 3:
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the search ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    driver.wait()
    kept = {t.number: t.values for t in _study(out).get_trials(states=(TrialState.COMPLETE,))}
    assert len(kept) >= len(finished) >= 3

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = _study(out).get_trials()
    assert {t.number: t.values for t in trials if t.number in kept} == kept  # nothing finished was lost
    assert len(_finetuned(trials)) == 8
    stale = [t for t in trials if t.state == TrialState.FAIL]
    assert stale and all("left running" in t.user_attrs["fail_reason"] for t in stale)
    for t in stale:  # a trial killed before it drew a candidate has nothing to retry
        retried = any(r.user_attrs.get("retry_of") == t.number for r in trials)
        assert retried == t.user_attrs["fail_reason"].endswith("; retried"), t.user_attrs["fail_reason"]
        assert retried or "candidate" not in t.user_attrs


def test_cells_are_distilled_on_the_cluster_workers_before_the_trials(cluster, tmp_path):
    cluster_, _ = cluster
    spec = ProblemSpec(model="autocompress.zoo:small_resnet", input_size=16, train_steps=30,
                       search_space="search_spaces/example_user.yaml")
    settings = SearchSettings(problem=spec, budget="0.8x", out=tmp_path, trials=3, finetune=DistillationConfig(steps=5),
                              guide="macs", latency=LatencySettings.predicted_only(),
                              execution=ExecutionSettings(workers=3, ray_address=cluster_.address))
    run_search(settings, progress=False)
    with open(tmp_path / "cells" / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 12  # every inexact cell of the six blocks
    processes = {r["where"] for r in rows}
    assert f"{socket.gethostname()}:{os.getpid()}" not in processes and len(processes) >= 2  # on the workers
    assert len(_finetuned(_study(tmp_path).get_trials())) == 3


def test_a_supernet_trains_data_parallel_on_the_cluster_workers(cluster, tmp_path):
    from test_supernet import TINY as TINY_SUPERNET

    cluster_, _ = cluster
    space = tmp_path / "tiny_supernet.yaml"
    space.write_text(TINY_SUPERNET)
    settings = SearchSettings(problem=ProblemSpec(model=f"space:{space}", train_steps=4), budget="1.2x",
                              out=tmp_path / "search", trials=2, finetune=DistillationConfig(steps=3), warm_start=False,
                              guide="macs", latency=LatencySettings.predicted_only(),
                              execution=ExecutionSettings(workers=2, ray_address=cluster_.address))
    run_search(settings, progress=False)
    progress = json.loads((tmp_path / "search" / "supernet" / "progress.json").read_text())
    assert progress["step"] == 4 and progress["where"] == "2 workers, data-parallel"
    assert len(_finetuned(_study(tmp_path / "search").get_trials())) == 2
