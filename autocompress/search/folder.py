"""The search folder: one object that knows every file a search writes and reads there.

``search.json`` (what was searched: the problem, budget, fine-tune settings, host level),
``study.journal`` (the Optuna study, the one source of truth for trials, unless the search names
another storage; ``study.db`` in folders of earlier versions), the results (``pareto.csv``, ``pareto.json``, ``trials.csv``, ``pareto.png``,
``pareto.html``) and the cached baseline. The search and the export find them through here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from ..errors import AutocompressError, ResultsError
from ..hardware.host_level import HostLevel
from ..files import atomic_path, disk_full_message, is_disk_full
from .pareto import (_FRONT_COLUMNS, _TRIAL_COLUMNS, PARETO_JSON_SCHEMA, TrialRecord, _check_baseline, best_under,
                     pareto_front, records_from_study)
from .problem import ProblemSpec
from .storage import check_storage, is_journal, open_storage, storage_failure

__all__ = ["STUDY_NAME", "SearchFolder", "front_document", "load_front", "write_results"]

STUDY_NAME = "autocompress"
_SETTINGS_KEYS = ("problem", "budget", "budget_ms", "finetune")  # what export reads
RESULT_FILES = ("pareto.csv", "pareto.json", "trials.csv", "pareto.png", "pareto.html")


@dataclass(frozen=True)
class SearchFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def search_json(self) -> Path:
        return self.path / "search.json"

    @property
    def default_storage(self) -> str:
        """The study inside the folder, absolute so that it opens from any working directory: the
        journal file, or the SQLite file a search of an earlier version wrote there."""
        legacy = self.path / "study.db"
        if legacy.is_file():
            return f"sqlite:///{legacy.resolve()}"
        return str((self.path / "study.journal").resolve())

    def settings(self) -> dict:
        """search.json as written; a one-line error when the folder holds no search."""
        if not self.search_json.is_file():
            raise AutocompressError(f"{self.path} holds no search (no search.json); run `autocompress search ... "
                                    f"--out {self.path}` first")
        try:
            settings = json.loads(self.search_json.read_text())
            missing = [key for key in _SETTINGS_KEYS if key not in settings]
            if missing:
                raise KeyError(", ".join(missing))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            what = f"lacks {exc}" if isinstance(exc, KeyError) else f"is unreadable ({type(exc).__name__}: {exc})"
            raise ResultsError(f"{self.search_json} {what}: it is damaged or not a search's; rerun the search "
                               f"command that wrote {self.path} to rewrite it (its trials are kept in the study), "
                               "or point at another folder written by `autocompress search --out DIR`") from exc
        return settings

    def recorded(self) -> dict | None:
        """search.json as written, None where the folder has none or it cannot be read (a resumed
        search then goes by its study; ``settings`` explains to a command that needs the file)."""
        try:
            return json.loads(self.search_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None

    def spec(self) -> ProblemSpec:
        """The problem the search was run on, to build it again (export, ``pareto --test``)."""
        try:
            return ProblemSpec(**self.settings()["problem"])
        except TypeError as exc:
            raise ResultsError(f"{self.search_json} does not describe a search ({exc}); point at a folder written "
                               "by `autocompress search --out DIR`") from exc

    def host_level(self) -> HostLevel | None:
        """The level the search predicted at (its own candidates', or the host's), if it set one."""
        level = (self.recorded() or {}).get("host_level")
        return HostLevel.from_dict(level) if level else None

    def identity(self) -> dict | None:
        """What a run must match to resume this search (``SearchSettings.identity``), None where not recorded."""
        return (self.recorded() or {}).get("identity")

    def storage(self) -> str:
        """Where the study lives: the storage the search recorded, else the folder's own study.db."""
        recorded = self.settings()
        # where search.json records it (settings by concern); a folder written before that, at the top
        execution = recorded.get("settings", {}).get("execution", {})
        return execution.get("storage") or recorded.get("storage") or self.default_storage

    def load_study(self, *, fix: str = "restore it from a copy, or rerun the search") -> optuna.Study:
        """The search's study, for reading; one-line errors for a missing, corrupt or unreachable one.

        Opening it creates and changes nothing: the storage named in search.json may lie outside
        this folder, and a file read from a folder must not choose where we write."""
        storage = self.storage()
        check_storage(storage, fix=fix, parameters=())
        if is_journal(storage) and not Path(storage).is_file():
            raise ResultsError(f"{self.path}: its study {storage} does not exist; rerun the search that wrote "
                               f"{self.path}, or restore the study from a copy")
        try:
            return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage, repair=False))
        except KeyError as exc:
            raise AutocompressError(f"{self.path}: its study is missing from {storage}; rerun the search") from exc
        except (ValueError, ImportError, optuna.exceptions.StorageInternalError,
                sqlalchemy.exc.SQLAlchemyError) as exc:
            raise storage_failure(storage, exc) from exc

    def write_results(self, records: Sequence[TrialRecord], *, budget_ms: float | None,
                      baseline: Mapping[str, Any]) -> dict[str, Path]:
        return write_results(self.path, records, budget_ms=budget_ms, baseline=baseline)

    def load_front(self) -> dict[str, Any]:
        return load_front(self.path)

    def live_front(self) -> dict[str, Any]:
        """pareto.json's document as of now, recomputed from the study (which a running search
        keeps telling; pareto.json is written when a search stops)."""
        settings = self.settings()
        records = records_from_study(self.load_study())
        return front_document(records, budget_ms=settings["budget_ms"], baseline=settings["baseline"])


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]], score: str = "accuracy") -> None:
    headed = [score if k == "accuracy" else k for k in columns]
    with atomic_path(path) as partial, partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headed)
        for row in rows:
            writer.writerow(["" if row[k] is None else row[k] for k in columns])


