"""What a run writes, and reading it back: the typed ``results.json`` schema and the append-only per-task sample
files (``samples_<task>.jsonl``) that make runs resumable."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from visfocus import durable
from visfocus.errors import VisfocusError

SCHEMA_VERSION = 2  # 2: ``identity`` and ``provenance`` (a schema-1 folder is still resumed and upgraded)
SAMPLE_KEYS = ("id", "correct")  # what makes a line of a samples file a sample row


class NSamples(TypedDict):
    original: int  # records in the task (after nothing)
    selected: int  # after --offset / --limit
    missing_images: int  # selected records whose image is missing or unreadable (skipped with --skip_missing)
    effective: int  # records scored: selected - missing_images (a shortfall is an error of the run, see evaluate)


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


class Launch(TypedDict):
    """One start of the run (the first, and each resume): who ran it, with what, and what it added."""

    started_at: str
    ended_at: str | None  # None: the launch did not finish (killed, or an error)
    host: str
    pid: int
    world_size: int
    versions: dict[str, str]
    git_hash: str | None
    samples_added: dict[str, int]  # per task, the sample rows this launch wrote


class Results(TypedDict):
    schema_version: int
    created_at: str  # ISO time the run folder was created
    updated_at: str
    config: dict[str, Any]  # the run's arguments (model, model_args, tasks, method, method_args, ...)
    # what must not change for the run to be resumed (compared, normalised, at every start; see runfolder):
    # model, its weights (Hub commit or a local folder's fingerprint), model_args, method with every parameter,
    # prompt style, scorer, max_new_tokens, seed, data root, trace mode
    identity: dict[str, Any]
    method: dict[str, Any]  # {"name", "args"}: the method with every parameter, defaults included
    versions: dict[str, str]  # visfocus, python, torch, transformers of the launch that created the run
    git_hash: str | None  # of the visfocus source tree of that launch, when it is a git checkout
    provenance: list[Launch]  # every launch, in order (appended, never rewritten)
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


def launch(world_size: int) -> Launch:
    """The provenance entry of a launch starting now."""
    return Launch(started_at=now(), ended_at=None, host=socket.gethostname(), pid=os.getpid(), world_size=world_size,
                  versions=versions(), git_hash=git_hash(), samples_added={})


def empty_cost() -> Cost:
    return Cost(forward_passes=0, prefill_tokens=0, decode_tokens=0, seconds=0.0)


def add_cost(total: Cost, part: dict[str, Any]) -> None:
    for key in total:
        total[key] += part.get(key, 0)


def write_json(path: Path, data: Any) -> None:
    """Write atomically and durably (``durable.replace_file``): a kill mid-write leaves the previous file intact."""
    durable.replace_file(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path, what: str) -> Any:
    """A JSON file the run wrote; one error naming it when it is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VisfocusError(f"{what} {path} is not valid JSON ({err}); restore it or remove the folder") from err


@dataclass
class SampleFile:
    """What a samples file holds: its rows by id (file order), its lines as they should be, and whether the file on
    disk differs from them (an unterminated or torn last line, duplicate ids, blank lines)."""

    rows: dict[str, dict]
    lines: list[str]
    needs_repair: bool


def read_samples(path: Path) -> SampleFile:
    """Read ``samples_<task>.jsonl`` without changing it. The last line may lack its newline (a kill between a row
    and its ``\\n``): a complete row there is kept, a torn one dropped. Any other line that is not a sample row (not
    JSON, not an object with ``id`` and ``correct``) is one error naming the file and line. A repeated id keeps its
    first row."""
    if not path.exists():
        return SampleFile({}, [], False)
    data = path.read_bytes()
    pieces = data.split(b"\n")
    last = pieces.pop()  # b"" when the file ends with a newline, else the unterminated last line
    rows: dict[str, dict] = {}
    lines: list[str] = []
    repair = bool(last)
    for number, piece in enumerate([*pieces, last] if last else pieces, start=1):
        row = _sample_row(piece)
        if isinstance(row, str):
            if last and number == len(pieces) + 1:  # a torn last line: the write it belongs to never finished
                continue
            if not piece.strip():
                repair = True
                continue
            raise VisfocusError(f"{path}, line {number}: {row}; the samples file was changed by hand or by another "
                                "program — restore it, or remove that line to answer the sample again")
        if row["id"] in rows:
            repair = True
            continue
        rows[row["id"]] = row
        lines.append(piece.decode("utf-8"))
    return SampleFile(rows, lines, repair)


def _sample_row(piece: bytes) -> dict | str:
    """The row a line holds, or why it is not a sample row."""
    try:
        row = json.loads(piece.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not a JSON line"
    if not isinstance(row, dict) or any(key not in row for key in SAMPLE_KEYS) or not isinstance(row["id"], str):
        return f"not a sample row (needs {' and '.join(SAMPLE_KEYS)}, with a text id)"
    return row


class SampleLog:
    """``samples_<task>.jsonl`` as its writer sees it: one JSON line per finished sample, appended and fsync'd per
    batch (``durable.append_file``). On opening, a file that needs it is repaired atomically (rewritten beside and
    renamed over): an unterminated last row gets its newline, a torn last line goes, so that appends never glue
    a row onto another."""

    def __init__(self, path: Path) -> None:
        self.path = path
        found = read_samples(path)
        self.rows = found.rows
        if found.needs_repair:
            durable.replace_file(path, "".join(line + "\n" for line in found.lines))

    def append(self, rows: list[dict]) -> None:
        durable.append_file(self.path, "".join(json.dumps(row, default=str) + "\n" for row in rows))
        for row in rows:
            self.rows[row["id"]] = row
