"""Does the model look at the objects the question names? (AdaptVis paper §4.1, Fig. 6, 7, 19–24.)

The object boxes become a binary indicator on a view's token grid; the cosine similarity between a layer's
image-attention grid and that indicator is a per-sample score, and its AUROC for answer correctness is reported per
layer. The pointing game asks instead whether the single most-attended cell lies on an object.

Differences from the paper: the paper takes the image-attention *logits*; traces store post-softmax probabilities,
so the cosine here is of the head-mean attention probabilities. The indicator is exact (a cell counts iff its pixel
box overlaps an object box with positive area; no dilation). ``boxes`` are ``Record.boxes`` dicts
{"label", "xyxy", "normalized"}; normalized boxes are fractions of the image width and height.
``view_index`` picks the trace view (0: the whole-image view in every family; LLaVA-NeXT's 1 is its tiles)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visfocus.analysis.attention import grid_map, image_attention
from visfocus.metrics import auroc
from visfocus.models.layout import ImageView, require_grid


def cell_boxes(view: Mapping[str, Any]) -> np.ndarray:
    """(rows*cols, 4) pixel box (x0, y0, x1, y1) of each grid cell (row-major), clipped to the image — the geometry
    of ``ImageView.boxes``."""
    rows, cols = view["rows"], view["cols"]
    return ImageView(name=view.get("name", ""), columns=np.arange(rows * cols), rows=rows, cols=cols,
                     region=tuple(view["region"]), image_size=tuple(view["image_size"])).boxes()


def box_pixels(box: Mapping[str, Any], image_size: Sequence[int]) -> np.ndarray:
    """(4,) the box in pixels (x0, y0, x1, y1), corners ordered; normalized boxes are scaled by (width, height)."""
    x0, y0, x1, y1 = np.asarray(box["xyxy"], dtype=np.float64)
    if box.get("normalized"):
        w, h = image_size
        x0, x1, y0, y1 = x0 * w, x1 * w, y0 * h, y1 * h
    return np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])


def box_indicator(view: Mapping[str, Any], boxes: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(rows, cols) uint8: 1 where the cell's pixel box overlaps any of ``boxes`` with positive area, else 0. A box
    edge lying exactly on a cell boundary does not mark the neighbouring cell."""
    cells = cell_boxes(view)  # (C, 4)
    inside = np.zeros(len(cells), dtype=bool)  # (C,)
    for box in boxes:
        x0, y0, x1, y1 = box_pixels(box, view["image_size"])
        width = np.minimum(cells[:, 2], x1) - np.maximum(cells[:, 0], x0)  # (C,)
        height = np.minimum(cells[:, 3], y1) - np.maximum(cells[:, 1], y0)  # (C,)
        inside |= (width > 0) & (height > 0)
    return inside.reshape(view["rows"], view["cols"]).astype(np.uint8)


def _cosine(grid: np.ndarray, indicator: np.ndarray) -> float:
    a, b = grid.ravel().astype(np.float64), indicator.ravel().astype(np.float64)  # (C,), (C,)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def overlap_score(attention_row: np.ndarray, view: Mapping[str, Any], boxes: Sequence[Mapping[str, Any]]) -> float:
    """Cosine similarity between one layer's attention grid (``attention_row`` (N,), L2-normalised) and the box
    indicator on ``view`` (L2-normalised); 0 when the indicator is empty or the attention all zero."""
    return _cosine(grid_map(attention_row, view), box_indicator(view, boxes))


def _usable(traces: Mapping[str, Mapping[str, Any]], boxes: Mapping[str, Sequence[Mapping[str, Any]]],
            view_index: int, ids: Sequence[str]) -> list[tuple[str, dict, np.ndarray]]:
    """(sample id, view, indicator) for the samples with boxes, that view, and a non-empty indicator."""
    out = []
    for sid in ids:
        require_grid(traces[sid].get("no_grid"))  # box overlap needs each token's pixel box
        views = traces[sid].get("views") or []
        if not boxes.get(sid) or len(views) <= view_index:
            continue
        indicator = box_indicator(views[view_index], boxes[sid])
        if indicator.any():
            out.append((sid, views[view_index], indicator))
    return out


def _n_layers(traces: Mapping[str, Mapping[str, Any]]) -> int:
    """L of the traces (every trace of a run has the same number of layers)."""
    return len(image_attention(next(iter(traces.values())))) if traces else 0


def overlap_auroc_by_layer(traces: Mapping[str, Mapping[str, Any]], rows: Mapping[str, Mapping[str, Any]],
                           boxes: Mapping[str, Sequence[Mapping[str, Any]]], pre: bool = False,
                           view_index: int = 0) -> dict[str, Any]:
    """Per layer, the AUROC of the overlap score for predicting ``rows[id]["correct"]``: {"auroc": (L,), "scores":
    (S, L), "correct": (S,), "ids", "n", "n_correct"}. Samples without a row, without boxes or whose indicator is
    empty are skipped. A layer's AUROC is nan unless both correct and incorrect samples remain."""
    ids = sorted(sid for sid in traces if sid in rows)
    used, n_layers = _usable(traces, boxes, view_index, ids), _n_layers(traces)
    scores = np.array([[_cosine(grid_map(row, view), indicator) for row in image_attention(traces[sid], pre)]
                       for sid, view, indicator in used]).reshape(len(used), n_layers)  # (S, L)
    correct = np.array([bool(rows[sid]["correct"]) for sid, _, _ in used], dtype=bool)  # (S,)
    per_layer = [auroc(scores[:, layer].tolist(), correct.tolist()) for layer in range(n_layers)]  # nan if S = 0
    return {"auroc": np.array(per_layer), "scores": scores, "correct": correct, "ids": [sid for sid, _, _ in used],
            "n": len(used), "n_correct": int(correct.sum())}


def pointing_game_by_layer(traces: Mapping[str, Mapping[str, Any]], boxes: Mapping[str, Sequence[Mapping[str, Any]]],
                           pre: bool = False, view_index: int = 0) -> dict[str, Any]:
    """Per layer, the fraction of samples whose most-attended grid cell is a box cell (ties: the first cell in
    row-major order): {"hit_rate": (L,), "n"}. Samples without boxes or with an empty indicator are skipped; with
    none left the rates are nan."""
    used, n_layers = _usable(traces, boxes, view_index, sorted(traces)), _n_layers(traces)
    hits = np.array([[indicator.ravel()[np.argmax(grid_map(row, view))] for row in image_attention(traces[sid], pre)]
                     for sid, view, indicator in used], dtype=np.float64).reshape(len(used), n_layers)  # (S, L)
    rate = hits.mean(0) if used else np.full(n_layers, np.nan)
    return {"hit_rate": rate, "n": len(used)}
