"""What a run writes, and reading it back: the typed ``results.json`` schema and the append-only per-task sample
files (``samples_<task>.jsonl``) that make runs resumable."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

SCHEMA_VERSION = 1


class NSamples(TypedDict):
    original: int  # records in the task (after nothing)
    selected: int  # after --offset / --limit
    missing_images: int  # selected records whose image is missing or unreadable (skipped with --skip_missing)
    effective: int  # records scored: selected - missing_images


class Cost(TypedDict):
    forward_passes: int  # decoder forward passes, summed over batches
    prefill_tokens: int  # prompt positions processed, summed over sequences
    decode_tokens: int  # generated positions processed, summed over sequences
    seconds: float  # wall seconds in the model, summed over batches


class TaskResult(TypedDict):
    task: dict[str, Any]  # name, answer_type, prompt_style, scorer, data_root
    split: dict[str, Any]  # what reproduces the split (e.g. seed and indices of a WhatsUp dev/test variant)
    n_samples: NSamples
    metrics: dict[str, Any]  # the task's metrics (accuracy, pair/set, F1s, per_relation, AUROC, ...)
    cost: Cost


class Results(TypedDict):
    schema_version: int
    created_at: str  # ISO time the run folder was created
    updated_at: str
    config: dict[str, Any]  # the run's arguments (model, model_args, tasks, method, method_args, ...)
    method: dict[str, Any]  # {"name", "args"}: the method with every parameter, defaults included
    versions: dict[str, str]  # visfocus, python, torch, transformers
    git_hash: str | None  # of the visfocus source tree, when it is a git checkout
    tasks: dict[str, TaskResult]
    cost: Cost  # totals over tasks


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import torch
    import transformers

    from visfocus import __version__

    return {"visfocus": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def empty_cost() -> Cost:
    return Cost(forward_passes=0, prefill_tokens=0, decode_tokens=0, seconds=0.0)


def add_cost(total: Cost, part: dict[str, Any]) -> None:
    for key in total:
        total[key] += part.get(key, 0)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a kill mid-write leaves the previous file intact."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class SampleLog:
    """``samples_<task>.jsonl``: one JSON line per finished sample, appended and flushed per batch. On opening, a
    torn last line (a run killed mid-write) is dropped so that appends stay valid JSONL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            good = []
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row["id"] not in self.rows:
                    good.append(line)
                self.rows[row["id"]] = row
            if len(good) != len(lines):
                path.write_text("".join(g + "\n" for g in good), encoding="utf-8")

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
                self.rows[row["id"]] = row
            f.flush()
            os.fsync(f.fileno())
