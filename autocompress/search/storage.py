"""Where a study lives: opened, and checked before anything is created or written there.

A storage is an SQLAlchemy URL (``sqlite:///study.db``, ``postgresql+psycopg2://...``) or the
path of an Optuna journal file. A search folder's own study is a journal file, ``study.journal``:
Optuna's documentation recommends its file journal, not SQLite, for several processes on one
machine (SQLite "may cause deadlocks and serious performance issues"), and with SQLite two
processes could both pop the same queued trial (optuna#4002), which our warm starts, repairs and
retries rely on. Every writer appends under a lock file, a reader never blocks one, and
optuna-dashboard opens the file as it is. Folders written by earlier versions keep their
``study.db``.

A study file that is corrupt, a database server that does not answer, a database driver
that is not installed: each is one line naming the storage and what to do, found in a second at
most, and the storage is left exactly as it was (a SQLite file is only opened read-only here).
Optuna and SQLAlchemy would report them as a bad URL, with several lines of SQL and a link, or
keep retrying a dead server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from ..errors import AutocompressError, ResultsError

__all__ = ["check_storage", "is_journal", "open_storage", "search_fix", "storage_failure"]

_EXAMPLE = "runs/x/study.journal, sqlite:///study.db or postgresql+psycopg2://user@host/db"
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
_TIMEOUT_S = 5.0
JOURNAL_SUFFIXES = (".journal", ".log")  # ours, and the one Optuna's documentation uses

log = logging.getLogger(__name__)


def check_storage(url: str, *, fix: str, parameters: tuple[str, ...] = ("storage",)) -> None:
    """Raise a one-line AutocompressError when the Optuna storage ``url`` cannot hold a study.

    ``fix``: what to do about a corrupt study file, in the caller's words (``parameters``: the
    API parameters ``fix`` names)."""
    if is_journal(url):
        if not url.endswith(JOURNAL_SUFFIXES):  # a mistyped URL must not become a file named after it
            raise AutocompressError(f"storage {url!r} is not a storage URL, nor a journal file (a path ending in "
                                    f"{' or '.join(JOURNAL_SUFFIXES)}); give one such as {_EXAMPLE}",
                                    parameters=("storage",))
        _check_journal(Path(url), fix, parameters)
        return
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise AutocompressError(f"storage {url!r} is not a storage URL ({exc}); give one such as {_EXAMPLE}",
                                parameters=("storage",)) from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(parsed.database, fix, parameters)
        return
    _check_driver(parsed, shown)
    if parsed.host:
        _check_server(parsed, shown)


def search_fix(out, storage: str | None) -> dict:
    """``check_storage``'s ``fix`` and ``parameters`` for a search writing into ``out``."""
    if storage:
        return {"fix": "move it away to start a new study there, or give another storage", "parameters": ("storage",)}
    return {"fix": f"move it away to start a new study in {out}, or choose another out folder",
            "parameters": ("out",)}


def is_journal(storage: str) -> bool:
    """A storage given as a file path (no ``scheme://``) is an Optuna journal file."""
    return "://" not in storage


def open_storage(storage: str, *, repair: bool = True) -> str | optuna.storages.BaseStorage:
    """What ``optuna.load_study(storage=...)`` takes for ``storage``: a URL as it is, a journal
    file as a JournalStorage (with the lock optuna-dashboard uses too). ``repair``, for a writer:
    create the file's folder and cut a torn last record first; a reader skips a torn record anyway."""
    if not is_journal(storage):
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    lock = JournalFileOpenLock(storage)
    if repair:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(Path(storage), lock)
    return JournalStorage(JournalFileBackend(storage, lock_obj=lock))


def _cut_torn_tail(path: Path, lock) -> None:
    """A write cut short (a full disk) leaves a last line without its newline; the next append
    would glue to it and make the journal unreadable. That record was never acknowledged to its
    writer, so dropping it loses nothing committed."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    from optuna.storages.journal._file import get_lock_file  # the context manager Optuna's writers use

    with get_lock_file(lock):
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        log.warning("%s: its last record was cut short (%d bytes, a write that failed); dropping it", path,
                    len(data) - cut)
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())


def storage_failure(url: str, exc: BaseException) -> AutocompressError:
    """The one-line error for a storage that Optuna could not open after ``check_storage`` passed."""
    shown = url if is_journal(url) else make_url(url).render_as_string(hide_password=True)
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    return AutocompressError(f"storage {shown!r} cannot be opened ({reason}); give an Optuna storage URL such as "
                             f"{_EXAMPLE}", parameters=("storage",))


def _check_journal(path: Path, fix: str, parameters: tuple[str, ...]) -> None:
    if path.is_dir():
        raise AutocompressError(f"storage {str(path)!r} is a folder, not a journal file; name a file such as "
                                f"{path / 'study.journal'}", parameters=("storage",))
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new study: ``open_storage`` creates the file (and its folder)
    try:
        lines = path.read_bytes().split(b"\n")
        complete = lines[:-1]  # the last piece is empty, or a torn record that opening drops
        for number, line in enumerate(complete, start=1):
            record = json.loads(line)
            if not isinstance(record, dict) or "op_code" not in record:
                raise ValueError(f"line {number} is not an Optuna journal record")
        if not complete and lines[0]:
            raise ValueError("it holds no complete record")
    except OSError as exc:
        raise AutocompressError(f"study {path} cannot be read ({exc.strerror or exc}); check its permissions",
                                parameters=("storage",)) from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        reason = f"line {number}: {exc}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ResultsError(f"study {path} is corrupt ({reason}); it was left as it is: {fix}",
                           parameters=parameters) from exc


def _check_sqlite(database: str | None, fix: str, parameters: tuple[str, ...]) -> None:
    if not database or database == ":memory:":
        return
    path = Path(database)
    if path.is_dir():
        raise AutocompressError(f"storage {str(path)!r} is a folder, not a SQLite file; name a file such as "
                                f"{path / 'study.db'}", parameters=("storage",))
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new study: SQLite creates the file
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=_TIMEOUT_S)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.OperationalError:
        return  # locked by a live search, unreadable: not corruption; opening the study says what it is
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        verdict = str(exc)
    if verdict != "ok":
        raise ResultsError(f"study {path} is corrupt (SQLite: {verdict}); it was left as it is: {fix}",
                           parameters=parameters)


def _check_driver(parsed: URL, shown: str) -> None:
    try:
        parsed.get_dialect().import_dbapi()
    except sqlalchemy.exc.NoSuchModuleError as exc:
        raise AutocompressError(f"storage {shown!r} names an unknown database {parsed.drivername!r}; give an "
                                f"Optuna storage URL such as {_EXAMPLE}", parameters=("storage",)) from exc
    except ImportError as exc:
        raise AutocompressError(f"storage {shown!r} needs the database driver {exc.name or parsed.drivername!r}, "
                                "which is not installed: install it, or name an installed driver in the URL "
                                "(postgresql+psycopg2://...)", parameters=("storage",)) from exc


def _check_server(parsed: URL, shown: str) -> None:
    """A TCP connect answers in milliseconds where a driver may wait minutes for a silent host."""
    port = parsed.port or _DEFAULT_PORTS.get(parsed.get_backend_name())
    if port is None:
        return
    try:
        socket.create_connection((parsed.host, port), timeout=_TIMEOUT_S).close()
    except OSError as exc:
        raise AutocompressError(f"storage {shown!r}: nothing answers at {parsed.host}:{port} "
                                f"({exc.strerror or exc}); start the database server, or fix the host and port",
                                parameters=("storage",)) from exc
