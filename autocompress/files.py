"""Writing files so that a kill, a full disk or a concurrent reader never sees half of one, and
building paths from names that came from outside (a study, a card, a model's module names).

Every file a search or an export writes that something else reads later goes through
``atomic_path``: the writer fills a temporary file beside the target, and only a complete file
is renamed over it (``os.replace`` is atomic within a file system). A reader sees the old file or
the new one, never a torn one, and a failed write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .errors import AutocompressError

__all__ = ["atomic_path", "disk_full_message", "disk_nearly_full", "inside", "is_disk_full", "write_csv_atomic",
           "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` on success."""
    path = Path(path)
    # Same folder, so the rename stays within one file system; the suffix keeps the file type
    # for writers that choose their format by it (matplotlib, plotly).
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)


def write_csv_atomic(path: str | Path, fields: Sequence[str], rows: Iterable[dict]) -> None:
    """``rows`` under the header ``fields`` (keys outside it ignored, missing cells empty), in one step."""
    with atomic_path(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def inside(folder: str | Path, *parts: str) -> Path:
    """``folder / parts``, refused when the parts climb out of ``folder`` (``..``, an absolute
    path, a symbolic link leading elsewhere): names read from files must not choose where we write."""
    base = Path(folder).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise AutocompressError(f"{'/'.join(parts)!r} would lead out of {folder}; refusing to read or write there "
                                "(the name came from a file or a model: check where it came from)")
    return target


def is_disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk or quota, also when a library wrapped it (SQLite says it in words)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
    return False


def disk_full_message(folder: str | Path) -> str:
    return (f"the disk holding {folder} is full (no space left on device); free space and rerun the same command: "
            "what was finished is kept and the rest resumes")


def disk_nearly_full(folder: str | Path, *, below_bytes: int = 1 << 20) -> bool:
    """Whether the file system that holds ``folder`` (or its nearest existing parent) is full:
    for errors that lost their errno on the way (torch.save says only "file write failed")."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < below_bytes
    except OSError:
        return False
