"""WhatsUp questions from the Hugging Face dataset ``AdaptVis/all_datasets``: from the Hub (the default when no data
root is given; needs a network once, then datasets' cache), or from a local copy of the dataset repository under the
data root, read in place and offline. A local copy is the repository as downloaded, e.g. by
``hf download AdaptVis/all_datasets --repo-type dataset --local-dir <root>/all_datasets``: the card ``README.md``,
whose YAML front matter lists the ``configs`` and their data files, and the ``<config>/test-*.parquet`` files.

``datasets`` reads both; it is optional (``pip install -e ".[data]"``), so it is imported only here, when needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from visfocus.errors import VisfocusError

HUB_DATASET = "AdaptVis/all_datasets"
# Where a local copy may be under a data root: the root itself, or a folder named after the repository.
LOCAL_COPY_FOLDERS = (".", "all_datasets", "AdaptVis/all_datasets")
QUESTION_COLUMNS = ("id", "question", "answer")
INSTALL_HINT = 'install `datasets` (pip install -e ".[data]")'
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


def card_configs(folder: Path) -> list[str] | None:
    """The config names in ``folder/README.md``'s YAML front matter, or None when there is no such card: the card's
    ``configs:`` list is what makes a folder a dataset copy (it says which parquet files each config reads)."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    match = _FRONT_MATTER.match(card.read_text(encoding="utf-8", errors="replace"))
    try:
        metadata = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    configs = metadata.get("configs") if isinstance(metadata, dict) else None
    if not isinstance(configs, list):
        return None
    return [entry["config_name"] for entry in configs if isinstance(entry, dict) and "config_name" in entry]


def find_local_copy(root: Path) -> Path | None:
    """The first of ``LOCAL_COPY_FOLDERS`` under ``root`` that is a dataset copy, or None. A folder named
    ``all_datasets`` that is not one is an error: it was surely meant as the copy, and skipping it silently would
    leave the user guessing why their download is ignored."""
    for name in LOCAL_COPY_FOLDERS:
        folder = root / name
        if card_configs(folder) is not None:
            return folder
        if name != "." and folder.is_dir():
            raise VisfocusError(f"{folder} is not a local copy of {HUB_DATASET}: it has no README.md whose YAML front "
                                f"matter lists `configs:` (download the whole dataset repository, card included)")
    return None


def read_local_copy(folder: Path, config: str) -> list[dict[str, Any]]:
    """The ``test`` rows of ``config`` from a local copy, streamed from its parquet files: no Arrow copy lands in
    datasets' cache (only a lock file does) and the network is never asked, with or without ``HF_HUB_OFFLINE``."""
    configs = card_configs(folder) or []
    if config not in configs:
        raise VisfocusError(f"{folder}/README.md lists no config {config} (it lists {', '.join(configs) or 'none'}); "
                            f"the copy of {HUB_DATASET} is incomplete")
    return _load(str(folder), config, f"{HUB_DATASET} config {config} in {folder}", streaming=True)


def read_hub(config: str, task_name: str, hint: str) -> list[dict[str, Any]]:
    """The ``test`` rows of ``config`` from the Hub, cached by datasets (so later runs work with ``HF_HUB_OFFLINE=1``);
    ``hint`` ends every error: what to give instead (a data root)."""
    what = f"{HUB_DATASET} config {config} from the Hub (task {task_name}, no --data_root given)"
    return _load(HUB_DATASET, config, what, streaming=False, hint=hint)


def _load(source: str, config: str, what: str, streaming: bool, hint: str = "") -> list[dict[str, Any]]:
    hint = f"; {hint}" if hint else ""
    try:
        import datasets
    except ImportError:
        raise VisfocusError(f"reading {what} needs the optional `datasets` package: {INSTALL_HINT}{hint}") from None
    try:
        rows = [dict(row) for row in datasets.load_dataset(source, config, split="test", streaming=streaming)]
    except Exception as error:  # datasets raises many kinds (offline, missing files, bad parquet); say which one
        reason = (str(error).strip().splitlines() or [""])[0]
        raise VisfocusError(f"could not read {what}: {type(error).__name__}: {reason}{hint}") from error
    missing = [column for column in QUESTION_COLUMNS if rows and column not in rows[0]]
    if missing:
        raise VisfocusError(f"{what} has no column {', '.join(missing)}; expected the card's id, question, answer")
    return rows
