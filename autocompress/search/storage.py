"""Where a study lives, checked before anything is created or written there.

A SQLite study file that is corrupt, a database server that does not answer, a database driver
that is not installed: each is one line naming the storage and what to do, found in a second at
most, and the storage is left exactly as it was (a SQLite file is only opened read-only here).
Optuna and SQLAlchemy would report them as a bad URL, with several lines of SQL and a link, or
keep retrying a dead server.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from ..errors import AutocompressError, ResultsError

__all__ = ["check_storage", "search_fix", "storage_failure"]

_EXAMPLE = "sqlite:///study.db or postgresql+psycopg2://user@host/db"
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
_TIMEOUT_S = 5.0


def check_storage(url: str, *, fix: str, parameters: tuple[str, ...] = ("storage",)) -> None:
    """Raise a one-line AutocompressError when the Optuna storage ``url`` cannot hold a study.

    ``fix``: what to do about a corrupt SQLite file, in the caller's words (``parameters``: the
    API parameters ``fix`` names)."""
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


def storage_failure(url: str, exc: BaseException) -> AutocompressError:
    """The one-line error for a storage that Optuna could not open after ``check_storage`` passed."""
    shown = make_url(url).render_as_string(hide_password=True) if "://" in url else url
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    return AutocompressError(f"storage {shown!r} cannot be opened ({reason}); give an Optuna storage URL such as "
                             f"{_EXAMPLE}", parameters=("storage",))


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
