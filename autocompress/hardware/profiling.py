"""Profiling a target: time single kernels and whole candidates, append them to CSV, resumably.

Two kinds of measurement feed the predictor:

- kernels: one Conv+BN+ReLU, depthwise conv or Linear at one bit width, exported and timed alone.
  Most configurations are the very kernels random candidates of the profiling models produce (the
  shapes a search will ask about); the rest are drawn broadly so unseen models are covered too.
- models: random candidates of those models timed end to end; they teach the predictor how
  kernel times add up in a whole network (the Q/DQ, residual adds and pooling between kernels).

Whole candidates are timed in several sweeps over the whole plan, minutes apart, and the fastest
sweep counts. A kernel is small and stays in cache: timed alone it reproduces (re-timing 120
kernels a day later, 84% came within 10%, median 3% faster). A whole candidate streams megabytes
of weights through the L3 cache that this virtual machine shares with its neighbours on the host,
and a busy neighbour slows it for minutes at a time: re-timing 48 candidates of the profiling set
a day later, a third came back 15-50% faster. Interference only ever adds time, so the fastest of
sweeps spread over time is the figure that converges.

Every plan item is drawn from its own seed, so an interrupted run re-plans the same items and
skips those (and the sweeps of them) already in the CSV files.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from ..core.analysis import analyze
from ..errors import AutocompressError
from .onnx_export import export_onnx
from ..core.space import Candidate
from ..techniques import apply_candidate
from .candidates import CANDIDATES_PER_BATCH, measure_candidates, model_under_test
from .kernels import KERNEL_FIELDS, Kernel, kernel_unit, kernels_of_candidate
from .measurements import (_MODEL_FIELDS, _TIMING_FIELDS, _Appender, _candidate_key, _fastest_sweeps, _kernel_key,
                           _read_csv, _rewrite_csv, _sweep_timings, _timing_row, read_kernel_measurements,
                           read_model_measurements, read_validation_report, session_level)
from .profile_plan import ProfilePlan, _candidate_plan, _kernel_plan
from .measure import PASSES, LatencyMeasurement, machine_differences, machine_info, measure_interleaved

__all__ = ["ProfilePlan", "add_validation_measurements", "measure_kernels", "run_profile"]

log = logging.getLogger(__name__)

_KERNEL_SHARE_OF_TIME = 0.4  # a time-capped run still leaves time for whole candidates
# Batches timed in interleaved passes: big enough that one pass lasts seconds (longer than a slow
# spell of a shared machine), small enough that an interrupted run loses little.
_KERNELS_PER_BATCH = 250


def run_profile(plan: ProfilePlan, out: Path) -> tuple[list[dict], list[dict]]:
    """Measure what ``plan`` asks for that ``out`` does not hold yet; return all measurements."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    kernels_csv, models_csv = out / "kernels.csv", out / "models.csv"
    done = {_kernel_key(row) for row in read_kernel_measurements(kernels_csv)}
    _measure_in_batches(
        [k for k in _kernel_plan(plan) if _kernel_key(k.to_dict()) not in done], kernels_csv,
        KERNEL_FIELDS + _TIMING_FIELDS, what="kernels", batch=_KERNELS_PER_BATCH,
        deadline=start + 60 * plan.max_minutes * _KERNEL_SHARE_OF_TIME,
        measure=lambda chunk: measure_kernels(chunk, passes=plan.passes, threads=plan.threads),
        row=lambda kernel: {f: getattr(kernel, f) for f in KERNEL_FIELDS})
    done = {_candidate_key(row) for row in _read_csv(models_csv)}  # keys as the CSV holds them: strings
    todo = [(spec, size, candidate, sweep) for sweep in range(plan.sweeps)
            for spec, size, candidate in _candidate_plan(plan)
            if (spec, str(size), candidate.to_json(), str(sweep)) not in done]
    _measure_in_batches(
        todo, models_csv, _MODEL_FIELDS + _TIMING_FIELDS, what="candidates", batch=CANDIDATES_PER_BATCH,
        deadline=start + 60 * plan.max_minutes,
        measure=lambda chunk: measure_candidates([(model_under_test(spec, size), candidate)
                                                  for spec, size, candidate, _ in chunk],
                                                 passes=plan.passes, threads=plan.threads),
        row=_candidate_row)
    return read_kernel_measurements(kernels_csv), read_model_measurements(models_csv)


