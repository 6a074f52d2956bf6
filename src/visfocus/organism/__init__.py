"""The built-in model organism: a 1.6M-parameter Qwen3-VL trained from scratch (with ``visfocus finetune``'s code) on
the rendered ``scenes_train`` task, shipped in ``weights/`` with its model card. It makes ``visfocus eval`` with no
arguments meaningful on a machine with no GPU and no downloads: every method and analysis runs through the real
Qwen3-VL code paths on a model that actually solves (most of) a spatial task. It is not a stand-in for a real VLM's
numbers. ``visfocus organism train --out DIR`` rebuilds it."""

from __future__ import annotations

from pathlib import Path

from visfocus.errors import VisfocusError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_TASK = "scenes_test"
NOTE = ("built-in default: the visfocus model organism, a 1.6M-parameter Qwen3-VL trained from scratch on rendered "
        "scenes (see `visfocus organism card`); its numbers exercise the methods, they are not a real VLM's. Pass "
        "--model to evaluate a real checkpoint.")


def model_name(model: str | None) -> str:
    """How a run's ``model`` reads for people: the Hub id or path, or the organism for ``None`` (the default)."""
    return "the visfocus model organism" if model is None else str(model)


def organism_path(folder: Path | None = None) -> Path:
    """The folder of the shipped organism (a ``visfocus.load``-able model + processor, MODEL_CARD.md, card.json)."""
    folder = WEIGHTS_DIR if folder is None else folder
    if not (folder / "model.safetensors").is_file():
        raise VisfocusError(f"the model organism's weights are missing from {folder}; rebuild them with "
                            f"`visfocus organism train --out DIR` and copy DIR/model/* there")
    return folder
