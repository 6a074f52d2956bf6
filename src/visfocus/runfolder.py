"""A run folder's sample logs across ranks: each rank's ``samples_<task>.rank<r>.jsonl``, their merge into
``samples_<task>.jsonl`` in sample order, and rank 0's progress bar over all ranks and runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from visfocus import results as res
from visfocus.benchmarks import Record


def rank_rows(folder: Path, name: str) -> dict[str, dict]:
    """The rows of every per-rank samples file of ``name`` (from this or an earlier run with any number of ranks)."""
    rows: dict[str, dict] = {}
    for path in sorted(folder.glob(f"samples_{name}.rank*.jsonl")):
        rows.update(res.SampleLog(path).rows)
    return rows


def merge_samples(folder: Path, name: str, selected: list[Record]) -> res.SampleLog:
    """Fold the per-rank files into ``samples_<task>.jsonl`` (or put its rows back in sample order): the selected
    samples in their order, then any other rows it held (from another --limit or --offset); the per-rank files go
    once the merged file is written."""
    merged_path = folder / f"samples_{name}.jsonl"
    parts = sorted(folder.glob(f"samples_{name}.rank*.jsonl"))
    rows = {**res.SampleLog(merged_path).rows, **rank_rows(folder, name)}
    order = [r.id for r in selected if r.id in rows] + [i for i in rows if i not in {r.id for r in selected}]
    if not parts and order == list(rows):  # already one file in sample order (answers grouped by image are not)
        return res.SampleLog(merged_path)
    tmp = folder / f".samples_{name}.merge.jsonl"
    tmp.write_text("".join(json.dumps(rows[i], default=str) + "\n" for i in order), encoding="utf-8")
    tmp.replace(merged_path)
    for part in parts:
        part.unlink()
    return res.SampleLog(merged_path)


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