def _front_row(r: TrialRecord, baseline: Mapping[str, Any]) -> dict[str, Any]:
    # Every TrialRecord field, so TrialRecord.from_dict(point) rebuilds the record exactly.
    return {**r.to_dict(), "size_ratio": r.size_bytes / baseline["size_bytes"],
            "latency_ratio": r.latency_ms / baseline["latency_ms"]}


def front_document(records: Sequence[TrialRecord], *, budget_ms: float | None,
                   baseline: Mapping[str, Any]) -> dict[str, Any]:
    """What pareto.json holds for these records: budget, baseline, best under budget, front points."""
    _check_baseline(baseline)
    front = pareto_front(records)
    best = best_under(front, budget_ms)
    return {
        "schema": PARETO_JSON_SCHEMA, "budget_ms": budget_ms,
        "baseline": {"accuracy": float(baseline["accuracy"]), "latency_ms": float(baseline["latency_ms"]),
                     "size_bytes": int(baseline["size_bytes"])},
        # what "accuracy" holds: the task's score on the validation split (top-1 accuracy by default)
        "score": baseline.get("score", "accuracy"),
        "best_under_budget": None if best is None else best.number, "n_trials": len(records),
        "points": [_front_row(r, baseline) for r in front],
    }


def write_results(
    out_dir: str | Path, records: Sequence[TrialRecord], *, budget_ms: float | None, baseline: Mapping[str, Any],
) -> dict[str, Path]:
    """Write pareto.csv/.json, trials.csv, pareto.png and pareto.html into out_dir; returns file name -> path."""
    out = Path(out_dir)
    document = front_document(records, budget_ms=budget_ms, baseline=baseline)
    front = [TrialRecord.from_dict(point) for point in document["points"]]
    best = best_under(front, budget_ms)
    paths = {name: out / name for name in RESULT_FILES}
    try:
        out.mkdir(parents=True, exist_ok=True)
        compact = [{**row, "candidate": json.dumps(row["candidate"], sort_keys=True, separators=(",", ":"))}
                   for row in document["points"]]
        score = document["score"]  # the accuracy column is headed by the score's name
        _write_csv(paths["pareto.csv"], _FRONT_COLUMNS, compact, score)
        _write_csv(paths["trials.csv"], _TRIAL_COLUMNS, [r.to_dict() for r in records], score)
        with atomic_path(paths["pareto.json"]) as partial:
            partial.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        from .plots import plot_html, plot_png  # matplotlib and plotly load only when plotting

        with atomic_path(paths["pareto.png"]) as partial:
            plot_png(partial, records, front, best, budget_ms, baseline)
        with atomic_path(paths["pareto.html"]) as partial:
            plot_html(partial, records, front, budget_ms, baseline)
    except OSError as exc:
        if is_disk_full(exc):
            raise ResultsError(disk_full_message(out)) from exc
        raise ResultsError(f"cannot write results into {out} ({exc.strerror or exc}); pass a writable --out folder") \
            from exc
    return paths


def load_front(out_dir: str | Path) -> dict[str, Any]:
    """pareto.json of a search folder, as written: budget_ms, baseline, best_under_budget, n_trials, points.

    Each point is a TrialRecord's fields plus size_ratio and latency_ratio; ``TrialRecord.from_dict``
    turns it back into a record for ``summary_table``.
    """
    path = Path(out_dir) / "pareto.json"
    fix = f"run `autocompress search ... --out {out_dir}` first"
    if not path.is_file():
        raise ResultsError(f"no search results in {out_dir}: {path.name} is missing; {fix}")
    try:
        document = json.loads(path.read_text())
        for point in document["points"]:
            TrialRecord.from_dict(point)  # checked here so callers meet one error, naming the file
        _check_baseline(document["baseline"])
        if "budget_ms" not in document:  # present even without a budget (null)
            raise KeyError("budget_ms")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ResultsError(f"{path} is unreadable or incomplete ({type(exc).__name__}: {exc}); {fix}") from exc
    return document
