"""The measurement files of a hardware model: the CSV schema of ``kernels.csv`` and
``models.csv``, how they are read (each cell checked, one-line errors naming file, line and
column), appended to and rewritten, and the session levels validation rows carry.

A file may be gzipped (``models.csv.gz``, as installed packages ship them): readers take either.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import statistics
from pathlib import Path

from ..files import write_csv_atomic
from ..errors import AutocompressError
from .kernels import KERNEL_FIELDS
from .measure import LatencyMeasurement

__all__ = ["MODEL_FIELDS", "TIMING_FIELDS", "find_reference_row", "measurement_file", "profile_level_ms", "read_kernel_measurements",
           "read_model_measurements", "read_validation_report", "session_level"]

_TIMING_FIELDS = ("best_ms", "median_ms", "p90_ms", "noise")
# source: empty for the profile plan's candidates, "validation ..." for those a validation run timed.
# level: how fast the host ran in that validation's session against the profile's (``session_level``;
# empty: the profile's own, 1). The fit reads every row at the profile's level (``profile_level_ms``).
_MODEL_FIELDS = ("model", "input_size", "candidate", "kernels", "macs", "sweep", "source", "level")
TIMING_FIELDS, MODEL_FIELDS = _TIMING_FIELDS, _MODEL_FIELDS


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
        except (ValueError, KeyError, TypeError) as exc:  # a bad cell, a missing column, a cut row
            reason = f"no {exc} column" if isinstance(exc, KeyError) else exc
            raise AutocompressError(f"{path} line {line} does not parse ({reason}); fix or delete that row: "
                                    "`autocompress profile` measures a deleted plan candidate or kernel again, "
                                    "`--add-validation` adds a validation's candidates again") from None
    return parsed


def measurement_file(path: Path) -> Path:
    """``path``, or its gzipped twin (``models.csv.gz``) where only that exists."""
    zipped = path.with_name(path.name + ".gz")
    return zipped if not path.exists() and zipped.exists() else path


def _open_text(path: Path):
    path = measurement_file(path)
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="")


def _read_csv(path: Path) -> list[dict]:
    if not measurement_file(path).exists():
        return []
    try:
        with _open_text(path) as handle:
            return list(csv.DictReader(handle))
    except (csv.Error, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:  # binary junk, a cut .gz
        raise AutocompressError(f"{measurement_file(path)} is not a readable CSV file ({type(exc).__name__}: {exc}); "
                                "restore it from a copy, or profile again into a new --out folder") from None


def _rewrite_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    """Replace ``path`` with ``rows`` under ``fields`` (missing cells empty) in one step, so that
    an interrupted rewrite leaves the old file whole."""
    write_csv_atomic(path, fields, rows)


def _read_header(path: Path) -> list[str]:
    with _open_text(path) as handle:
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
