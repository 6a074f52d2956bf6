"""Pictures of the app's views, from arrays (no model): the heatmap overlay drawn at the photo's own pixels (so a
click on it is a click on the image) with a colour bar beside it, and the small figures (top-k bars, shares by layer
for every method, layer × head grids) through ``visfocus.analysis.figures``."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from visfocus.analysis.figures import bar_figure, figure_to_png_bytes, heat_to_pixels, line_figure, matrix_figure

COLORMAPS = ("jet", "viridis", "inferno", "magma", "coolwarm", "gray")
BAR_WIDTH = 64  # pixels of colour bar and labels right of the photo


def to_image(fig) -> Image.Image:
    return Image.open(io.BytesIO(figure_to_png_bytes(fig))).convert("RGB")


def overlay(image: Image.Image, grid: np.ndarray, view: Mapping[str, Any], cmap: str = "jet",
            opacity: float = 0.5) -> Image.Image:
    """The photo with the (rows, cols) grid coloured over the pixels each token covers (nan cells, e.g. masked
    sinks, and pixels outside the view are left as they are), min-max scaled to the colour map, and a colour bar
    with the min and max values to the right. The photo keeps its size and position (pixel (x, y) stays there)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    heat = heat_to_pixels(grid, view)  # (H, W), nan where not covered
    finite = np.isfinite(heat)
    low, high = (float(np.nanmin(heat)), float(np.nanmax(heat))) if finite.any() else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(heat, nan=low) - low) / max(high - low, 1e-12), 0, 1)  # (H, W)
    colour = colormaps[cmap](scaled)[..., :3] * 255  # (H, W, 3)
    alpha = np.where(finite, opacity, 0.0)[..., None]  # (H, W, 1)
    blended = (rgb * (1 - alpha) + colour * alpha).astype(np.uint8)
    height, width = blended.shape[:2]
    canvas = Image.new("RGB", (width + BAR_WIDTH, height), "white")
    canvas.paste(Image.fromarray(blended), (0, 0))
    ramp = colormaps[cmap](np.linspace(1, 0, max(height - 20, 2)))[:, :3] * 255  # (h, 3), top = high
    bar = np.repeat(ramp[:, None, :], 14, axis=1).astype(np.uint8)  # (h, 14, 3)
    canvas.paste(Image.fromarray(bar), (width + 6, 10))
    draw = ImageDraw.Draw(canvas)
    draw.text((width + 22, 6), f"{high:.3g}", fill="black")
    draw.text((width + 22, height - 18), f"{low:.3g}", fill="black")
    return canvas


def bars(top: Sequence[tuple[str, float]], title: str) -> Image.Image:
    """Horizontal bars of the first-token top-k probabilities."""
    labels = [repr(token) for token, _ in top]
    return to_image(bar_figure(labels, [p for _, p in top], title=title, xlabel="probability"))


def shares_by_method(shares: Mapping[str, np.ndarray]) -> Image.Image:
    """Image, text and special-token shares per layer, one line per (method, kind)."""
    series = {f"{method} · {kind}": values[:, k] for method, values in shares.items()
              for k, kind in enumerate(("image", "text", "special"))}
    return to_image(line_figure(series, title="last-row attention share by layer"))


def grid_picture(matrix: np.ndarray, title: str, marker: tuple[int, int] | None = None) -> Image.Image:
    """A (layers × heads) grid as a picture with a colour bar."""
    return to_image(matrix_figure(matrix, xlabel="head", ylabel="layer", title=title, marker=marker))
