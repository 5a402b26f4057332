"""Chaos run: faults at random moments of one distributed search, each followed by the same command.

A real Ray cluster on loopback, started with ``ray start`` (a head that only coordinates and two
worker nodes of one CPU each), runs one search of ``autocompress.zoo:small_resnet`` on digits with
blockwise-distilled cells and measured sensitivities, on two Ray workers. Faults, in order:

- the driver SIGKILLed while it trains the baseline, distils the cells, measures the sensitivities;
- then, drawn at random (each kind at least ``--each`` times): SIGKILL of the Ray worker process
  fine-tuning a trial, SIGKILL of a whole worker node (its ``ray start`` process group; started
  again seconds later, as an operator or autoscaler would), SIGKILL of the driver, SIGINT of the
  driver;
- ``autocompress export`` SIGKILLed mid-way, then run to the end.

After a driver fault the same command runs again. The report counts completed trials lost (a trial
COMPLETE before a fault and not COMPLETE with the same values after it), trials duplicated (a
retry of a trial that had completed), RUNNING trials left behind, result files that disagree with
the study, and the wall time each recovery took (from the fault to the next trial completed, or
to the export finished). Writes results/chaos.{md,json}.

    python benchmarks/chaos.py [--faults 24] [--seed 0] [--work runs/chaos]

Run it alone: it keeps both cores busy for 20-30 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from optuna.trial import TrialState

from autocompress.hardware import machine_info
from autocompress.search.folder import SearchFolder
from autocompress.search.pareto import pareto_front, records_from_study

RAY = str(Path(sys.executable).with_name("ray"))
TRIAL_FAULTS = ("worker_sigkill", "node_sigkill", "driver_sigkill", "driver_sigint")
PHASE_FAULTS = ("baseline", "cells", "sensitivity")


class Cluster:
    """A head and worker nodes, each a ``ray start --block`` in a process group of its own."""

    def __init__(self, work: Path, nodes: int) -> None:
        self.used: set[int] = set()
        self.started = 0
        self.port = self._new_port()
        self.address = f"127.0.0.1:{self.port}"
        self.logs = work / "ray_logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.head = self._start("head", ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false"])
        self._wait_for_nodes(1)
        self.nodes = []
        for i in range(nodes):  # one at a time: nodes starting together race for the same session files
            self.nodes.append(self._start(f"node{i}", [f"--address={self.address}", "--num-cpus=1"]))
            self._wait_for_nodes(2 + i)

    def _new_port(self) -> int:
        """A free port not handed out before: the head's own port is not bound yet when its other
        ports are chosen, so the system could hand it out again."""
        while (port := _free_port()) in self.used:
            pass
        self.used.add(port)
        return port

    def _wait_for_nodes(self, count: int) -> None:
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level=40); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        for _ in range(60):
            alive = subprocess.run([sys.executable, "-c", probe, self.address], capture_output=True, text=True)
            if alive.stdout.strip() == str(count):
                return
            time.sleep(2)
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes; see {self.logs}")

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "a")
        # Several nodes on one host: each needs ports of its own (the defaults are fixed numbers).
        ports = [f"--{flag}={self._new_port()}" for flag in ("node-manager-port", "object-manager-port",
                                                        "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                        "metrics-export-port", "runtime-env-agent-port")]
        # Worker ports below the system's ephemeral range (32768 and up), one band per node, so that
        # no port picked above (or by Ray itself) can fall into a node's band.
        low = 12000 + 1000 * self.started
        self.started += 1
        ports += [f"--min-worker-port={low}", f"--max-worker-port={low + 999}"]
        process = subprocess.Popen([RAY, "start", "--block", "--object-store-memory=150000000",
                                    "--disable-usage-stats", *ports, *args],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return process

    def kill_node(self, rng: random.Random) -> int:
        index = rng.randrange(len(self.nodes))
        victim = self.nodes[index]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        time.sleep(rng.uniform(3, 8))  # the node is gone for a while, then comes back
        self.nodes[index] = self._start(f"node{index}", [f"--address={self.address}", "--num-cpus=1"])
        self._wait_for_nodes(1 + len(self.nodes))
        return victim.pid

    def stop(self) -> None:
        for process in [*self.nodes, self.head]:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run([RAY, "stop", "--force"], capture_output=True)


class Search:
    """The one search command, restarted after every fault that ends its driver."""

    def __init__(self, work: Path, cluster: Cluster, trials: int) -> None:
        self.out, self.trials, self.cluster = work / "search", trials, cluster
        self.log = open(work / "driver.log", "a")
        self.driver: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "autocompress.cli", "search", "autocompress.zoo:small_resnet",
                "--input-size", "16", "--space", "search_spaces/example_user.yaml", "--budget", "0.8x",
                "--trials", str(self.trials), "--train-steps", "300", "--finetune-steps", "60",
                "--guide", "sensitivity", "--executor", "ray", "--ray-address", self.cluster.address,
                "--workers", "2", "--out", str(self.out), "--quiet"]

    def start(self) -> None:
        self.log.write(f"\n--- start {time.strftime('%H:%M:%S')}\n")
        self.log.flush()
        self.driver = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                       start_new_session=True)

    def running(self) -> bool:
        return self.driver is not None and self.driver.poll() is None

    def phase(self) -> str:
        """Where the search is, read from the files it leaves (the study is opened before the baseline
        trains; the sensitivity folder is made when measuring starts, its table written at the end)."""
        if not (self.out / "study.journal").is_file():
            return "starting"
        if not (self.out / "baseline.pt").is_file():
            return "baseline"
        if not (self.out / "sensitivity").is_dir():
            return "cells"
        if not (self.out / "sensitivity" / "sensitivity.csv").is_file():
            return "sensitivity"
        return "trials" if (self.out / "search.json").is_file() else "preparing"

    def study(self):
        return SearchFolder(self.out).load_study()

    def complete(self) -> dict[int, tuple]:
        try:
            return {t.number: tuple(t.values) for t in self.study().get_trials(states=(TrialState.COMPLETE,))}
        except Exception:  # no study yet
            return {}

    def running_workers(self) -> list[dict]:
        try:
            trials = self.study().get_trials(states=(TrialState.RUNNING,))
        except Exception:
            return []
        return [t.user_attrs["worker"] for t in trials if t.user_attrs.get("worker")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=24, help="faults in all (at least 3 + 2 + 4 * --each)")
    parser.add_argument("--each", type=int, default=3, help="least faults of each trial-phase kind")
    parser.add_argument("--trials", type=int, default=60, help="trials to reach; raised while faults remain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/chaos"))
    parser.add_argument("--report", type=Path, default=Path("results"))
    args = parser.parse_args()
    trial_faults = args.faults - len(PHASE_FAULTS) - 2
    if trial_faults < len(TRIAL_FAULTS) * args.each:
        parser.error(f"--faults {args.faults} leaves {trial_faults} trial-phase faults; give at least "
                     f"{len(PHASE_FAULTS) + 2 + len(TRIAL_FAULTS) * args.each}")
    rng = random.Random(f"chaos-{args.seed}")
    kinds = [k for k in TRIAL_FAULTS for _ in range(args.each)]
    kinds += [rng.choice(TRIAL_FAULTS) for _ in range(trial_faults - len(kinds))]
    rng.shuffle(kinds)

    # A loopback cluster: no token. Unset, Ray turns token auth on for a head wherever
    # ~/.ray/auth_token exists, and worker nodes started beside it are then refused.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Started in the background by a shell, this process inherits SIGINT ignored, and so would
    # every driver it starts: Python then never raises KeyboardInterrupt and "SIGINT of the
    # driver" would be no fault at all. Restore the default, which the drivers inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.monotonic()
    cluster = Cluster(args.work, nodes=2)
    search = Search(args.work, cluster, args.trials)
    faults: list[dict] = []
    try:
        for phase in PHASE_FAULTS:
            faults.append(phase_fault(search, phase, rng))
        for kind in kinds:
            faults.append(trial_fault(search, kind, rng))
        finish(search)
        export_faults = [export_fault(search, rng, attempt) for attempt in range(2)]
        faults += [f for f in export_faults if f is not None]
        final_export = run_export(search)
    finally:
        if search.running():
            os.killpg(search.driver.pid, signal.SIGKILL)
        cluster.stop()
    report = audit(search, faults, final_export, time.monotonic() - started)
    report |= {"seed": args.seed, "machine": machine_info(), "command": search.command()}
    write_report(report, args.report)


def phase_fault(search: Search, phase: str, rng: random.Random) -> dict:
    """Start the command, SIGKILL its driver a random moment into ``phase``, start it again."""
    if not search.running():
        search.start()
    deadline = time.monotonic() + 900
    while search.phase() != phase and time.monotonic() < deadline and search.running():
        time.sleep(0.2)
    time.sleep(rng.uniform(0.5, 4.0))
    at = search.phase()
    before = search.complete()
    fault_time = time.monotonic()
    os.killpg(search.driver.pid, signal.SIGKILL)
    search.driver.wait()
    search.start()
    while search.phase() == at and search.running():
        time.sleep(0.2)
    return {"kind": f"driver_sigkill_during_{phase}", "phase": at, "complete_before": before,
            "recovery_s": time.monotonic() - fault_time, "recovered": f"{at} done after restart"}


def trial_fault(search: Search, kind: str, rng: random.Random) -> dict:
    """Inject ``kind`` while trials are being fine-tuned; wait until a new trial completes."""
    if not search.running():
        search.start()
    _wait_for_trials_in_flight(search, rng)
    before = search.complete()
    at = search.phase()
    fault_time, detail = time.monotonic(), {}
    if kind == "worker_sigkill":
        workers = search.running_workers()
        if workers:
            victim = rng.choice(workers)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            detail = {"pid": victim["pid"]}
    elif kind == "node_sigkill":
        detail = {"node_pgid": search.cluster.kill_node(rng)}
    elif kind == "driver_sigkill":
        os.killpg(search.driver.pid, signal.SIGKILL)
        search.driver.wait()
        search.start()
    else:  # driver_sigint, as Ctrl-C would
        os.kill(search.driver.pid, signal.SIGINT)
        try:
            detail = {"exit_code": search.driver.wait(timeout=180)}
        except subprocess.TimeoutExpired:
            os.killpg(search.driver.pid, signal.SIGKILL)
            detail = {"exit_code": "hung; SIGKILLed after 180 s"}
        detail["files_agree_at_exit"] = files_agree(search)[0]
        search.start()
    recovered = _wait_for_new_complete(search, before)
    return {"kind": kind, "phase": at, "complete_before": before, "recovery_s": time.monotonic() - fault_time,
            "recovered": recovered, **detail}


def _wait_for_trials_in_flight(search: Search, rng: random.Random) -> None:
    """A random moment at which trials are being fine-tuned; a search that reached its trials is
    run further (``--trials`` may change on resume)."""
    for _ in range(1200):
        if not search.running():
            search.trials = max(search.trials, len(search.complete())) + 12
            search.start()
        if search.phase() == "trials" and search.running_workers():
            time.sleep(rng.uniform(0.2, 3.0))
            return
        time.sleep(0.5)
    raise RuntimeError("no trial was fine-tuned for 10 minutes; see driver.log")


def _wait_for_new_complete(search: Search, before: dict, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(search.complete()) - set(before):
            return "a new trial completed"
        if not search.running():
            search.trials = max(search.trials, len(search.complete())) + 4
            search.start()
        time.sleep(0.5)
    return "no new trial within 15 minutes"


def finish(search: Search) -> None:
    """Let the search run to its end without faults."""
    if search.running():
        search.driver.wait(timeout=3600)
    search.start()
    search.driver.wait(timeout=3600)


def export_command(search: Search) -> list[str]:
    return [sys.executable, "-m", "autocompress.cli", "export", str(search.out), "--best-under", "0.8x",
            "--finetune-steps", "100", "--out", str(search.out / "export")]


def export_fault(search: Search, rng: random.Random, attempt: int) -> dict | None:
    fault_time = time.monotonic()
    process = subprocess.Popen(export_command(search), stdout=search.log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        process.wait(timeout=rng.uniform(4, 25))
        return None  # it finished before the fault: nothing to count
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    export = run_export(search)
    return {"kind": "export_sigkill", "phase": "export", "complete_before": search.complete(),
            "recovery_s": time.monotonic() - fault_time, "recovered": f"export rerun: exit {export['exit_code']}"}


def run_export(search: Search) -> dict:
    result = subprocess.run(export_command(search), stdout=search.log, stderr=subprocess.STDOUT)
    card_path = search.out / "export" / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    return {"exit_code": result.returncode, "trial": card and card["trial"],
            "files": sorted(p.name for p in (search.out / "export").iterdir()) if card else []}


def files_agree(search: Search) -> tuple[bool, str]:
    """pareto.json and trials.csv against the front and the trials recomputed from the study alone."""
    records = records_from_study(search.study())
    front = [(r.number, r.accuracy, r.latency_ms, r.size_bytes) for r in pareto_front(records)]
    try:
        document = json.loads((search.out / "pareto.json").read_text())
        trials_csv = (search.out / "trials.csv").read_text().splitlines()
    except OSError as exc:
        return False, f"unreadable: {exc}"
    saved = [(p["number"], p["accuracy"], p["latency_ms"], p["size_bytes"]) for p in document["points"]]
    if saved != front:
        return False, f"pareto.json holds {len(saved)} points, the study's front {len(front)}"
    if len(trials_csv) - 1 != len(records):
        return False, f"trials.csv holds {len(trials_csv) - 1} trials, the study {len(records)}"
    return True, f"{len(front)} front points, {len(records)} trials"


def audit(search: Search, faults: list[dict], final_export: dict, wall_s: float) -> dict:
    trials = search.study().get_trials()
    by_number = {t.number: t for t in trials}
    complete = {t.number: tuple(t.values) for t in trials if t.state == TrialState.COMPLETE}
    lost = sorted({n for f in faults for n, values in f["complete_before"].items() if complete.get(n) != values})
    duplicated = [t.number for t in trials if t.state == TrialState.COMPLETE and "retry_of" in t.user_attrs
                  and by_number[t.user_attrs["retry_of"]].state == TrialState.COMPLETE]
    keys = Counter(json.dumps(t.user_attrs.get("candidate"), sort_keys=True) for t in trials
                   if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "evaluated")
    agree, agree_detail = files_agree(search)
    states = Counter(t.state.name for t in trials)
    for f in faults:
        f["complete_before"] = len(f["complete_before"])
    return {
        "faults": faults, "n_faults": len(faults), "kinds": dict(Counter(f["kind"] for f in faults)),
        "trials": dict(states), "completed_lost": lost, "duplicated": duplicated,
        "same_candidate_finetuned_twice": sum(n - 1 for n in keys.values() if n > 1),
        "running_left": [t.number for t in trials if t.state == TrialState.RUNNING],
        "files_agree": agree, "files_detail": agree_detail,
        "sigint_exits_with_files_agreeing": [f.get("files_agree_at_exit") for f in faults if f["kind"] == "driver_sigint"],
        "retried": sum("retry_of" in t.user_attrs for t in trials),
        "worker_failures_recorded": sum(len(t.user_attrs.get("worker_failures", [])) for t in trials),
        "final_export": final_export, "wall_s": wall_s,
    }


def write_report(report: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "chaos.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    ok = lambda good: "yes" if good else "**no**"  # noqa: E731
    recovery = sorted(f["recovery_s"] for f in report["faults"])
    lines = [
        "# Chaos run: faults at random moments of one distributed search", "",
        "Command: `python benchmarks/chaos.py` (seed {seed}); machine: {cpu}, {cores} cores; wall time "
        "{wall:.0f} min. A head and two worker nodes started with `ray start` on loopback; the search ran "
        "on two Ray workers with the default journal study.".format(
            seed=report["seed"], cpu=report["machine"].get("cpu", "?"), cores=report["machine"].get("cores", "?"),
            wall=report["wall_s"] / 60), "",
        f"- faults: **{report['n_faults']}** ({', '.join(f'{k} {n}' for k, n in sorted(report['kinds'].items()))})",
        f"- completed trials lost: **{len(report['completed_lost'])}** {report['completed_lost'] or ''}",
        f"- trials duplicated (a retry of a trial that had completed): **{len(report['duplicated'])}**",
        f"- RUNNING trials left behind: **{len(report['running_left'])}**",
        f"- result files agree with the study (front recomputed from the study alone): {ok(report['files_agree'])} "
        f"({report['files_detail']}); at each SIGINT exit: {report['sigint_exits_with_files_agreeing']}",
        f"- trials in the study: {report['trials']}; retried: {report['retried']}; worker losses recorded on "
        f"trials: {report['worker_failures_recorded']}; the same candidate fine-tuned twice: "
        f"{report['same_candidate_finetuned_twice']}",
        f"- recovery wall time (fault to the next trial completed, or to the export finished): median "
        f"{recovery[len(recovery) // 2]:.1f} s, max {recovery[-1]:.1f} s",
        f"- final export: exit {report['final_export']['exit_code']}, trial {report['final_export']['trial']}, "
        f"files {', '.join(report['final_export']['files'])}", "",
        "| # | fault | phase | completed before | recovery (s) | recovered |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {f['kind']} | {f['phase']} | {f['complete_before']} | {f['recovery_s']:.1f} | "
              f"{f['recovered']} |" for i, f in enumerate(report["faults"], start=1)]
    (folder / "chaos.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
