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

import csv
import json
import logging
import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from tqdm import tqdm

from ..analysis import analyze
from ..errors import AutocompressError
from ..export import export_onnx
from ..space import Candidate, Space
from ..techniques import apply_candidate
from .candidates import CANDIDATES_PER_BATCH, light_candidate, measure_candidates, model_under_test, random_candidate
from .kernels import KERNEL_FIELDS, Kernel, kernel_unit, kernels_of_candidate
from .measure import PASSES, LatencyMeasurement, machine_differences, machine_info, measure_interleaved

__all__ = ["ProfilePlan", "add_validation_measurements", "find_reference_row", "measure_kernels",
           "profile_level_ms", "read_kernel_measurements", "read_model_measurements", "read_validation_report",
           "run_profile", "session_level"]

log = logging.getLogger(__name__)

_TIMING_FIELDS = ("best_ms", "median_ms", "p90_ms", "noise")
# source: empty for the profile plan's candidates, "validation ..." for those a validation run timed.
# level: how fast the host ran in that validation's session against the profile's (``session_level``;
# empty: the profile's own, 1). The fit reads every row at the profile's level (``profile_level_ms``).
_MODEL_FIELDS = ("model", "input_size", "candidate", "kernels", "macs", "sweep", "source", "level")
_KERNEL_SHARE_OF_TIME = 0.4  # a time-capped run still leaves time for whole candidates
# Batches timed in interleaved passes: big enough that one pass lasts seconds (longer than a slow
# spell of a shared machine), small enough that an interrupted run loses little.
_KERNELS_PER_BATCH = 250


