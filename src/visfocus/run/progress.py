"""Rank 0's progress bar over all ranks and runs of one task: its own answers plus what the other ranks' sample files
grew by since the last look."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from visfocus.run.folder import RunFolder


class Progress:
    def __init__(self, folders: list[RunFolder], task: str, total: int, done: int, shown: bool) -> None:
        self.folders, self.task, self.shown = folders, task, shown
        self.bar = tqdm(total=total, initial=done, desc=task, unit="sample", file=sys.stderr, dynamic_ncols=True,
                        disable=not shown)
        self.offsets: dict = {}
        self._others()  # what the other ranks' files already hold is counted in ``done``

    def _others(self) -> int:
        grown = 0
        for folder in self.folders:
            for path in folder.rank_files(self.task):
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
