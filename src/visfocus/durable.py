"""Writes that survive a kill or a crash: replace-by-rename that fsyncs the temporary file and then its folder, and
appends that reach the disk before they return. A failed write (a full disk, a read-only folder) is one
``VisfocusError`` that names the file, and leaves the file as it was before the call.

Everything goes through ``os.open``/``os.write``/``os.fsync``/``os.replace`` on purpose: one short path that the
fault-injection tests can interrupt at any step."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from visfocus.errors import VisfocusError

TMP_SUFFIX = ".tmp"


def write_failed(path: Path, err: OSError) -> VisfocusError:
    """The one error for a write that did not happen: what, where and what to do."""
    reason = err.strerror or type(err).__name__
    return VisfocusError(f"cannot write {path}: {reason}; nothing finished is lost — free space or fix the "
                         "folder's permissions, then run the same command to resume")


def temporary_path(path: Path) -> Path:
    """Where ``path``'s next version is written before the rename: beside it, hidden, named by the writer's pid."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (its directory entry reaches the disk)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_file(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically and durably: a temporary file beside it, fsync'd, renamed over it, then
    the folder fsync'd. A kill at any point leaves the old file or the new one, never a part."""
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    _replace(Path(path), write)


def replace_with(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """``replace_file`` for a writer that wants a binary file object (e.g. ``numpy.savez_compressed``)."""
    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    _replace(Path(path), write_file)


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` the temporary file (written and fsync'd), rename it over ``path``, fsync the folder; on failure the
    temporary file goes and the old ``path`` stays."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failed(path, err) from err


def append_file(path: str | Path, data: bytes | str) -> None:
    """Append ``data`` to ``path`` (created if missing) and fsync it before returning. When the write fails part way,
    the file is cut back to its old length, so a failed append leaves no partial line."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise write_failed(path, err) from err
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise write_failed(path, err) from err
    finally:
        os.close(fd)
    if created:
        try:
            fsync_folder(path.parent)
        except OSError as err:
            raise write_failed(path, err) from err


def make_folder(folder: str | Path) -> bool:
    """Create ``folder`` (and its parents) when missing; True when it was created here."""
    folder = Path(folder)
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fsync_folder(folder.parent)
    except OSError as err:
        raise write_failed(folder, err) from err
    return True


def stale_temporaries(folder: Path) -> Iterator[Path]:
    """Temporary files a killed writer left in ``folder`` or below it (never renamed, so never part of the run)."""
    yield from (path for path in folder.rglob(f".*{TMP_SUFFIX}") if path.is_file())
