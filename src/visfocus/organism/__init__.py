"""The built-in model organism: a 1.6M-parameter Qwen3-VL trained from scratch (with ``visfocus finetune``'s code) on
the rendered ``scenes_train`` task, shipped in ``weights/`` with its model card (v2: on/under are 0.5 % of its training
mix each; the first organism, v1, saw them 4 % each and stays in ``weights_v1/``, loadable as ``organism-v1``). It
makes ``visfocus eval`` with no arguments meaningful on a machine with no GPU and no downloads: every method and
analysis runs through the real Qwen3-VL code paths on a model that solves the common relations of a spatial task and
is unsure of the rare ones. It is not a stand-in for a real VLM's
numbers. ``visfocus organism train --out DIR`` rebuilds it."""

from __future__ import annotations

from pathlib import Path

from visfocus.errors import VisfocusError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Names that resolve to a packaged organism wherever a model id or path is read (``--model``, ``visfocus.load``),
# unless a local folder of that name exists.
ORGANISMS = {"organism": WEIGHTS_DIR, "organism-v2": WEIGHTS_DIR,
             "organism-v1": Path(__file__).resolve().parent / "weights_v1"}
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


def resolve(model: str) -> str:
    """``model`` itself, or the folder of the packaged organism it names (``ORGANISMS``) when no local path of that
    name exists."""
    if isinstance(model, str) and model in ORGANISMS and not Path(model).exists():
        return str(organism_path(ORGANISMS[model]))
    return model
