"""A run folder (``<output_path>/<model>/<method>_<args>/``): one writer at a time (an advisory lock naming its
holder), the identity a resume must match, the sample logs of every rank and their merge, and rank 0's progress bar
over all ranks and runs.

Layout: ``results.json`` (``visfocus.results``), ``samples_<task>.jsonl`` (``samples_<task>.rank<r>.jsonl`` while
several ranks run), ``traces_<task>/``, and the lock ``.visfocus.lock`` with its holder ``.visfocus.lock.json``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import filelock
from tqdm.auto import tqdm

from visfocus import durable
from visfocus import results as res
from visfocus.benchmarks import Record
from visfocus.errors import VisfocusError

LOCK_FILE = ".visfocus.lock"
HOLDER_FILE = ".visfocus.lock.json"


def normalised(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists, keys text): what was recorded compares equal to what is
    given again."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def identity_changes(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``"key: old → new"`` for every identity entry that differs between a recorded run and this one (normalised;
    numbers compare by value, so 2 and 2.0 are the same)."""
    old, new = normalised(dict(recorded)), normalised(dict(given))
    return [f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


class RunLock:
    """The advisory lock of a run folder (``filelock``: ``flock`` on ``.visfocus.lock``, released by the kernel when
    its process dies, so a lock left by a killed run is simply taken) and who holds it (pid, host, start time,
    command) in ``.visfocus.lock.json``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.holder_path = folder / HOLDER_FILE
        self._lock = filelock.FileLock(folder / LOCK_FILE, timeout=0)

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
                {"pid": os.getpid(), "host": socket.gethostname(), "started_at": res.now(),
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


class RunFolder:
    """One run's folder as its writer (rank 0) uses it: ``take`` creates and locks it, ``release`` unlocks it — and
    removes it again when this launch created it and wrote nothing into it (a bad model, a refused resume)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self._created: Path | None = None  # the topmost folder this launch created

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    def take(self) -> None:
        """Create the folder when missing, take its lock, and drop temporary files a killed writer left."""
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        durable.make_folder(self.path)
        self._created = missing[-1] if missing else None
        try:
            self.lock.acquire()
        except VisfocusError:
            self._remove_if_unused()
            raise
        for stale in durable.stale_temporaries(self.path):
            with contextlib.suppress(OSError):
                stale.unlink()

    def release(self) -> None:
        self.lock.release()
        self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """Remove the folders this launch created when nothing but the lock went into them."""
        if self._created is not None and not any(p.name not in (LOCK_FILE, HOLDER_FILE) for p in self.path.iterdir()):
            for name in (LOCK_FILE, HOLDER_FILE):
                with contextlib.suppress(OSError):
                    (self.path / name).unlink()
            for folder in [self.path, *self.path.parents]:  # the empty folders this launch made, innermost first
                with contextlib.suppress(OSError):
                    folder.rmdir()
                if folder == self._created:
                    break

    def previous(self) -> dict[str, Any] | None:
        """The results this folder holds from an earlier launch, or None."""
        if not self.results_path.exists():
            return None
        found = res.read_json(self.results_path, "results file")
        if not isinstance(found, dict):
            raise VisfocusError(f"results file {self.results_path} is not a visfocus results object; restore it or "
                                "remove the folder")
        return found


def samples_path(folder: Path, name: str, rank: int | None = None) -> Path:
    """``samples_<task>.jsonl``, or rank ``rank``'s own file while several ranks run."""
    return folder / (f"samples_{name}.jsonl" if rank is None else f"samples_{name}.rank{rank}.jsonl")


def rank_rows(folder: Path, name: str) -> dict[str, dict]:
    """The rows of every per-rank samples file of ``name`` (from this or an earlier run with any number of ranks),
    read without changing them."""
    rows: dict[str, dict] = {}
    for path in sorted(folder.glob(f"samples_{name}.rank*.jsonl")):
        for key, row in res.read_samples(path).rows.items():
            rows.setdefault(key, row)
    return rows


def finished_rows(folder: Path, name: str) -> dict[str, dict]:
    """Every row of task ``name`` already on disk: the merged file's and the per-rank files'."""
    return {**rank_rows(folder, name), **res.read_samples(samples_path(folder, name)).rows}


def merge_samples(folder: Path, name: str, selected: list[Record]) -> dict[str, dict]:
    """Fold the per-rank files into ``samples_<task>.jsonl`` in sample order (the selected samples in their order,
    then any other rows it held, from another --limit or --offset) and return its rows. The merged file is written
    durably before the per-rank files go, so a kill in between leaves every row in one of them."""
    merged_path = samples_path(folder, name)
    parts = sorted(folder.glob(f"samples_{name}.rank*.jsonl"))
    merged = res.read_samples(merged_path)
    rows = {**rank_rows(folder, name), **merged.rows}
    wanted = {r.id for r in selected}
    order = [r.id for r in selected if r.id in rows] + [i for i in rows if i not in wanted]
    if not parts and not merged.needs_repair and order == list(rows):
        return rows  # already one file in sample order (answers grouped by image are not)
    durable.replace_file(merged_path, "".join(json.dumps(rows[i], default=str) + "\n" for i in order))
    for part in parts:
        try:
            part.unlink()
        except OSError as err:
            raise durable.write_failed(part, err) from err
    if parts:
        durable.fsync_folder(folder)
    return {i: rows[i] for i in order}


class Progress:
    """Rank 0's bar over all ranks and runs: its own batches plus what the other ranks' files grew by since the last
    look."""

    def __init__(self, folders: list[Path], name: str, total: int, done: int, shown: bool) -> None:
        self.folders, self.name, self.shown = folders, name, shown
        self.bar = tqdm(total=total, initial=done, desc=name, unit="sample", file=sys.stderr, dynamic_ncols=True,
                        disable=not shown)
        self.offsets: dict[Path, int] = {}
        self._others()  # what the other ranks' files already hold is counted in ``done``

    def _others(self) -> int:
        grown = 0
        for folder in self.folders:
            for path in folder.glob(f"samples_{self.name}.rank*.jsonl"):
                if path.name.endswith(".rank0.jsonl"):
                    continue
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    chunk = f.read()
                grown += chunk.count(b"\n")
                self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
        return grown

    def update(self, own: int) -> None:
        if self.shown:
            self.bar.update(own + self._others())

    def close(self) -> None:
        self.bar.close()
