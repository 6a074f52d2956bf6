"""A run folder (``<output_path>/<model>/<method>_<args>/``) and the files it owns: one writer at a time (the lock),
the results of earlier launches and whether this run may continue them, the sample logs of every rank and their
merge into one file, the trace shards and ``results.json``.

Layout: ``results.json`` (``visfocus.run.results``), ``samples_<task>.jsonl`` (``visfocus.run.samples``;
``samples_<task>.rank<r>.jsonl`` while several ranks run), ``traces_<task>/`` (``visfocus.tracefile``), and the lock
``.visfocus.lock`` with its holder ``.visfocus.lock.json`` (``visfocus.run.lock``)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visfocus import durable
from visfocus.benchmarks import Record, Task
from visfocus.errors import VisfocusError
from visfocus.run import identity as ident
from visfocus.run.config import BASELINE, RunConfig
from visfocus.run.lock import HOLDER_FILE, LOCK_FILE, RunLock
from visfocus.run.results import Results, read_json, write_json
from visfocus.run.samples import SampleLog, lines_of, read_samples


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "run"


def folder_path(output_path: str | Path, model: str | None, method: str | None,
                method_args: Mapping[str, Any]) -> Path:
    """``<output_path>/<model>/<method>_<args>``: where a run of ``model`` (None: the organism) under ``method``
    (None: the baseline) lives, its arguments as given (defaults left out). lmms-eval's trace folders follow it."""
    model_part = "organism" if model is None else slug(model.rstrip("/").replace("/", "__"))
    label = "_".join([method or BASELINE, *(f"{k}-{v}" for k, v in sorted(method_args.items()))])
    return Path(output_path) / model_part / slug(label)


def run_dir(config: RunConfig) -> Path:
    return folder_path(config.output_path, config.model, config.method, config.method_args)


class RunFolder:
    """One run's folder. Its writer (rank 0) ``take``s it (creates and locks it), checks that an earlier run there is
    this one (``resumed``), and ``release``s it, removing it again when this launch created it and wrote nothing into
    it (a bad model, a refused resume). Every rank appends to its own sample log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self._created: Path | None = None  # the topmost folder this launch created

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    # --- one writer -------------------------------------------------------------------------------------------------
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

    def resumed(self, identity: dict[str, Any], tasks: Mapping[str, Task]) -> Results | None:
        """The results of earlier launches (None: a new run), after checking that they are this run's
        (``identity``, and the data root of each task already there)."""
        previous = self.previous()
        if previous is not None:
            ident.check_resumable(self.path, ident.recorded_identity(previous), identity)
            ident.check_data_roots(self.path, previous, tasks)
        return previous

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

    # --- results.json -----------------------------------------------------------------------------------------------
    def previous(self) -> Results | None:
        """The results this folder holds from an earlier launch, or None."""
        if not self.results_path.exists():
            return None
        found = read_json(self.results_path, "results file")
        if not isinstance(found, dict):
            raise VisfocusError(f"results file {self.results_path} is not a visfocus results object; restore it or "
                                "remove the folder")
        return found

    def write_results(self, results: Results) -> None:
        write_json(self.results_path, results)

    def read_results(self) -> Results:
        return read_json(self.results_path, "results file")

    # --- samples and traces -----------------------------------------------------------------------------------------
    def samples_path(self, task: str, rank: int | None = None) -> Path:
        """``samples_<task>.jsonl``, or rank ``rank``'s own file while several ranks run."""
        return self.path / (f"samples_{task}.jsonl" if rank is None else f"samples_{task}.rank{rank}.jsonl")

    def rank_files(self, task: str) -> list[Path]:
        return sorted(self.path.glob(f"samples_{task}.rank*.jsonl"))

    def sample_log(self, task: str, rank: int | None = None) -> SampleLog:
        return SampleLog(self.samples_path(task, rank))

    def traces(self, task: str) -> Path:
        return self.path / f"traces_{task}"

    def rank_rows(self, task: str) -> dict[str, dict]:
        """The rows of every per-rank samples file of ``task`` (from this or an earlier run with any number of
        ranks), read without changing them."""
        rows: dict[str, dict] = {}
        for path in self.rank_files(task):
            for key, row in read_samples(path).rows.items():
                rows.setdefault(key, row)
        return rows

    def finished_rows(self, task: str) -> dict[str, dict]:
        """Every row of ``task`` already on disk: the merged file's and the per-rank files'."""
        return {**self.rank_rows(task), **read_samples(self.samples_path(task)).rows}

    def merge(self, task: str, selected: list[Record]) -> dict[str, dict]:
        """Fold the per-rank files into ``samples_<task>.jsonl`` in sample order (the selected samples in their
        order, then any other rows it held, from another --limit or --offset) and return its rows. The merged file
        is written durably before the per-rank files go, so a kill in between leaves every row in one of them."""
        parts = self.rank_files(task)
        merged = read_samples(self.samples_path(task))
        rows = {**self.rank_rows(task), **merged.rows}
        wanted = {r.id for r in selected}
        order = [r.id for r in selected if r.id in rows] + [i for i in rows if i not in wanted]
        if not parts and not merged.needs_repair and order == list(rows):
            return rows  # already one file in sample order (answers grouped by image are not)
        durable.replace_file(self.samples_path(task), lines_of([rows[i] for i in order]))
        for part in parts:
            try:
                part.unlink()
            except OSError as err:
                raise durable.write_failed(part, err) from err
        if parts:
            durable.fsync_folder(self.path)
        return {i: rows[i] for i in order}
