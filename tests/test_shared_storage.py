"""Several drivers on one study: two search processes share a real PostgreSQL server started here."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autocompress.search.problem import ProblemSpec, build_problem

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent


def _postgres_bin(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI machines run the tests as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (`apt-get install postgresql`; .ci/run installs it)")
    pytest.importorskip("psycopg2")
    base = Path(tempfile.mkdtemp(prefix="autocompress-pg-", dir="/tmp"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", _free_port()
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "autocompress"]), check=True,
                   capture_output=True)
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                                 f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"]), check=True,
                   capture_output=True)
    try:
        subprocess.run([_postgres_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U",
                        "autocompress", "search"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://autocompress@127.0.0.1:{port}/search"
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_drivers_share_one_study_in_postgresql(postgres_url, tmp_path):
    weights_dir = tmp_path / "baseline"
    build_problem(ProblemSpec(model="reference_models:tiny_resnet", train_steps=80), cache_dir=weights_dir)
    # one torch thread per driver: two drivers share this machine's cores, as two machines would not
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    drivers = []
    for name in ("a", "b"):  # one driver per machine, in real life
        command = [sys.executable, "-m", "autocompress.cli", "search", "reference_models:tiny_resnet",
                   "--weights", str(weights_dir / "baseline.pt"), "--budget", "5ms", "--trials", "10",
                   "--finetune-steps", "20", "--storage", postgres_url, "--out", str(tmp_path / name), "--quiet"]
        drivers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        _wait_for_trials(postgres_url, drivers[0])  # the first driver queues the warm start; the others find it
    for driver in drivers:
        _, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="autocompress", storage=postgres_url)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 10 <= len(complete) <= 11  # each driver stops once 10 are done; one may have had a trial in flight
    assert not [t for t in trials if t.state in (TrialState.FAIL, TrialState.RUNNING)]
    pids = {t.user_attrs["driver"]["pid"] for t in complete}
    assert pids == {d.pid for d in drivers}  # both drivers asked and told trials of the one study
    origins = [t.user_attrs["origin"] for t in complete if t.user_attrs["origin"].startswith("warm_start")]
    assert len(origins) == len(set(origins))  # the warm start was queued once, not once per driver
    for name in ("a", "b"):
        assert (tmp_path / name / "pareto.json").is_file()


def _wait_for_trials(url: str, driver: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            if optuna.load_study(study_name="autocompress", storage=url).get_trials(deepcopy=False):
                return
        except KeyError:
            pass  # no study yet
        time.sleep(0.5)
