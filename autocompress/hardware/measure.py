"""The one latency measurement protocol: a fixed session of the target, warm-up runs, then timed runs.

Every latency autocompress reports (benchmarks, predictor training data, export cards) comes
from ``measure_latency``, so figures are comparable with each other.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import targets  # noqa: F401  (registers them)
from ..core.target import DEFAULT_TARGET, default_target, target as target_named

__all__ = ["PASSES", "SWEEPS", "LatencyMeasurement", "machine_differences", "machine_info", "measure_in_sweeps",
           "measure_interleaved", "measure_latency"]


PASSES = 12  # interleaved passes per measurement (see measure_interleaved)
SWEEPS = 3  # measurements of a few models, spread by pauses (see measure_in_sweeps)


@dataclass(frozen=True)
class LatencyMeasurement:
    median_ms: float
    p90_ms: float
    noise: float  # median absolute deviation / median: 0.01 means runs scatter by about 1%
    runs: int  # timed runs in all
    threads: int
    provider: str  # the runtime that timed it, as its target describes it (``Target.session_description``)
    rounds: int = 1  # rounds (or interleaved passes) whose medians were combined
    background_load: float = 0.0  # share of the other CPU cores busy meanwhile (other processes)
    best_ms: float = 0.0  # the fastest run: the reproducible figure on a shared machine (see below)

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(onnx_path: str | Path, input_shape: tuple[int, ...], *, threads: int = 1, warmup: int = 10,
                    runs: int = 50, rounds: int = 1, pause_s: float = 0.1,
                    target: str = DEFAULT_TARGET) -> LatencyMeasurement:
    """Median and p90 latency (ms) of one inference on a random input of ``input_shape``.

    With ``rounds`` > 1 the runs are split into that many rounds, ``pause_s`` apart, and the median
    of the round medians is reported: on a shared machine the speed changes (by up to 1.7x here)
    as other work comes and goes, and rounds spread over time sample it as it comes.
    """
    if runs < 3 or warmup < 0 or threads < 1 or rounds < 1 or pause_s < 0:
        raise ValueError(f"need runs >= 3, warmup >= 0, threads >= 1, rounds >= 1, pause_s >= 0; got {runs=} "
                         f"{warmup=} {threads=} {rounds=} {pause_s=}")
    load = _BackgroundLoad()
    runtime = target_named(target)
    session, feed = runtime.open_session(onnx_path, input_shape, threads=threads)
    _timed_runs(session, feed, warmup)
    per_round = max(3, runs // rounds)
    medians, times = [], []
    for index in range(rounds):
        if index:
            time.sleep(pause_s)
        batch = _timed_runs(session, feed, per_round)
        medians.append(statistics.median(batch))
        times += batch
    median = statistics.median(medians)
    mad = statistics.median(abs(t - median) for t in times)
    return LatencyMeasurement(median, float(np.percentile(times, 90)), mad / median, len(times), threads,
                              runtime.session_description,
                              rounds, load.share(), min(times))


def measure_interleaved(models: list[tuple[str | Path, tuple[int, ...]]], *, passes: int = PASSES, runs: int = 20,
                        threads: int = 1, warmup: int = 5,
                        target: str = DEFAULT_TARGET) -> list[LatencyMeasurement]:
    """Time many models in ``passes`` interleaved passes (all models once, then all again, ...).

    This is how profiling, validation and export cards time things. On a shared machine the
    speed changes as other tenants' cache and memory traffic comes and goes: timing one
    EfficientNet-B0 candidate back to back for 4 minutes here, the fastest of 20 runs ranged from
    1.7 to 4.0 ms, and a slow spell lasted about 5 seconds (the correlation between successive
    figures fell to 0.14 at 4.6 s apart). Passes over a batch of models are seconds apart, so each
    model meets the machine in many independent states. Interference only ever adds time, so
    ``best_ms``, the fastest run of all passes (as ``timeit`` advises), is the figure that
    reproduces. Medians and p90s are reported as well.

    Each model's session is opened and warmed up once and kept across the passes, which also
    makes a pass cheap. Measuring 72 random candidates twice
    (``benchmarks/measurement_reproducibility.py``) in a noisy hour, 94% came within 10% of
    themselves this way, against 71% with a fresh session for each of 5 passes; in a quiet hour,
    100% against 97%.
    """
    if passes < 1 or runs < 1:
        raise ValueError(f"need passes >= 1 and runs >= 1, got {passes=} {runs=}")
    runtime = target_named(target)
    sessions = [runtime.open_session(path, shape, threads=threads) for path, shape in models]
    for session, feed in sessions:
        _timed_runs(session, feed, warmup)
    medians: list[list[float]] = [[] for _ in models]
    p90s: list[list[float]] = [[] for _ in models]
    loads: list[list[float]] = [[] for _ in models]
    bests: list[list[float]] = [[] for _ in models]
    for _ in range(passes):
        for index, (session, feed) in enumerate(sessions):
            load = _BackgroundLoad()
            times = _timed_runs(session, feed, runs)
            medians[index].append(statistics.median(times))
            p90s[index].append(float(np.percentile(times, 90)))
            loads[index].append(load.share())
            bests[index].append(min(times))
    results = []
    for per_pass, p90, load, best in zip(medians, p90s, loads, bests):
        median = statistics.median(per_pass)
        spread = statistics.median(abs(m - median) for m in per_pass) / median
        results.append(LatencyMeasurement(median, statistics.median(p90), spread, runs * passes, threads,
                                          runtime.session_description,
                                          passes, statistics.mean(load), min(best)))
    return results


def measure_in_sweeps(models: list[tuple[str | Path, tuple[int, ...]]], *, sweeps: int = SWEEPS,
                      pause_s: float = 20.0, **interleaved) -> list[tuple[LatencyMeasurement, list[float]]]:
    """``measure_interleaved`` ``sweeps`` times, ``pause_s`` seconds apart; for each model, its
    fastest sweep and every sweep's ``best_ms``.

    Profiling and validation time each candidate in sweeps over hundreds of them, minutes apart,
    and keep the fastest sweep: the host's speed drifts over minutes as well as seconds (in the
    profile's two sweeps, runs of 70 consecutive candidates sat up to 8-10% slower in one sweep
    than in the other). A few models (an export card, the points ``export --best-under`` checks)
    are timed in seconds, so their sweeps are spread by pausing instead, and their figure is
    comparable with what the hardware model was fit on."""
    if sweeps < 1 or pause_s < 0:
        raise ValueError(f"need sweeps >= 1 and pause_s >= 0, got {sweeps=} {pause_s=}")
    results = []
    for sweep in range(sweeps):
        if sweep:
            time.sleep(pause_s)
        results.append(measure_interleaved(models, **interleaved))
    return [(min(per_model, key=lambda m: m.best_ms), [m.best_ms for m in per_model]) for per_model in zip(*results)]


def _timed_runs(session, feed: dict, runs: int) -> list[float]:
    """``runs`` inferences, each timed alone (ms)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return times


class _BackgroundLoad:
    """How busy the *other* CPU cores were between construction and ``share()``, from /proc/stat
    minus this process's own CPU time. On the 2-core virtual machines we develop on, one busy
    neighbour core slows single-threaded ONNX Runtime by up to 1.7x, so profiling and validation
    report it next to their figures."""

    def __init__(self) -> None:
        self.start = (time.monotonic(), time.process_time(), _busy_cpu_seconds())

    def share(self) -> float:
        wall, own, busy = time.monotonic(), time.process_time(), _busy_cpu_seconds()
        cores = os.cpu_count() or 1
        if busy is None or self.start[2] is None or cores < 2 or wall <= self.start[0]:
            return 0.0
        others = (busy - self.start[2]) - (own - self.start[1])
        return float(min(1.0, max(0.0, others / ((wall - self.start[0]) * (cores - 1)))))


def _busy_cpu_seconds() -> float | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None  # not Linux: no background figure
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict:
    """This host as the default target records a machine (what a latency depends on besides the model)."""
    return default_target().machine()


def machine_differences(measured: dict, here: dict) -> list[str]:
    """What differs between two ``machine_info`` records in what sets a latency ([]: the same class)."""
    return default_target().machine_differences(measured, here)


