"""The one-writer lock of a run folder: an advisory lock (``filelock``: ``flock`` on ``.visfocus.lock``, released by
the kernel when its process dies, so a lock left by a killed run is simply taken) and who holds it (pid, host, start
time, command) in ``.visfocus.lock.json``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock

from visfocus import durable
from visfocus.errors import VisfocusError

LOCK_FILE = ".visfocus.lock"
HOLDER_FILE = ".visfocus.lock.json"


def now() -> str:
    """The time now, as run folders record it (ISO, UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunLock:
    """The lock of ``folder`` and its holder file."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.holder_path = self.folder / HOLDER_FILE
        self._lock = filelock.FileLock(self.folder / LOCK_FILE, timeout=0)

    def acquire(self) -> None:
        """Take the lock, or one error naming the run that holds it. A holder file left by a run that no longer
        holds the lock (killed) is reported on stderr and replaced."""
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise VisfocusError(f"{self.folder} is in use by another visfocus run ({describe(self.holder())}); "
                                "wait for it to finish, or use another --output_path") from None
        except OSError as err:
            raise durable.write_failed(self.folder / LOCK_FILE, err) from err
        stale = self.holder()
        if stale is not None:
            print(f"[visfocus] {self.folder}: taking over from a run that ended without releasing it "
                  f"({describe(stale)})", file=sys.stderr)
        try:
            durable.replace_file(self.holder_path, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now(),
                 "command": " ".join(sys.argv)[:500]}) + "\n")
        except VisfocusError:
            self._lock.release()
            raise

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.holder_path.unlink()
        self._lock.release()

    def holder(self) -> dict[str, Any] | None:
        try:
            found = json.loads(self.holder_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None


def describe(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"
            + (f": {holder['command']}" if holder.get("command") else ""))
