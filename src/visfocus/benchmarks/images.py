"""Where COCO images and their boxes live under a data root: shared by the VSR and POPE loaders.
Missing images are not an error here — the runner checks existence before any forward pass and reports them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

COCO_BOXES_FILE = Path("coco_boxes") / "vsr_pope_coco_yolo_boxes.json"

BoxesByImage = dict[str, tuple[dict, ...]]


def coco_image_candidates(data_root: Path, file_name: str, coco_split: str | None) -> list[Path]:
    """Every place ``file_name`` may be, most likely first: a flat ``images/`` folder, then per-split folders
    (``images/<split>``, ``<split>``, ``coco/<split>``, and ``images/<any>/<split>`` when that folder holds it)."""
    candidates = [data_root / "images" / file_name]
    if coco_split:
        candidates += [data_root / "images" / coco_split / file_name, data_root / coco_split / file_name,
                       data_root / "coco" / coco_split / file_name]
        candidates += [folder / file_name for folder, names in _nested_split_folders(data_root, coco_split)
                       if file_name in names]
    return candidates


def existing_coco_image(data_root: Path, file_name: str, coco_split: str | None) -> Path | None:
    """The first candidate of ``coco_image_candidates`` that is a file, or None."""
    return next((path for path in coco_image_candidates(data_root, file_name, coco_split) if path.is_file()), None)


def find_coco_image(data_root: Path, file_name: str, coco_split: str | None) -> Path:
    """The first existing candidate, else the first candidate (``<root>/images/<file>``); never raises."""
    found = existing_coco_image(data_root, file_name, coco_split)
    return found if found is not None else data_root / "images" / file_name


def first_existing_image(lookups: Iterable[tuple[Path, str, str | None]]) -> Path | None:
    """The first image found over several (data_root, file_name, coco_split) lookups, or None."""
    for data_root, file_name, coco_split in lookups:
        found = existing_coco_image(data_root, file_name, coco_split)
        if found is not None:
            return found
    return None


@lru_cache(maxsize=64)
def _nested_split_folders(data_root: Path, coco_split: str) -> tuple[tuple[Path, frozenset[str]], ...]:
    """``<root>/images/*/<split>`` folders with their file names, listed once (10k lookups stay fast)."""
    images = data_root / "images"
    if not images.is_dir():
        return ()
    folders = sorted(path for path in images.glob(f"*/{coco_split}") if path.is_dir())
    return tuple((folder, frozenset(entry.name for entry in folder.iterdir())) for folder in folders)


def load_coco_boxes(data_root: Path | None) -> BoxesByImage | None:
    """Boxes from ``<root>/coco_boxes/vsr_pope_coco_yolo_boxes.json`` keyed by COCO 2017 file name
    (``000000xxxxxx.jpg``), as ``{"label", "xyxy" (normalised), "normalized": True}`` dicts; None when absent."""
    if data_root is None:
        return None
    path = Path(data_root) / COCO_BOXES_FILE
    return _read_coco_boxes(path) if path.is_file() else None


@lru_cache(maxsize=4)
def _read_coco_boxes(path: Path) -> BoxesByImage:
    payload = json.loads(path.read_text())
    return {file_name: tuple(box_from_cxcywh(*box) for box in entry.get("boxes_cxcywh_norm", ()))
            for file_name, entry in payload["images"].items()}


def box_from_cxcywh(label: str, cx: float, cy: float, w: float, h: float) -> dict:
    """A normalised YOLO box (centre, size) as a normalised xyxy box dict, clipped to [0, 1] (6 decimals, as stored)."""
    x0, y0, x1, y1 = (round(min(max(v, 0.0), 1.0), 6) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return {"label": label, "xyxy": (x0, y0, x1, y1), "normalized": True}


def coco2017_name(file_name: str) -> str:
    """``COCO_val2014_000000310196.jpg`` → ``000000310196.jpg`` (COCO 2014 and 2017 share image ids)."""
    return file_name.rsplit("_", 1)[-1]