@dataclass(frozen=True)
class ProfilePlan:
    """What ``run_profile`` measures. The defaults take about 45 minutes on a 2-core x86 machine;
    ``max_minutes`` caps a run (kernels get 40% of it), the model is fit on what was measured, and
    a rerun resumes where it stopped."""

    models: tuple[str, ...] = ("resnet18", "mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small")
    input_sizes: tuple[int, ...] = (32, 64)
    kernels: int = 2000
    heavy_kernels: int = 600  # more kernels of those models, drawn in proportion to their MACs
    candidates: int = 480
    light_candidates: int = 10  # per model and size, besides its uncompressed model
    warm_start_policies: bool = True  # the search's uniform policies of each model and size
    shared_share: float = 0.65  # share of kernels taken from the profiling models' candidates
    seed: int = 0
    threads: int = 1
    passes: int = PASSES  # interleaved timing passes (see measure_interleaved)
    sweeps: int = 2  # sweeps over all whole candidates, minutes apart; the fastest counts
    max_minutes: float = 30.0

    @classmethod
    def from_dict(cls, data: dict) -> ProfilePlan:
        """The plan a hardware model's metadata.json records (``asdict``), lists back as tuples;
        keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        if self.kernels < 1 or min(self.heavy_kernels, self.candidates, self.light_candidates) < 0 \
                or not self.models or not self.input_sizes:
            raise ValueError(f"a profile needs kernels >= 1, heavy kernels, candidates and light candidates >= 0, "
                             f"models and input sizes; got {self}")
        if self.passes < 1 or self.sweeps < 1 or self.max_minutes <= 0:
            raise ValueError(f"a profile needs passes >= 1, sweeps >= 1 and max_minutes > 0; got {self.passes=} "
                             f"{self.sweeps=} {self.max_minutes=}")


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


def session_level(report: dict, model_rows: list[dict]) -> float | None:
    """How fast the host ran in a validation's session against the profile's: the median, over the
    candidates of ``model_rows`` it re-timed (its ``references``), of their time then over their
    time at the profile's level. Why it matters: a shared cloud host's speed differs by a few
    percent from session to session (the Intel AMX class ran its validations of seeds 1-5 at
    1.00-1.03x the profile's level and seeds 6-8 at 0.96x), and rows fit at their own session's
    level teach the predictor that level as if it were the candidates'. Read at the profile's
    level, refits left-future-out scored fresh seeds better (``benchmarks/level_calibration.py``).
    None when no reference is found in ``model_rows``."""
    ratios = [reference["measured_ms"] / profile_level_ms(model_rows[index])
              for reference in report.get("references") or []
              if (index := find_reference_row(reference, model_rows)) is not None]
    return float(statistics.median(ratios)) if ratios else None


def find_reference_row(reference: dict, model_rows: list[dict]) -> int | None:
    """The index in ``model_rows`` of the measured candidate a validation re-timed as a reference:
    by its candidate (reports since levels record it), else by model, size and the figure it had
    in models.csv (older reports); None when absent or ambiguous."""
    if "candidate" in reference:
        matches = [i for i, r in enumerate(model_rows) if r["model"] == reference["model"]
                   and r["input_size"] == int(reference["input_size"]) and r["candidate"] == reference["candidate"]]
    else:
        matches = [i for i, r in enumerate(model_rows) if r["model"] == reference["model"]
                   and r["input_size"] == int(reference["input_size"])
                   and abs(r["best_ms"] - reference["profiled_ms"]) < 1e-6]
    return matches[0] if len(matches) == 1 else None


def profile_level_ms(row: dict) -> float:
    """A models.csv row's latency (its fastest sweep) at the profile's level: what the predictor is
    fit on and predicts."""
    return row["best_ms"] / row["level"]


def read_validation_report(path: Path) -> dict:
    """A report ``autocompress validate-predictor`` wrote (its validation.json, or the folder);
    AutocompressError, in one line that says what to pass, for anything else."""
    path = path / "validation.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_text())
        rows = report["rows"]
        if not all({"model", "input_size", "candidate", "sweeps_ms", "measured_ms", "predicted_ms"} <= set(r)
                   for r in rows):
            raise KeyError("model, input_size, candidate, sweeps_ms, measured_ms, predicted_ms")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AutocompressError(f"{path} is not a validation report ({type(exc).__name__}: {exc}); pass the "
                                "validation.json (or its folder) that `autocompress validate-predictor` wrote") from exc
    return report


def _sweep_timings(row: dict) -> list[dict]:
    """A validation row's timing in each sweep, as models.csv columns. Reports before
    ``sweeps_timing`` kept only each sweep's best time, and the fastest sweep's median and spread;
    what they did not keep is left empty."""
    if "sweeps_timing" in row:
        return [_timing_row(LatencyMeasurement(**timing)) for timing in row["sweeps_timing"]]
    fastest = row["sweeps_ms"].index(min(row["sweeps_ms"]))
    return [{"best_ms": f"{best:.6f}", "p90_ms": "",
             "median_ms": f"{row['measured_median_ms']:.6f}" if sweep == fastest else "",
             "noise": f"{row['measurement_spread']:.4f}" if sweep == fastest else ""}
            for sweep, best in enumerate(row["sweeps_ms"])]


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
    layer = analysis.layers[0].name
    candidate = Candidate(bits={layer: kernel.bits} if kernel.bits != 32 else {})
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


def _kernel_plan(plan: ProfilePlan) -> list[Kernel]:
    """``plan.kernels`` kernels (a ``shared_share`` of them from the profiling models' candidates,
    drawn uniformly; the rest broad), then ``plan.heavy_kernels`` more from those candidates,
    drawn in proportion to their MACs.

    Why the heavy draws: a network's time, and so its prediction error, is dominated by its few
    largest kernels, while a uniform draw picks a kernel by how many distinct shapes there are.
    The mobile nets' many 1x1 convolutions then outnumber ResNet's 3x3 ones, and the kernels
    over 0.2 ms were predicted with twice the error of the small ones (log RMS 0.42 against 0.14
    for float convs, cross-validated). The heavy draws come after the uniform ones, with their
    own seeds, so a profile taken before them stays valid and a rerun only adds them."""
    pool = sorted({k for k in _kernels_of_profiling_models(plan)}, key=lambda k: tuple(k.to_dict().values()))
    kernels, seen = [], set()

    def draw(count: int, tag: str, pick) -> None:
        wanted = len(kernels) + count
        for i in range(count * 3):  # deduplication drops some draws
            if len(kernels) == wanted:
                break
            rng = random.Random(f"{tag}-{plan.seed}-{i}")
            kernel = pick(rng, rng.choice((32, 16, 8, 4)))
            if kernel not in seen:
                seen.add(kernel)
                kernels.append(kernel)

    def uniform(rng: random.Random, bits: int) -> Kernel:
        if rng.random() < plan.shared_share and pool:
            return replace(rng.choice(pool), bits=bits)
        return _broad_kernel(rng, bits)

    macs = [k.macs for k in pool]
    draw(plan.kernels, "kernel", uniform)
    if pool:
        draw(plan.heavy_kernels, "heavy-kernel", lambda rng, bits: replace(
            rng.choices(pool, weights=macs)[0], bits=bits))
    return kernels


def _kernels_of_profiling_models(plan: ProfilePlan) -> list[Kernel]:
    kernels = []
    for spec in plan.models:
        for size in plan.input_sizes:
            target = model_under_test(spec, size)
            for i in range(20):
                candidate = random_candidate(target, random.Random(f"pool-{plan.seed}-{spec}-{size}-{i}"))
                kernels += kernels_of_candidate(target.analysis, candidate)
    return [Kernel(k.op, 32, k.cin, k.cout, k.kernel, k.stride, k.h, k.w, k.out_h, k.out_w, k.groups) for k in kernels]


def _broad_kernel(rng: random.Random, bits: int) -> Kernel:
    """Shapes beyond the profiling models: odd channel counts, grouped convs, big kernels, MLP rows."""
    def channels():
        c = int(math.exp(rng.uniform(math.log(8), math.log(1024))))
        return max(8, c // 8 * 8) if rng.random() < 0.6 else c

    op = rng.choices(("conv", "dwconv", "linear"), weights=(0.55, 0.3, 0.15))[0]
    if op == "linear":
        rows = rng.choice((1, 1, 4, 16, 64))
        return Kernel("linear", bits, channels(), channels(), 1, 1, rows, 1, rows, 1)
    size = rng.choice((2, 4, 7, 8, 14, 16, 28, 32, 56, 64))
    kernel = rng.choice((1, 3, 3, 5, 7)) if op == "conv" else rng.choice((3, 5, 7))
    stride = rng.choice((1, 1, 2))
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    if op == "dwconv":
        c = channels()
        return Kernel("dwconv", bits, c, c, kernel, stride, size, size, out, out, c)
    cin, cout = (3 if rng.random() < 0.05 else channels()), channels()
    groups = 1
    if rng.random() < 0.15:  # grouped (RegNet/ResNeXt style)
        groups = rng.choice([g for g in (2, 4, 8, 16) if cin % g == 0 and cout % g == 0] or [1])
    while cout * cin // groups * kernel * kernel * out * out > 3e8:  # keep each measurement short
        cin, cout = max(groups, cin // 2 // groups * groups), max(groups, cout // 2 // groups * groups)
    return Kernel("conv", bits, cin, cout, kernel, stride, size, size, out, out, groups)


def _candidate_plan(plan: ProfilePlan) -> list[tuple[str, int, Candidate]]:
    """``plan.candidates`` random candidates, spread evenly over models and sizes; then, for each
    model and size, its uncompressed model and ``plan.light_candidates`` lightly compressed ones
    (``light_candidate``: few changes, often blocks skipped, as boundary repair leaves them).

    Why the extra ones: a big, nearly all-float network streams more weights than the cache
    holds, and runs slower than its kernels suggest (the uncompressed ResNet-18 at 32x32 was
    predicted at 0.73 ms and measured at 1.1-2.1 ms). Random draws rarely land there, yet the
    uncompressed model is what a budget of "0.5x" is measured against.

    Then the uniform policies every search starts from (``search.warm_start_policies``: all int8,
    and uniform pruning in int8 and in float): the search exports them often, and random draws
    never come near them. Before they were profiled, 28% of those policies were predicted within
    10% on the Intel (AMX) class, most of them far too slow: uniform 75% pruning in float ran in
    0.07 ms where 0.18 ms was predicted (MobileNet-V2 at 32x32), and a search that believes that
    rejects the very candidates that fit a tight budget. They come last, so a profile taken
    before them stays valid and a rerun only adds them."""
    from ..search import warm_start_policies  # here: the search imports this package

    items = []
    for i in range(plan.candidates):
        spec = plan.models[i % len(plan.models)]
        size = plan.input_sizes[(i // len(plan.models)) % len(plan.input_sizes)]
        target = model_under_test(spec, size)
        items.append((spec, size, random_candidate(target, random.Random(f"profile-{plan.seed}-{i}"))))
    for spec in plan.models:
        for size in plan.input_sizes:
            target = model_under_test(spec, size)
            items.append((spec, size, Space(target.analysis).default()))
            items += [(spec, size, light_candidate(target, random.Random(f"light-{plan.seed}-{spec}-{size}-{i}")))
                      for i in range(plan.light_candidates)]
    for spec in plan.models if plan.warm_start_policies else ():
        for size in plan.input_sizes:
            space = Space(model_under_test(spec, size).analysis)
            items += [(spec, size, space.from_params(params)) for params in warm_start_policies(space).values()]
    return items


def _kernel_key(row: dict) -> tuple:
    return tuple(str(row[f]) for f in KERNEL_FIELDS)


def _candidate_key(row: dict) -> tuple[str, str, str, str]:
    return row["model"], str(row["input_size"]), row["candidate"], str(row.get("sweep") or 0)


def _timing_row(timing: LatencyMeasurement) -> dict:
    return {"best_ms": f"{timing.best_ms:.6f}", "median_ms": f"{timing.median_ms:.6f}",
            "p90_ms": f"{timing.p90_ms:.6f}", "noise": f"{timing.noise:.4f}"}


def read_kernel_measurements(path: Path) -> list[dict]:
    """Rows of kernels.csv with numbers parsed; [] when the file does not exist yet."""
    return _parse_rows(path, _read_csv(path), _parse_kernel_row)


def _parse_kernel_row(raw: dict) -> dict:
    return ({f: (raw[f] if f == "op" else _number(raw, f, int)) for f in KERNEL_FIELDS}
            | {f: _number(raw, f, float) for f in _TIMING_FIELDS})


def read_model_measurements(path: Path) -> list[dict]:
    """One row per candidate of models.csv, numbers parsed: its fastest sweep's timing, and
    ``sweeps``, how many sweeps timed it. [] when the file does not exist yet."""
    return _fastest_sweeps(path, _read_csv(path))


def _fastest_sweeps(path: Path, raw_rows: list[dict]) -> list[dict]:
    """``read_model_measurements`` of the rows already read from ``path``."""
    fastest: dict[tuple, dict] = {}
    for row in _parse_rows(path, raw_rows, _parse_model_row):
        key = (row["model"], row["input_size"], row["candidate"])
        seen = fastest.get(key)
        if seen is None or row["best_ms"] < seen["best_ms"]:
            fastest[key] = row | {"sweeps": (seen or {}).get("sweeps", 0) + 1}
        else:
            seen["sweeps"] += 1
    return list(fastest.values())


def _parse_model_row(raw: dict) -> dict:
    row = raw | {"input_size": _number(raw, "input_size", int), "macs": _number(raw, "macs", int),
                 "source": raw.get("source") or "", "level": _number(raw, "level", float, empty=1.0)} | {
        f: _number(raw, f, float, empty=math.nan) for f in _TIMING_FIELDS}  # empty: not kept (``_sweep_timings``)
    if not 0 < row["level"] < math.inf:  # the fit divides by it (``profile_level_ms``)
        raise ValueError(f"level {raw['level']!r} is not a positive speed ratio")
    row.pop("sweep", None)
    return row


def _number(raw: dict, field: str, kind: type, *, empty: float | None = None) -> float:
    """``raw[field]`` as ``kind``; ``empty`` stands for an empty or missing cell where one is allowed."""
    cell = raw.get(field)
    if not cell and empty is not None:
        return empty
    try:
        return kind(cell)
    except (TypeError, ValueError):
        raise ValueError(f"{field} {cell!r} is not a number") from None


def _parse_rows(path: Path, raw_rows: list[dict], parse) -> list[dict]:
    """``parse`` applied to each row read from ``path``; a cell that does not parse stops the read
    with one line naming the file, its line and the fix, instead of a traceback."""
    parsed = []
    for line, raw in enumerate(raw_rows, start=2):  # line 1 is the header
        try:
            parsed.append(parse(raw))
        except ValueError as exc:
            raise AutocompressError(f"{path} line {line} does not parse ({exc}); fix or delete that row: "
                                    "`autocompress profile` measures a deleted plan candidate or kernel again, "
                                    "`--add-validation` adds a validation's candidates again") from None
    return parsed


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _rewrite_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    """Replace ``path`` with ``rows`` under ``fields`` (missing cells empty) in one step, so that
    an interrupted rewrite leaves the old file whole."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def _read_header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle), [])


class _Appender:
    """Append rows to a CSV file and flush each one, so a killed run loses at most one measurement."""

    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.path, self.fields = path, fields

    def __enter__(self):
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new and tuple(_read_header(self.path)) != self.fields:
            self._rewrite_with_new_header()
        self.handle = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.fields)
        if new:
            self.writer.writeheader()
        return self

    def _rewrite_with_new_header(self) -> None:
        """A file from an older version (fewer columns): keep its rows, the new columns left empty."""
        _rewrite_csv(self.path, self.fields, _read_csv(self.path))

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.handle.flush()

    def __exit__(self, *exc) -> None:
        self.handle.close()
