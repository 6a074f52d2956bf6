"""What ``results.json`` holds — its typed schema — and how a launch builds it: the record of a launch
(``provenance``), each task's result from its sample rows, the cost totals; writing and reading it durably."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from visfocus import durable
from visfocus.errors import VisfocusError
from visfocus.run.lock import now

# 2: ``identity`` and ``provenance``; 3: ``config.share_prefix`` and ``config.method`` "baseline"; sample rows say
# ``forward_passes`` and ``extras`` (``visfocus.run.samples.upgraded`` reads older rows). Older folders are resumed
# and upgraded.
SCHEMA_VERSION = 3


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
    n_samples: NSamples  # how many records the task has, were selected, had missing images and were scored
    metrics: dict[str, Any]  # the task's metrics (accuracy, pair/set, F1s, per_relation, AUROC, ...)
    cost: Cost  # what answering the task's scored samples took


class Launch(TypedDict):
    """One start of the run (the first, and each resume): who ran it, with what, and what it added."""

    started_at: str  # ISO time the launch started
    ended_at: str | None  # None: the launch did not finish (killed, or an error)
    host: str  # the machine's host name
    pid: int  # the process id (rank 0's in a data-parallel run)
    world_size: int  # how many processes answered samples
    versions: dict[str, str]  # visfocus, python, torch, transformers of this launch
    git_hash: str | None  # of the visfocus source tree of this launch, when it is a git checkout
    samples_added: dict[str, int]  # per task, the sample rows this launch wrote


class Results(TypedDict):
    schema_version: int  # the layout of this file (SCHEMA_VERSION); folders of older layouts resume and upgrade
    created_at: str  # ISO time the run folder was created
    updated_at: str  # ISO time of the last write
    config: dict[str, Any]  # the run's ``RunConfig`` (``RunConfig.record``), and ``run_dir`` in what evaluate returns
    # what must not change for the run to be resumed (``visfocus.run.identity``): the identity fields of RunConfig
    # with defaults filled in, and the weights (a Hub commit, or a local folder's fingerprint)
    identity: dict[str, Any]
    method: dict[str, Any]  # {"name", "args"[, "resolved"]}: the method with every parameter, defaults included
    versions: dict[str, str]  # visfocus, python, torch, transformers of the launch that created the run
    git_hash: str | None  # of the visfocus source tree of that launch, when it is a git checkout
    provenance: list[Launch]  # every launch, in order (appended, never rewritten)
    tasks: dict[str, TaskResult]  # per task name: its counts, metrics and cost
    cost: Cost  # totals over tasks


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


def started(previous: Mapping[str, Any] | None, config: dict, identity: dict, method: dict,
            world_size: int) -> Results:
    """The results of a launch starting now: the earlier launches' tasks, creation time, versions and provenance
    kept (``previous``: what the folder held, or None), this launch appended."""
    previous = previous or {}
    first = launch(world_size)
    return {"schema_version": SCHEMA_VERSION, "created_at": previous.get("created_at", first["started_at"]),
            "updated_at": first["started_at"], "config": config, "identity": identity, "method": method,
            "versions": previous.get("versions", first["versions"]),
            "git_hash": previous.get("git_hash", first["git_hash"]),
            "provenance": [*previous.get("provenance", []), first], "tasks": dict(previous.get("tasks", {})),
            "cost": empty_cost()}


def empty_cost() -> Cost:
    return Cost(forward_passes=0, prefill_tokens=0, decode_tokens=0, seconds=0.0)


def add_cost(total: Cost, part: Mapping[str, Any]) -> None:
    for key in total:
        total[key] += part.get(key, 0)


def task_result(t, selected: list, missing: set[str], found: Mapping[str, dict]) -> TaskResult:
    """A task's result from its sample rows: counts, the task's metrics, the cost (a batch's forward passes serve all
    its rows: each row counts its share)."""
    rows = [found[r.id] for r in selected if r.id not in missing and r.id in found]
    cost = empty_cost()
    for row in rows:
        add_cost(cost, {"forward_passes": row["forward_passes"] / row["batch_size"],
                        "prefill_tokens": row["prefill_tokens"], "decode_tokens": row["decode_tokens"],
                        "seconds": row["seconds"]})
    cost["forward_passes"] = round(cost["forward_passes"])
    return {"task": t.describe(), "split": t.split_info(),
            "n_samples": {"original": len(t), "selected": len(selected), "missing_images": len(missing),
                          "effective": len(rows)},
            "metrics": t.score(rows) if rows else {}, "cost": cost}


def finished(out: Results) -> None:
    """Close this launch: the cost totals over tasks, and its end time."""
    out["cost"] = empty_cost()
    for result in out["tasks"].values():
        add_cost(out["cost"], result["cost"])
    out["provenance"][-1]["ended_at"] = out["updated_at"] = now()


def write_json(path: Path, data: Any) -> None:
    """Write atomically and durably (``durable.replace_file``): a kill mid-write leaves the previous file intact."""
    durable.replace_file(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path, what: str) -> Any:
    """A JSON file the run wrote; one error naming it when it is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VisfocusError(f"{what} {path} is not valid JSON ({err}); restore it or remove the folder") from err
