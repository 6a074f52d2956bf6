"""Resumable fine-tuning checkpoints with nothing pickled, swapped in so that a kill at any instant leaves one complete
checkpoint behind.

A checkpoint folder holds:

- ``trainable.safetensors``: the trainable parameters by name (fp32 master weights; with LoRA the adapters only);
- ``optimizer.safetensors``: every tensor of the optimizer state (AdamW ``exp_avg``, ``exp_avg_sq``, ``step``) and of
  the RNG states (torch's, and CUDA's when present: uint8 tensors);
- ``optimizer.json``: the rest of the optimizer and scheduler state dicts and Python's ``random`` state, each tensor
  replaced by ``{"__tensor__": name}`` (its name in ``optimizer.safetensors``), tuples and dicts with non-string keys
  tagged (``__tuple__``, ``__items__``) so that they come back exactly as they were;
- ``state.json``: the loop state (step, last loss, best metric, …) and the config. Written last: a folder that has
  every file above is complete.

Saving writes ``checkpoint.tmp/`` (each file fsync'd), then swaps: ``checkpoint`` → ``checkpoint.old``,
``checkpoint.tmp`` → ``checkpoint``, fsync of the parent folder, ``checkpoint.old`` deleted. Before resuming,
``recover`` puts the newest complete one of the three at ``checkpoint/`` (a complete ``checkpoint.tmp/`` finishes its
swap, else a complete ``checkpoint.old/`` goes back in place) and removes the leftovers. A failed write is one
``VisfocusError`` and leaves the previous checkpoint in place.

A checkpoint of the older layout (pickled ``trainable.pt`` / ``optimizer.pt``) is refused, never loaded: unpickling a
folder someone hands you can run any code. Move it away to start fresh."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from visfocus.durable import fsync_folder, make_folder, replace_file, write_failed
from visfocus.errors import VisfocusError
from visfocus.train.config import IDENTITY_KEYS, FinetuneConfig

TRAINABLE, OPTIMIZER, REST, STATE = "trainable.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"
FILES = (TRAINABLE, OPTIMIZER, REST, STATE)  # written in this order: state.json last marks the folder complete
PICKLES = ("trainable.pt", "optimizer.pt")  # the older layout
TMP, OLD = ".tmp", ".old"
TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"


# --- tensors out of (and back into) nested state dicts -------------------------------------------------------------
def _child(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def split_tensors(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON-able data: each tensor moves into ``tensors`` under a name made of its path and is replaced by
    ``{"__tensor__": name}``; tuples and dicts with keys other than plain strings are tagged for ``join_tensors``."""
    if isinstance(value, torch.Tensor):
        name = path
        while name in tensors:
            name += "_"
        tensors[name] = value.detach().cpu().contiguous()
        return {TENSOR: name}
    if isinstance(value, tuple):
        return {TUPLE: [split_tensors(v, _child(path, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [split_tensors(v, _child(path, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: split_tensors(v, _child(path, k), tensors) for k, v in value.items()}
        return {ITEMS: [[split_tensors(k, _child(path, "key"), tensors), split_tensors(v, _child(path, k), tensors)]
                        for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise VisfocusError(f"cannot store {path} (a {type(value).__name__}) in a checkpoint without pickling it; "
                        "report this as a visfocus bug")


def join_tensors(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``split_tensors``."""
    if isinstance(data, list):
        return [join_tensors(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if data.keys() == {TENSOR}:
        return tensors[data[TENSOR]]
    if data.keys() == {TUPLE}:
        return tuple(join_tensors(v, tensors) for v in data[TUPLE])
    if data.keys() == {ITEMS}:
        return {join_tensors(k, tensors): join_tensors(v, tensors) for k, v in data[ITEMS]}
    return {k: join_tensors(v, tensors) for k, v in data.items()}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# --- folders --------------------------------------------------------------------------------------------------------
def sibling(folder: Path, suffix: str) -> Path:
    return folder.with_name(folder.name + suffix)


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def discard(folder: Path) -> None:
    """Delete a checkpoint folder, ``state.json`` first, so that a kill part way never leaves it looking complete."""
    if not folder.exists():
        return
    (folder / STATE).unlink(missing_ok=True)
    shutil.rmtree(folder)


def swap_in(tmp: Path, folder: Path) -> None:
    """Make the complete ``tmp`` the checkpoint: ``folder`` → ``.old``, ``tmp`` → ``folder``, fsync, ``.old`` deleted.
    A complete checkpoint exists at every instant; when a rename fails, the previous one is put back."""
    old = sibling(folder, OLD)
    try:
        discard(old)  # the leftover of a swap killed before its last step; `folder` is complete then
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if old.exists() and not folder.exists():
                with contextlib.suppress(OSError):
                    os.replace(old, folder)
            raise
        fsync_folder(folder.parent)
        discard(old)
    except OSError as err:
        raise write_failed(folder, err) from err


def _restore(old: Path, folder: Path) -> None:
    """Put the complete ``old`` back at ``folder`` (a swap was killed between its renames)."""
    discard(folder)
    os.replace(old, folder)
    fsync_folder(folder.parent)


def _refuse_pickles(folder: Path) -> None:
    pickles = [name for name in PICKLES if (folder / name).exists()]
    if pickles:
        raise VisfocusError(f"{folder} holds a checkpoint written by an older visfocus ({', '.join(pickles)}: pickles, "
                            "which can run any code when loaded), so it cannot be resumed safely; move that folder "
                            "away to start fresh")


def recover(folder: Path) -> bool:
    """Put the newest complete checkpoint at ``folder`` after a killed save and remove the leftovers; True when there
    is one to resume from. Refuses pickled checkpoints and a lone incomplete ``folder`` (never deletes them)."""
    tmp, old = sibling(folder, TMP), sibling(folder, OLD)
    for candidate in (folder, old, tmp):
        _refuse_pickles(candidate)
    try:
        if is_complete(tmp):  # killed after writing the new checkpoint, before or during its swap: finish the swap
            swap_in(tmp, folder)
        else:
            discard(tmp)
            if not is_complete(folder) and is_complete(old):
                _restore(old, folder)
            elif is_complete(folder):
                discard(old)
    except OSError as err:
        raise write_failed(folder, err) from err
    if folder.exists() and not is_complete(folder):
        missing = ", ".join(name for name in FILES if not (folder / name).is_file())
        raise VisfocusError(f"{folder} is an incomplete checkpoint (no {missing}) and cannot be resumed; move that "
                            "folder away to start fresh")
    return folder.exists()


# --- save and load --------------------------------------------------------------------------------------------------
def _write(tmp: Path, model: torch.nn.Module, optimizer, scheduler, state: dict[str, Any]) -> None:
    replace_file(tmp / TRAINABLE, safetensors_bytes(trainable_state(model)))
    tensors: dict[str, torch.Tensor] = {}
    rest = split_tensors({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "rng": _rng_state()}, "", tensors)
    replace_file(tmp / OPTIMIZER, safetensors_bytes(tensors))
    replace_file(tmp / REST, json.dumps(rest))
    replace_file(tmp / STATE, json.dumps(state, indent=1))  # last: the folder is complete from here on


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, state: dict[str, Any]) -> None:
    """Write the checkpoint to ``folder.tmp`` and swap it in. A failed write is one ``VisfocusError``; the previous
    checkpoint stays in place and the partial ``folder.tmp`` is removed."""
    tmp = sibling(folder, TMP)
    try:
        discard(tmp)  # the leftover of a killed save
    except OSError as err:
        raise write_failed(tmp, err) from err
    make_folder(tmp)
    try:
        _write(tmp, model, optimizer, scheduler, state)
    except VisfocusError:
        with contextlib.suppress(OSError):
            discard(tmp)
        raise
    swap_in(tmp, folder)


@contextlib.contextmanager
def _reading(folder: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise VisfocusError(f"cannot read the checkpoint in {folder} ({type(err).__name__}: {err}); move that folder "
                            "away to start fresh") from err


def read_state(folder: Path, config: FinetuneConfig) -> dict[str, Any]:
    """The loop state of the checkpoint in ``folder``; refused when it was trained under another configuration."""
    with _reading(folder):
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        old, new = state["config"], dataclasses.asdict(config)
    changed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if changed:
        raise VisfocusError(f"{folder} holds a checkpoint of another configuration ({'; '.join(changed)}); use "
                            "another --output_dir or remove that folder")
    return state


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Restore the trainable weights, optimizer, scheduler and RNG states saved in ``folder`` (nothing unpickled)."""
    with _reading(folder):
        weights = load_file(folder / TRAINABLE)
        rest = join_tensors(json.loads((folder / REST).read_text(encoding="utf-8")), load_file(folder / OPTIMIZER))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if weights.keys() != params.keys():
        raise VisfocusError(f"{folder} holds other trainable weights than this model's ({len(weights)} tensors, "
                            f"{len(params)} expected); use another --output_dir or remove that folder")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    with _reading(folder):
        optimizer.load_state_dict(rest["optimizer"])
        scheduler.load_state_dict(rest["scheduler"])
        _set_rng_state(rest["rng"])
