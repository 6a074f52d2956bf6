"""Whether a run folder may be resumed by this run: the identity a run records — the ``RunConfig`` fields declared
``identity=True`` (model, model arguments, method with every parameter, prompt style, scorer, max_new_tokens, seed,
trace mode) plus what identifies the weights — compared normalised at every start, and each task's data root. A
folder written before identities were recorded (schema 1) is compared on what it did record."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visfocus.benchmarks import Task
from visfocus.errors import VisfocusError
from visfocus.models.loading import parse_model_args, weights_identity
from visfocus.run.config import BASELINE, IDENTITY_FIELDS, RunConfig

# What a schema-1 run folder (written before results.json had an ``identity``) recorded of its identity.
SCHEMA1_IDENTITY = ("model", "model_args", "method", "method_args", "prompt_style", "scorer", "max_new_tokens", "seed")
WEIGHTS, COMMIT = "weights", "weights_commit"  # not fields: what the weights are, found on disk and once loaded


def run_identity(config: RunConfig, method) -> dict[str, Any]:
    """What must not change for a run folder to be resumed: every identity field, with defaults filled in where a
    field has them (every model argument; the method's every parameter, from ``method``, the built method or None),
    plus the weights (``weights_identity``). The Hub commit is added once the model is loaded (``check_commit``); the
    data root is checked per task (``check_data_roots``), as a folder may gather tasks read from several."""
    from visfocus.organism import organism_path

    identity = {name: getattr(config, name) for name in IDENTITY_FIELDS}
    model_args = parse_model_args(config.model_args)
    identity.update(model=config.model or "organism", model_args=model_args, method=config.method_name,
                    method_args=dataclasses.asdict(method.params) if method is not None else {})
    identity[WEIGHTS] = weights_identity(config.model or str(organism_path()), model_args["revision"])
    return identity


def recorded_identity(previous: Mapping[str, Any]) -> dict[str, Any]:
    """The identity an earlier launch recorded; for a schema-1 folder, what its config held of it (the keys it had,
    normalised as ``run_identity`` makes them)."""
    if "identity" in previous:
        return dict(previous["identity"])
    old = previous.get("config", {})
    upgraded = {"model": old.get("model") or "organism", "model_args": parse_model_args(old.get("model_args") or {}),
                "method": old.get("method") or BASELINE,
                "method_args": previous.get("method", {}).get("args", {}) if old.get("method") else {}}
    return {**{k: old.get(k) for k in SCHEMA1_IDENTITY}, **upgraded}


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


def check_resumable(folder: Path, recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> None:
    """One error when a folder's recorded run differs from this one: every identity entry, normalised (a schema-1
    folder: the entries it recorded); the Hub commit is compared once the model is loaded (``check_commit``)."""
    keys = (set(identity) | set(recorded)) if WEIGHTS in recorded else set(recorded)
    keys.discard(COMMIT)
    changed = identity_changes({k: recorded.get(k) for k in keys}, {k: identity.get(k) for k in keys})
    if changed:
        raise VisfocusError(f"{folder} holds a run with a different configuration ({'; '.join(changed)}); use "
                            "another --output_path or remove that folder")


def check_commit(folder: Path, recorded: Mapping[str, Any], identity: dict[str, Any], commit: str | None) -> None:
    """Once the model is loaded: refuse weights of another Hub commit than the recorded one, and record the commit
    in ``identity`` (the loaded one, else the one recorded earlier)."""
    if commit is None:
        if recorded.get(COMMIT):
            identity[COMMIT] = recorded[COMMIT]
        return
    if recorded.get(COMMIT) not in (None, commit):
        raise VisfocusError(f"{folder} holds a run of {identity['model']} at commit {recorded[COMMIT]}, but the "
                            f"loaded weights are commit {commit}; pass model_args revision=<that commit> to resume "
                            "it, or use another --output_path")
    identity[COMMIT] = commit


def check_data_roots(folder: Path, previous: Mapping[str, Any], built: Mapping[str, Task]) -> None:
    """One error when a task this folder already holds was read from another data root than this run's."""
    for name, t in built.items():
        recorded = previous.get("tasks", {}).get(name, {}).get("task", {}).get("data_root")
        given = t.describe()["data_root"]
        if recorded is not None and t.reads_data and Path(recorded).resolve() != Path(given or "").resolve():
            raise VisfocusError(f"{folder} holds {name} read from {recorded}, but this run reads it from "
                                f"{given or 'no data root'}; pass --data_root {recorded}, or use another --output_path")
