"""Several drivers on one study, with readers polling it: four search processes on a real
PostgreSQL server started here, and two on one folder's own journal study, while optuna-dashboard
and `autocompress pareto` read the study every second."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autocompress.cli.main import main
from autocompress.search.folder import SearchFolder
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.search.storage import open_storage

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


TRIALS = 8


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("baseline")
    build_problem(ProblemSpec(model="reference_models:tiny_resnet", train_steps=80), cache_dir=folder)
    return folder / "baseline.pt"


def _driver(weights: Path, out: Path, storage: str | None) -> subprocess.Popen:
    # one torch thread per driver: the drivers share this machine's cores, as drivers on several machines would not
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "autocompress.cli", "search", "reference_models:tiny_resnet",
               "--weights", str(weights), "--budget", "5ms", "--trials", str(TRIALS), "--finetune-steps", "10",
               "--out", str(out), "--quiet", "--calibrate-model", "off", "--guide", "macs",
               *(["--storage", storage] if storage else [])]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Readers:
    """optuna-dashboard serving the study, its API fetched every second, and `autocompress pareto`
    run every second on a search folder; each failure is kept with its reason."""

    def __init__(self, storage: str, folder: Path) -> None:
        self.port = _free_port()
        self.dashboard = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), storage,
                                           "--host", "127.0.0.1", "--port", str(self.port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.folder, self.stop = folder, threading.Event()
        self.reads = {"dashboard": 0, "pareto": 0}
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._poll_dashboard), threading.Thread(target=self._poll_pareto)]
        for thread in self.threads:
            thread.start()

    def _poll_dashboard(self) -> None:
        base = f"http://127.0.0.1:{self.port}/api/studies"
        while not self.stop.wait(1.0):
            try:
                studies = json.loads(urllib.request.urlopen(base, timeout=30).read())["study_summaries"]
                for study in studies:  # every trial of every study, as the dashboard's page fetches them
                    detail = json.loads(urllib.request.urlopen(f"{base}/{study['study_id']}?after=0", timeout=30).read())
                    assert isinstance(detail["trials"], list)
                self.reads["dashboard"] += bool(studies)
            except OSError as exc:
                if self.dashboard.poll() is not None:
                    self.failures.append(f"dashboard exited: {self.dashboard.stderr.read()[-500:]}")
                    return
                if self.reads["dashboard"]:  # it answered before: a failure now is the study's fault
                    self.failures.append(f"dashboard: {exc}")
            except Exception as exc:  # an answer that is not what the dashboard's own page expects
                self.failures.append(f"dashboard: {type(exc).__name__}: {exc}")

    def _poll_pareto(self) -> None:
        while not self.stop.wait(1.0):
            if not (self.folder / "search.json").is_file():
                continue  # the search is still preparing: nothing to read yet
            try:
                code = main(["pareto", str(self.folder)])  # in this process: a subprocess a second is too slow
            except Exception as exc:
                code = f"{type(exc).__name__}: {exc}"
            if code == 0:
                self.reads["pareto"] += 1
            else:
                self.failures.append(f"pareto: {code}")

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self.dashboard.terminate()
        self.dashboard.wait()


def _finish(drivers: list[subprocess.Popen]) -> None:
    for driver in drivers:
        _, err = driver.communicate(timeout=900)
        assert driver.returncode == 0, err[-2000:]
        assert "database is locked" not in err and "Traceback" not in err, err[-2000:]


def _check_one_study(study: optuna.Study, drivers: list[subprocess.Popen]) -> None:
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # each driver stops once TRIALS are done; each may have had one trial in flight then
    assert TRIALS <= len(complete) <= TRIALS + len(drivers) - 1
    assert not [t for t in trials if t.state in (TrialState.FAIL, TrialState.RUNNING)]  # WAITING: queued starts left
    tellers = [t.user_attrs["driver"]["pid"] for t in complete]
    assert set(tellers) == {d.pid for d in drivers}  # every driver asked and told trials of the one study
    assert len({t.number for t in complete}) == len(complete)  # each trial once
    origins = [t.user_attrs["origin"] for t in complete if t.user_attrs["origin"].startswith("warm_start")]
    assert len(origins) == len(set(origins))  # the warm start was queued once, not once per driver


def test_four_drivers_share_one_postgresql_study_while_readers_poll_it(postgres_url, weights, tmp_path):
    folders = [tmp_path / name for name in "abcd"]  # one driver per machine, in real life
    drivers = [_driver(weights, folders[0], postgres_url)]
    _wait_for_trials(postgres_url, drivers[0])  # the first driver queues the warm start; the others find it
    readers = Readers(postgres_url, folders[0])
    try:
        drivers += [_driver(weights, folder, postgres_url) for folder in folders[1:]]
        _finish(drivers)
    finally:
        readers.close()
    assert not readers.failures, readers.failures
    assert readers.reads["dashboard"] > 0 and readers.reads["pareto"] > 0, readers.reads
    _check_one_study(optuna.load_study(study_name="autocompress", storage=postgres_url), drivers)
    for folder in folders:
        assert (folder / "pareto.json").is_file()


def test_two_drivers_on_one_folder_share_its_journal_study_while_readers_poll_it(weights, tmp_path):
    out = tmp_path / "shared"
    journal = out / "study.journal"  # the folder's default study
    drivers = [_driver(weights, out, None) for _ in range(2)]  # started together, as a user would
    while not journal.is_file() and all(d.poll() is None for d in drivers):
        time.sleep(0.2)
    readers = Readers(str(journal), out)
    try:
        _finish(drivers)
    finally:
        readers.close()
    assert not readers.failures, readers.failures
    assert readers.reads["dashboard"] > 0 and readers.reads["pareto"] > 0, readers.reads
    _check_one_study(optuna.load_study(study_name="autocompress", storage=open_storage(str(journal))), drivers)
    document = json.loads((out / "pareto.json").read_text())  # each driver rewrote it whole as it stopped
    assert TRIALS <= document["n_trials"] <= len(SearchFolder(out).load_study().get_trials())


def _wait_for_trials(url: str, driver: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            if optuna.load_study(study_name="autocompress", storage=url).get_trials(deepcopy=False):
                return
        except KeyError:
            pass  # no study yet
        time.sleep(0.5)
