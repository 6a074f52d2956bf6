"""Figures of recorded attention (docs/methods.md §10.1, §12.12): numeric heatmaps over the original image at selectable
layers (the middle layer by default, not the last), image / text / special shares by layer, a layer × token strip,
and reliability diagrams. All plotting of the package lives here.

Matplotlib runs on the Agg canvas without pyplot state: every function returns a ``matplotlib.figure.Figure`` (or a
numpy array) and writes nothing; ``save(fig, path)`` and ``figure_to_png_bytes(fig)`` are the only outputs.

A ``view`` is either a ``visfocus.models.layout.ImageView`` or a trace-file view dict (``visfocus.tracefile``:
rows, cols, region (x0, y0, x1, y1) in original pixels, image_size (w, h), index). ``boxes`` are ``Record.boxes``
dicts {"label", "xyxy", "normalized"} (normalized: fractions of width and height) or an (M, 4) array of pixel xyxy."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.lines
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from visfocus.errors import VisfocusError

CMAP = "jet"
PANEL_INCHES = 4.5  # width of one image panel


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _geometry(view: Any) -> tuple[int, int, tuple[float, ...], tuple[int, int]]:
    """(rows, cols, region, (width, height)) of an ImageView or a trace view dict."""
    get = view.get if isinstance(view, Mapping) else lambda key: getattr(view, key)
    w, h = (int(v) for v in get("image_size"))
    return int(get("rows")), int(get("cols")), tuple(float(v) for v in get("region")), (w, h)


def heat_to_pixels(grid: np.ndarray, view: Any, smooth: bool = False) -> np.ndarray:
    """(H, W) float32 over the original image: each pixel takes the value of the grid cell whose pixel box (the view
    region split into rows × cols, as ``ImageView.boxes``) holds the pixel's centre. Pixels the view does not cover
    (LLaVA's centre crop) are nan; parts of the region outside the image are dropped. ``smooth``: bilinear
    interpolation between cell centres instead of flat cells (clamped at the region's edges)."""
    rows, cols, (x0, y0, x1, y1), (w, h) = _geometry(view)
    grid = np.asarray(grid, dtype=np.float64)  # (rows, cols)
    if grid.shape != (rows, cols):
        raise VisfocusError(f"grid has shape {grid.shape}, but the view is {rows}×{cols}")
    cx = (np.arange(w) + 0.5 - x0) / (x1 - x0) * cols  # (W,) pixel centres in cell units
    cy = (np.arange(h) + 0.5 - y0) / (y1 - y0) * rows  # (H,)
    inside = ((cy >= 0) & (cy < rows))[:, None] & ((cx >= 0) & (cx < cols))[None, :]  # (H, W)
    if smooth:
        heat = _lerp(_lerp(grid, cy - 0.5, axis=0), cx - 0.5, axis=1)  # (H, W)
    else:
        ri = np.clip(np.floor(cy).astype(np.int64), 0, rows - 1)  # (H,)
        ci = np.clip(np.floor(cx).astype(np.int64), 0, cols - 1)  # (W,)
        heat = grid[np.ix_(ri, ci)]  # (H, W)
    return np.where(inside, heat, np.nan).astype(np.float32)


def _lerp(values: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` at fractional indices ``pos`` (P,) along ``axis``."""
    n = values.shape[axis]
    pos = np.clip(pos, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * values.ndim
    shape[axis] = -1
    t = (pos - lo).reshape(shape)
    return np.take(values, lo, axis) * (1 - t) + np.take(values, hi, axis) * t


def _pixel_boxes(boxes: Any, size: tuple[int, int]) -> list[tuple[np.ndarray, str]]:
    """[(pixel xyxy (4,), label)] from Record.boxes dicts or an (M, 4) pixel array."""
    if boxes is None:
        return []
    w, h = size
    out = []
    for box in boxes:
        if isinstance(box, Mapping):
            xyxy = np.asarray(box["xyxy"], dtype=np.float64)  # (4,)
            if box.get("normalized"):
                xyxy = xyxy * [w, h, w, h]
            out.append((xyxy, str(box.get("label") or "")))
        else:
            out.append((np.asarray(box, dtype=np.float64).reshape(4), ""))
    return out


def _draw_heat(fig: Figure, ax, image, heat: np.ndarray, boxes: Any, title: str, alpha: float) -> None:
    w, h = image.size
    extent = (0, w, h, 0)  # pixel coordinates, origin upper: pixel (0, 0) is the top-left corner
    ax.imshow(np.asarray(image.convert("RGB")), extent=extent, origin="upper")
    shown = ax.imshow(heat, extent=extent, origin="upper", cmap=CMAP, alpha=alpha, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8, label="attention").solids.set_alpha(1.0)
    for (x0, y0, x1, y1), label in _pixel_boxes(boxes, (w, h)):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=2))
        if label:
            ax.text(x0, y0, label, fontsize=8, va="top", clip_on=True, bbox={"facecolor": "white", "pad": 1})
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _panel_size(image) -> tuple[float, float]:
    w, h = image.size
    return PANEL_INCHES, float(np.clip(PANEL_INCHES * h / w, 1.5, 3 * PANEL_INCHES))


def heatmap_figure(image, grid: np.ndarray, view: Any, boxes: Any = None, title: str = "", alpha: float = 0.5,
                   smooth: bool = False) -> Figure:
    """The original image with the (rows, cols) attention grid drawn over it as ``heat_to_pixels`` values (colour
    bar in attention units) and ``boxes`` as rectangles."""
    pw, ph = _panel_size(image)
    fig = _new_figure(pw + 1.0, ph + (0.5 if title else 0.1))
    _draw_heat(fig, fig.add_subplot(), image, heat_to_pixels(grid, view, smooth), boxes, title, alpha)
    return fig


def _view_grid(attention_row: np.ndarray, view: Any) -> np.ndarray:
    """(rows, cols) of one layer's (N,) attention on the view (trace views carry ``index``; an ImageView is taken as
    the only N tokens, in order)."""
    rows, cols, _, _ = _geometry(view)
    if isinstance(view, Mapping) and "index" in view:
        index = np.asarray(view["index"], dtype=np.int64)  # (rows*cols,)
    elif attention_row.shape[0] == rows * cols:
        index = np.arange(rows * cols)
    else:
        raise VisfocusError(f"{attention_row.shape[0]} image tokens for a {rows}×{cols} view: pass the trace's view "
                            "dict, whose 'index' says which token each cell is")
    return attention_row[index].reshape(rows, cols)


def layer_heatmaps_figure(image, attention: np.ndarray, view: Any, layers: Sequence[int] | None = None,
                          boxes: Any = None, title: str = "", alpha: float = 0.5, smooth: bool = False) -> Figure:
    """One heatmap panel per layer in ``layers`` (default: the middle layer, L // 2) of a trace's (L, N) or
    (L, H, N) image attention (heads averaged), each with its own colour bar."""
    att = np.asarray(attention, dtype=np.float64)
    att = att.mean(1) if att.ndim == 3 else att  # (L, N)
    if att.ndim != 2:
        raise VisfocusError(f"attention must be (L, N) or (L, H, N), got shape {np.shape(attention)}")
    layers = [att.shape[0] // 2] if layers is None else [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < att.shape[0]]
    if bad or not layers:
        raise VisfocusError(f"layers {bad or '[]'} out of range: the attention has {att.shape[0]} layers "
                            f"(0–{att.shape[0] - 1})")
    pw, ph = _panel_size(image)
    width = (pw + 1.0) * len(layers)  # inches
    # The title wrapped to the figure's width (about 11 characters per inch at font size 10), never cut off.
    lines = [part for line in title.splitlines() for part in (textwrap.wrap(line, max(20, int(width * 11))) or [""])]
    fig = _new_figure(width, ph + 0.4 + 0.22 * len(lines))
    for ax, layer in zip(fig.subplots(1, len(layers), squeeze=False)[0], layers, strict=True):
        _draw_heat(fig, ax, image, heat_to_pixels(_view_grid(att[layer], view), view, smooth), boxes,
                   f"layer {layer}", alpha)
    if lines:
        fig.suptitle("\n".join(lines), fontsize=10)
    return fig


def share_by_layer_figure(shares_mean: np.ndarray, shares_std: np.ndarray | None = None,
                          labels: Sequence[str] = ("image", "text", "special"), title: str = "") -> Figure:
    """Lines of the (L, 3) mean attention share per layer, with ±1 std bands from ``shares_std`` (L, 3)."""
    mean = np.asarray(shares_mean, dtype=np.float64)  # (L, K)
    layer = np.arange(mean.shape[0])  # (L,)
    fig = _new_figure(6, 3.5)
    ax = fig.add_subplot()
    for k, label in enumerate(labels[: mean.shape[1]]):
        ax.plot(layer, mean[:, k], marker=".", label=label)
        if shares_std is not None:
            std = np.asarray(shares_std, dtype=np.float64)[:, k]  # (L,)
            ax.fill_between(layer, mean[:, k] - std, mean[:, k] + std, alpha=0.2)
    ax.set(xlabel="layer", ylabel="share of last-row attention", ylim=(0, 1), title=title or "attention share by layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return fig


def line_figure(series: Mapping[str, Sequence[float]], xlabel: str = "layer", title: str = "") -> Figure:
    """One line per named (L,) series against its index."""
    fig = _new_figure(6, 3.5)
    ax = fig.add_subplot()
    for label, values in series.items():
        values = np.asarray(values, dtype=np.float64)  # (L,)
        ax.plot(np.arange(len(values)), values, marker=".", label=label)
    ax.set(xlabel=xlabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return fig


def matrix_figure(matrix: np.ndarray, xlabel: str, ylabel: str, title: str = "",
                  marker: tuple[int, int] | None = None) -> Figure:
    """A (rows, cols) matrix as coloured cells with a colour bar (e.g. layer × head attention mass); ``marker``
    outlines one cell (row, col)."""
    values = np.asarray(matrix, dtype=np.float64)  # (R, C)
    fig = _new_figure(1.5 + 0.3 * values.shape[1], 1.2 + 0.25 * values.shape[0])
    ax = fig.add_subplot()
    shown = ax.imshow(values, aspect="auto", cmap=CMAP, interpolation="nearest", origin="upper")
    fig.colorbar(shown, ax=ax)
    if marker is not None:
        ax.add_patch(Rectangle((marker[1] - 0.5, marker[0] - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=2))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[float], title: str = "", xlabel: str = "") -> Figure:
    """Horizontal bars, the first label on top."""
    fig = _new_figure(4.0, 0.6 + 0.3 * len(labels))
    ax = fig.add_subplot()
    ax.barh(np.arange(len(labels))[::-1], values, color="tab:blue")
    ax.set_yticks(np.arange(len(labels))[::-1], labels)
    ax.set(xlabel=xlabel, title=title, xlim=(0, max(1e-9, max(values, default=1.0)) * 1.05))
    return fig


def grouped_bar_figure(labels: Sequence[str], series: Mapping[str, Sequence[float]], title: str = "",
                       ylabel: str = "", ylim: tuple[float, float] | None = None, xlabel: str = "") -> Figure:
    """Vertical bars: one group per label, one bar per named series in each group, each bar's value written on it."""
    fig = _new_figure(max(4.0, 1.5 + 1.5 * len(labels)), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        x = np.arange(len(labels)) + (k - (len(series) - 1) / 2) * width  # (G,)
        values = np.asarray(values, dtype=np.float64)  # (G,)
        bars = ax.bar(x, np.nan_to_num(values), width=width, label=name)
        ax.bar_label(bars, labels=["–" if np.isnan(v) else f"{v:.2f}".rstrip("0").rstrip(".") for v in values],
                     fontsize=7)
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, **({"ylim": ylim} if ylim else {}))
    ax.legend(fontsize=8)
    return fig


def panels_figure(panels: Mapping[str, Mapping[str, Sequence[float]]], xlabel: str = "layer", title: str = "",
                  zero_line: bool = False) -> Figure:
    """Line panels, two per row, one per title in ``panels``, each with one line per named (L,) series; a series
    keeps its colour in every panel, and one legend below them names each once."""
    cols = min(2, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    fig = _new_figure(4.5 * cols, 3.0 * rows + 0.3 * len(labels))
    for i, (panel_title, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, values in series.items():
            values = np.asarray(values, dtype=np.float64)  # (L,)
            ax.plot(np.arange(len(values)), values, marker=".", label=label, color=colours[label])
        if zero_line:
            ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set(xlabel=xlabel, title=panel_title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if labels:
        handles = [matplotlib.lines.Line2D([], [], color=colours[label], marker=".") for label in labels]
        fig.legend(handles, labels, loc="outside lower center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def depth_strip_figure(attention: np.ndarray, title: str = "") -> Figure:
    """Layer × image-token strip of one example's (L, N) (or (L, H, N), heads averaged) attention."""
    att = np.asarray(attention, dtype=np.float64)
    att = att.mean(1) if att.ndim == 3 else att  # (L, N)
    fig = _new_figure(8, 1.2 + 0.15 * att.shape[0])
    ax = fig.add_subplot()
    shown = ax.imshow(att, aspect="auto", cmap=CMAP, interpolation="nearest", origin="upper")
    fig.colorbar(shown, ax=ax, label="attention")
    ax.set(xlabel="image token (prompt order)", ylabel="layer", title=title or "attention on image tokens by layer")
    return fig


def reliability_figure(bins: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Reliability diagram: accuracy per confidence bin (bars; count above) against the diagonal, with each bin's
    mean confidence marked. ``bins``: [{"low", "high", "n", "mean_confidence", "accuracy"}] (empty bins skipped)."""
    full = [b for b in bins if b["n"]]
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for i, b in enumerate(full):
        ax.bar(b["low"], b["accuracy"], width=b["high"] - b["low"], align="edge", color="tab:blue", alpha=0.7,
               edgecolor="black", label="accuracy" if i == 0 else None)
        ax.plot(b["mean_confidence"], b["accuracy"], "o", color="tab:red", label="mean confidence" if i == 0 else None)
        ax.text((b["low"] + b["high"]) / 2, b["accuracy"] + 0.01, str(b["n"]), ha="center", fontsize=7)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.08), title=title or "reliability")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def figure_to_png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure (format from the suffix, e.g. .png, .pdf, .svg) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
