"""What the app shows, as pure functions of one stored result (its trace arrays, as ``visfocus.tracefile`` stores
them: ``attention`` (L, H, N) on the N image tokens, ``shares`` (L, 3), ``views``) and of the view settings: the
attention row a head choice gives, sink masking, the token grid, grid cell ↔ token ↔ pixel, the layer × head mass
grid, and cache keys. Nothing here runs a model, draws or touches files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from visfocus.errors import VisfocusError

HEAD_MODES = ("mean", "max")  # or a head index


def image_hash(image: Image.Image) -> str:
    """A content hash of an RGB image (mode, size and pixels; not the file it came from)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha1(f"{rgb.size}".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def cache_key(image_digest: str, question: str, options: Sequence[str] | None, method: str,
              params: Mapping[str, Any]) -> str:
    """One key per (image, question, options, method, parameters): parameters in a fixed order, so the same call
    always finds its stored result."""
    payload = {"image": image_digest, "question": question, "options": list(options or ()), "method": method,
               "params": {k: params[k] for k in sorted(params)}}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def head_row(attention: np.ndarray, layer: int, head: str | int = "mean") -> np.ndarray:
    """(N,) attention of one layer's last prompt row on the image tokens: the head mean, the head max, or one head.
    ``attention``: (L, H, N)."""
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 3:
        raise VisfocusError(f"attention must be (layers, heads, tokens), got shape {att.shape}")
    if not 0 <= layer < att.shape[0]:
        raise VisfocusError(f"layer {layer} out of range 0..{att.shape[0] - 1}")
    if head == "mean":
        return att[layer].mean(0)
    if head == "max":
        return att[layer].max(0)
    index = int(head)
    if not 0 <= index < att.shape[1]:
        raise VisfocusError(f"head {index} out of range 0..{att.shape[1] - 1}")
    return att[layer, index]


def mask_sinks(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row with its ``k`` largest tokens set to nan, their indices by decreasing attention): an attention sink (a
    token holding much of the mass) otherwise sets the colour scale and washes out the rest of the map."""
    row = np.asarray(row, dtype=np.float64)
    if k <= 0:
        return row.copy(), np.zeros(0, dtype=np.int64)
    sinks = np.argsort(-row, kind="stable")[: min(k, row.size)]  # (k,)
    masked = row.copy()
    masked[sinks] = np.nan
    return masked, sinks


def view_grid(row: np.ndarray, view: Mapping[str, Any]) -> np.ndarray:
    """(rows, cols) of an (N,) image-token row on one view (``view["index"]``: which token each cell is)."""
    index = np.asarray(view["index"], dtype=np.int64)  # (rows*cols,)
    return np.asarray(row)[index].reshape(int(view["rows"]), int(view["cols"]))


def cell_token(view: Mapping[str, Any], row: int, col: int) -> int:
    """The image-token index (0..N-1, prompt order) of grid cell (row, col)."""
    rows, cols = int(view["rows"]), int(view["cols"])
    if not (0 <= row < rows and 0 <= col < cols):
        raise VisfocusError(f"cell ({row}, {col}) outside the {rows}×{cols} grid")
    return int(view["index"][row * cols + col])


def token_cell(view: Mapping[str, Any], token: int) -> tuple[int, int] | None:
    """The grid cell (row, col) of image token ``token`` in this view, or None when the view does not hold it."""
    hits = np.nonzero(np.asarray(view["index"]) == token)[0]
    return None if hits.size == 0 else divmod(int(hits[0]), int(view["cols"]))


def pixel_cell(view: Mapping[str, Any], x: float, y: float) -> tuple[int, int] | None:
    """The grid cell under pixel (x, y) of the original image, or None outside the view's region (LLaVA's crop)."""
    x0, y0, x1, y1 = (float(v) for v in view["region"])
    rows, cols = int(view["rows"]), int(view["cols"])
    col, row = int(np.floor((x - x0) / (x1 - x0) * cols)), int(np.floor((y - y0) / (y1 - y0) * rows))
    return (row, col) if 0 <= row < rows and 0 <= col < cols else None


def layer_head_mass(attention: np.ndarray) -> np.ndarray:
    """(L, H) attention mass of each layer's and head's last prompt row on all image tokens together."""
    return np.asarray(attention, dtype=np.float64).sum(-1)


def token_by_layer_head(attention: np.ndarray, token: int) -> np.ndarray:
    """(L, H) attention each layer and head gives image token ``token``: which of them look at that cell."""
    att = np.asarray(attention, dtype=np.float64)
    if not 0 <= token < att.shape[-1]:
        raise VisfocusError(f"image token {token} out of range 0..{att.shape[-1] - 1}")
    return att[..., token]


def top_k(probs: Sequence[float], tokens: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most probable (token, probability) pairs, most probable first."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")[:k]
    return [(tokens[i], float(probs[i])) for i in order]


def flip(gold: str | None, baseline_correct: bool | None, correct: bool | None) -> str:
    """"fixed" / "broken" against the baseline when the gold label is known, else ""."""
    if gold is None or baseline_correct is None or correct is None or baseline_correct == correct:
        return ""
    return "fixed" if correct else "broken"