def add_validation_measurements(report_path: Path, out: Path) -> tuple[int, float | None]:
    """Append the candidates a validation run timed (its ``validation.json``) to ``out/models.csv``,
    every sweep of each, so the next fit learns from them too; returns how many were new, and the
    level of the host in that run's session (``session_level``; None when it re-timed no
    references), recorded on each of its rows so that the fit reads them at the profile's level.

    They are whole candidates timed end to end with the profile's protocol, and the predictor's
    accuracy grows with the candidates it is fit on, if slowly past a few hundred (cross-validated
    over the profile, 50%, 75% and all of its first 568 candidates scored 81%, 85% and 87% within
    10%, and 808 scored 87.4%). A later validation never scores them: it skips candidates the model
    was fit on, so validate again with a new --seed. Adding a report again adds nothing, but records
    its level on the rows it added before (folders from before levels). Refused when the run was
    timed on another machine class or thread count than ``out`` (reports from before
    ``measured_on`` recorded only the hardware model's machine, which is checked instead)."""
    report = read_validation_report(report_path)
    metadata_path = out / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    differences = machine_differences(report.get("measured_on") or report.get("machine") or {},
                                      metadata.get("machine") or machine_info())
    threads = (report.get("threads"), metadata.get("threads"))
    if differences or (None not in threads and threads[0] != threads[1]):
        raise AutocompressError(f"{report_path} was timed on another machine or thread count than {out} "
                                f"({'; '.join(differences) or f'threads: {threads[0]} against {threads[1]}'}); "
                                "validate on the machine the hardware model was profiled on")
    source = f"validation seed {report['seed']}" if "seed" in report else "validation"
    models_csv = out / "models.csv"
    existing = _read_csv(models_csv)
    level = session_level(report, [r for r in _fastest_sweeps(models_csv, existing) if r["source"] != source])
    level_cell = f"{level:.6f}" if level is not None else ""
    if any(r["source"] == source and (r.get("level") or "") != level_cell for r in existing):
        _rewrite_csv(models_csv, _MODEL_FIELDS + _TIMING_FIELDS,
                     [r | {"level": level_cell} if r["source"] == source else r for r in existing])
    done = {_candidate_key(row) for row in existing}
    added = 0
    out.mkdir(parents=True, exist_ok=True)
    with _Appender(models_csv, _MODEL_FIELDS + _TIMING_FIELDS) as sink:
        for row in report["rows"]:
            candidate = Candidate.from_dict(row["candidate"])
            described = _candidate_row((row["model"], int(row["input_size"]), candidate, 0))
            fresh = False
            for sweep, timing in enumerate(_sweep_timings(row)):
                line = described | {"sweep": sweep, "source": source, "level": level_cell} | timing
                if _candidate_key(line) not in done:
                    sink.write(line)
                    fresh = True
            added += fresh
    return added, level


def _measure_in_batches(items: list, path: Path, fields: tuple[str, ...], *, what: str, batch: int, deadline: float,
                        measure, row) -> None:
    """Time ``items`` a batch at a time (``measure``), appending ``row(item)`` and its timing to
    ``path`` after each batch, until done or past ``deadline``."""
    with _Appender(path, fields) as sink, tqdm(total=len(items), desc=what, unit=what[:-1], disable=None) as bar:
        for chunk in _chunks(items, batch):
            if time.monotonic() > deadline:
                log.warning("time budget reached; %s left for the next run: rerun the same command to resume", what)
                break
            timings = measure(chunk)
            _warn_if_busy(timings)
            for item, timing in zip(chunk, timings):
                sink.write(row(item) | _timing_row(timing))
            bar.update(len(chunk))


def _candidate_row(item: tuple[str, int, Candidate, int]) -> dict:
    spec, size, candidate, sweep = item
    kernels = kernels_of_candidate(model_under_test(spec, size).analysis, candidate)  # cached analysis
    return {"model": spec, "input_size": size, "candidate": candidate.to_json(),
            "kernels": json.dumps([[getattr(k, f) for f in KERNEL_FIELDS] for k in kernels]),
            "macs": sum(k.macs for k in kernels), "sweep": sweep}


def measure_kernels(kernels: list[Kernel], *, passes: int = PASSES, threads: int = 1) -> list[LatencyMeasurement]:
    """Export each kernel alone through the same path as a real candidate; time them interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        models = [_export_kernel(kernel, Path(tmp) / f"{i}.onnx") for i, kernel in enumerate(kernels)]
        return measure_interleaved(models, passes=passes, runs=20, threads=threads)


def _export_kernel(kernel: Kernel, path: Path) -> tuple[Path, tuple[int, ...]]:
    """The kernel alone as an ONNX file at ``path``, and the input shape to time it with."""
    unit, example = kernel_unit(kernel)
    analysis = analyze(unit, example)
    candidate = Candidate(bits={analysis.layers[0].name: kernel.bits} if kernel.bits != 32 else {})
    compressed = apply_candidate(unit, candidate, analysis, example)
    calibration = [example.repeat(4, *([1] * (example.dim() - 1)))]
    export_onnx(compressed, example, path, calibration=calibration)
    return path, tuple(example.shape)


def _warn_if_busy(timings: list[LatencyMeasurement]) -> None:
    load = sum(t.background_load for t in timings) / max(1, len(timings))
    if load > 0.25:
        log.warning("other processes kept %.0f%% of the other CPU cores busy while timing; that slows these "
                    "measurements (up to 1.7x on small VMs): profile on an otherwise idle machine", 100 * load)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


