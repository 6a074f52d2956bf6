"""Whether a run folder may be resumed by this run: the identity a run records (model and weights, model arguments,
the method with every parameter, prompt style, scorer, max_new_tokens, seed, trace mode), compared normalised at every
start, and each task's data root. A folder written before identities were recorded (schema 1) is compared on what it
did record."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from visfocus.benchmarks import Task
from visfocus.errors import VisfocusError
from visfocus.models.loading import parse_model_args, weights_identity
from visfocus.runconfig import RunConfig
from visfocus.runfolder import identity_changes

# What a schema-1 run folder (written before results.json had an ``identity``) recorded of its identity.
SCHEMA1_IDENTITY = ("model", "model_args", "method", "method_args", "prompt_style", "scorer", "max_new_tokens", "seed")


def run_identity(config: RunConfig, method) -> dict[str, Any]:
    """What must not change for a run folder to be resumed: the model and its weights, every model argument (defaults
    filled in), the method with every parameter (defaults filled in), prompt style, scorer, max_new_tokens, seed and
    the trace mode. The Hub commit is added once the model is loaded (``weights_commit``); the data root is checked
    per task (``check_data_roots``), as a folder may gather tasks read from several."""
    from visfocus.organism import organism_path

    model_args = parse_model_args(config.model_args)
    return {"model": config.model or "organism",
            "weights": weights_identity(config.model or str(organism_path()), model_args["revision"]),
            "model_args": model_args, "method": config.method or "baseline",
            "method_args": dataclasses.asdict(method.params) if method is not None else {},
            "prompt_style": config.prompt_style, "scorer": config.scorer, "max_new_tokens": config.max_new_tokens,
            "seed": config.seed, "trace": config.trace}


def recorded_identity(previous: dict[str, Any]) -> dict[str, Any]:
    """The identity an earlier launch recorded; for a schema-1 folder, what its config held of it (the keys it had,
    normalised as ``run_identity`` makes them)."""
    if "identity" in previous:
        return previous["identity"]
    old = previous.get("config", {})
    upgraded = {"model": old.get("model") or "organism", "model_args": parse_model_args(old.get("model_args") or {}),
                "method": old.get("method") or "baseline",
                "method_args": previous.get("method", {}).get("args", {}) if old.get("method") else {}}
    return {**{k: old.get(k) for k in SCHEMA1_IDENTITY}, **upgraded}


def check_resumable(folder: Path, recorded: dict[str, Any], identity: dict[str, Any]) -> None:
    """One error when a folder's recorded run differs from this one: every identity entry, normalised (a schema-1
    folder: the entries it recorded); the Hub commit is compared once the model is loaded (``_start``)."""
    keys = (set(identity) | set(recorded)) if "weights" in recorded else set(recorded)
    keys.discard("weights_commit")
    changed = identity_changes({k: recorded.get(k) for k in keys}, {k: identity.get(k) for k in keys})
    if changed:
        raise VisfocusError(f"{folder} holds a run with a different configuration ({'; '.join(changed)}); use "
                            "another --output_path or remove that folder")


def check_data_roots(folder: Path, previous: dict[str, Any], built: dict[str, Task]) -> None:
    """One error when a task this folder already holds was read from another data root than this run's."""
    for name, t in built.items():
        recorded = previous.get("tasks", {}).get(name, {}).get("task", {}).get("data_root")
        given = t.describe()["data_root"]
        if recorded is not None and t.reads_data and Path(recorded).resolve() != Path(given or "").resolve():
            raise VisfocusError(f"{folder} holds {name} read from {recorded}, but this run reads it from "
                                f"{given or 'no data root'}; pass --data_root {recorded}, or use another --output_path")
