"""VEA, Visual Evidence Augmentation (Liu et al., "Seeing but Not Believing", arXiv 2510.17771): highlight where the
model already looks and ask again. Attention is only read; the image changes, so an answer costs two prefills.

Pass 1: the last prompt row's head-mean attention over the first view's image tokens (LLaVA-NeXT: the base view),
normalised per layer to sum 1 and averaged over ``layers``, else a ``profile``'s (``visfocus profile-layers``: the
paper's top 10 % by AUROC on evidence boxes), else the middle 10 % of the decoder (ceil(0.1·L) layers centred on
L/2: no profile needed, after the paper's finding that middle layers ground best). The grid is denoised (sinks),
smoothed, min-max scaled to [0, 1], upsampled to the original pixels, and each pixel dimmed to (α + (1 − α)·map)·pixel
on raw RGB. Pass 2 answers on that image, with a hint appended to the question.

VEA does not share image prefixes between questions (``visfocus eval`` and ``answer_batch`` fall back to whole
prefills for it): its second pass shows each question its own highlighted image. docs/methods.md §11 item 20 lists the
survey-code bugs this avoids (unnormalised map, σ 2× too wide, blocky modulation, no hint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visfocus.errors import VisfocusError
from visfocus.interventions.base import (
    Fidelity,
    LayerSpec,
    Method,
    MethodResult,
    Params,
    check_layers,
    param,
    register_method,
    resolve_layers,
)
from visfocus.interventions.batch import Batch

HINT = " Pay attention to the highlighted region of the image."


@dataclass(frozen=True)
class VEAParams(Params):
    # σ: Gaussian bandwidth as a fraction of the image's short side (paper default)
    smooth_sigma: float = param(0.5, paper="σ", low=0, low_open=True)
    # α: brightness of non-evidence regions; 1 leaves the image unchanged
    highlight_floor: float = param(0.5, paper="α", low=0.0, high=1.0)
    # λ: a cell above λ × its largest neighbour is an attention sink
    denoise_lambda: float = param(10.0, paper="λ", low=1, low_open=True)
    layers: LayerSpec = None  # layers to read; None: the profile's, else the middle 10 %
    profile: str | None = None  # JSON from `visfocus profile-layers`; used when layers is None
    hint: bool = True  # append HINT to the question in pass 2
    keep_original: bool = False  # VEA*: also show the original image (needs two images per prompt)

    def check(self, num_layers: int | None = None) -> None:
        if self.keep_original:
            raise VisfocusError("keep_original (VEA*: original and highlighted image in one prompt) is not supported "
                                "yet: the model adapters take one image per question")


def middle_layers(num_layers: int, fraction: float = 0.1) -> tuple[int, ...]:
    """ceil(fraction · L) consecutive layers centred on the middle of the decoder."""
    k = max(1, math.ceil(fraction * num_layers))
    return tuple(range((num_layers - k) // 2, (num_layers - k) // 2 + k))


def denoise_sinks(grid: np.ndarray, lam: float = 10.0) -> np.ndarray:
    """Cells above ``lam`` × the largest of their (up to 8, fewer at borders) neighbours become the neighbours'
    mean; every cell is judged against the original grid."""
    rows, cols = grid.shape
    if grid.size == 1:
        return grid.astype(float)
    padded = np.pad(grid.astype(float), 1, constant_values=np.nan)  # (rows+2, cols+2)
    neighbours = np.stack([padded[1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols]
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])  # (8, rows, cols)
    sink = grid > lam * np.nanmax(neighbours, axis=0)  # (rows, cols)
    return np.where(sink, np.nanmean(neighbours, axis=0), grid).astype(float)


def sigma_in_cells(smooth_sigma: float, image_size: tuple[int, int], region: tuple[float, float, float, float],
                   grid_shape: tuple[int, int]) -> tuple[float, float]:
    """(σ_rows, σ_cols) in grid cells: ``smooth_sigma`` × the short side of the (width, height) image, in pixels,
    divided by a cell's height and width in pixels (the view's ``region`` split into ``grid_shape`` cells)."""
    sigma_px = smooth_sigma * min(image_size)
    x0, y0, x1, y1 = region
    rows, cols = grid_shape
    return sigma_px / ((y1 - y0) / rows), sigma_px / ((x1 - x0) / cols)


def gaussian_smooth(grid: np.ndarray, sigma_cells: float | tuple[float, float]) -> np.ndarray:
    """Separable Gaussian blur, σ in grid cells (one or per axis), kernel radius ceil(3σ), reflect padding
    (mirrored about the edge, as scipy.ndimage's "reflect"; repeated when the kernel is wider than the grid)."""
    out = grid.astype(float)
    for axis, sigma in enumerate(np.broadcast_to(np.asarray(sigma_cells, dtype=float), (2,))):
        offsets = np.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1)  # (2r+1,)
        kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
        pad = [(0, 0), (0, 0)]
        pad[axis] = (len(offsets) // 2, len(offsets) // 2)
        padded = np.pad(out, pad, mode="symmetric")  # (rows+2r, cols) or (rows, cols+2r)
        out = np.apply_along_axis(np.convolve, axis, padded, kernel / kernel.sum(), mode="valid")
    return out


def unit_range(grid: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1], max exactly 1. A flat map (no cell preferred) becomes all ones, so the highlight
    leaves the image as it is instead of dimming it uniformly."""
    low, high = float(grid.min()), float(grid.max())
    if high - low <= 1e-6 * abs(high):
        return np.ones_like(grid, dtype=float)
    return (grid - low) / (high - low)


def upsample_to_pixels(grid: np.ndarray, region: tuple[float, float, float, float],
                       image_size: tuple[int, int]) -> np.ndarray:
    """(height, width) map of the (width, height) image: bilinear between cell centres, the grid placed over
    ``region``. Beyond the outermost cell centres (also outside the region, which preprocessing crops away, so it
    never reaches the model) the map keeps its edge values."""
    def axis(n_px: int, start: float, end: float, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_px) + 0.5 - start) * cells / (end - start) - 0.5, 0, cells - 1)  # (n_px,)
        low = np.floor(pos).astype(int)
        return low, np.minimum(low + 1, cells - 1), pos - low

    (width, height), (x0, y0, x1, y1) = image_size, region
    top, bottom, fy = axis(height, y0, y1, grid.shape[0])  # (H,) each
    left, right, fx = axis(width, x0, x1, grid.shape[1])  # (W,) each
    rows_top = grid[top][:, left] * (1 - fx) + grid[top][:, right] * fx  # (H, W)
    rows_bottom = grid[bottom][:, left] * (1 - fx) + grid[bottom][:, right] * fx  # (H, W)
    return rows_top * (1 - fy)[:, None] + rows_bottom * fy[:, None]  # (H, W)


def highlight(image: Image.Image, pixel_map: np.ndarray, floor: float) -> Image.Image:
    """(floor + (1 − floor)·map)·pixel on the raw RGB values, rounded; ``floor`` = 1 returns the same pixels."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    scale = (floor + (1 - floor) * pixel_map).astype(np.float32)  # (H, W)
    return Image.fromarray(np.clip(np.rint(rgb * scale[..., None]), 0, 255).astype(np.uint8))


# --- the layer profile file (written by `visfocus profile-layers`, read by ``vea(profile=...)``) ------------------
def save_profile(profile: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")
    return path


def load_profile(path: str | Path) -> dict[str, Any]:
    """A profile written by ``save_profile``; one clear error when the file is missing or is not a profile."""
    path = Path(path)
    if not path.is_file():
        raise VisfocusError(f"layer profile not found: {path}; write one with `visfocus profile-layers`")
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VisfocusError(f"layer profile {path} is not valid JSON ({err})") from err
    layers = profile.get("layers") if isinstance(profile, dict) else None
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers) \
            or not isinstance(profile.get("auroc_per_layer"), list):
        raise VisfocusError(f"layer profile {path} has no 'layers' (integer list) and 'auroc_per_layer'; "
                            f"write one with `visfocus profile-layers`")
    return profile


@register_method
class VEA(Method):
    name = "vea"
    paper = ("Liu et al., ICLR 2026, “Seeing but Not Believing: Probing the Disconnect Between Visual Attention and "
             "Answer Correctness in VLMs”, https://arxiv.org/abs/2510.17771")
    equation = ("e_c ← mean_N e where e_c > λ·max_N e (attention sinks; N: the 3×3 neighbours); ẽ = minmax(G_σ ∗ e)\n"
                "Î(x,y) = (α + (1 − α)·ẽ(x,y))·I(x,y), then answer again on Î")
    fidelity = (
        Fidelity(reference="no official code exists: the paper's sink denoising computed by hand in the test",
                 equal="the denoised grid (a corner sink replaced, a normal peak kept, λ ∈ {10, 60})",
                 tolerance="numpy assert_allclose (rtol 1e-7)",
                 test="tests/test_method_vea.py::"
                      "test_denoise_replaces_a_sink_by_its_truncated_neighbourhood_mean_and_keeps_a_normal_peak"),
        Fidelity(reference="no official code exists: σ as a fraction of the image's short side, converted to grid "
                           "cells by hand in the test",
                 equal="σ in cells per axis (Qwen 32-px cells; a LLaVA-NeXT 4×4 base view)",
                 tolerance="exact",
                 test="tests/test_method_vea.py::test_smoothing_sigma_is_in_grid_cells_of_the_real_cell_size"),
        Fidelity(reference="no official code exists: the paper's highlight Î = (α + (1 − α)·ẽ)·I on raw pixels, "
                           "computed by hand in the test",
                 equal="the highlighted RGB pixel values",
                 tolerance="exact (uint8)",
                 test="tests/test_method_vea.py::test_highlight_dims_by_floor_plus_map_on_raw_pixels"),
    )
    Params = VEAParams
    shares_prefix = False  # pass 2 changes each question's image
    identity = {"highlight_floor": 1.0, "hint": False}  # no dimming, no hint: the question as asked
    search_grid = {"smooth_sigma": (0.05, 0.1, 0.25, 0.5), "highlight_floor": (0.2, 0.5, 0.8)}
    sites = frozenset({"attention"})  # read: the last prompt row's attention of pass 1 (the trace)
    side_streams = frozenset({"fork"})  # pass 2: the batch again on the highlighted images
    extras = {"evidence_layers": "the decoder layers whose attention made the evidence map",
              "evidence_map": "the evidence map over the first image view's token grid, (rows, cols) in [0, 1]"}
    app_outputs = {"evidence_map": "VEA's evidence map (where the highlight is brightest)"}
    needs_grid = True  # the evidence map lies on the first view's token grid

    def __init__(self, params: VEAParams) -> None:
        super().__init__(params)
        self.profile = load_profile(params.profile) if params.profile and params.layers is None else None

    def evidence_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.params.layers is not None:
            return resolve_layers(self.params.layers, num_layers)
        if self.profile is None:
            return middle_layers(num_layers)
        if len(self.profile["auroc_per_layer"]) != num_layers:
            raise VisfocusError(f"layer profile {self.params.profile} was made for a model with "
                                f"{len(self.profile['auroc_per_layer'])} layers; this one has {num_layers}")
        check_layers(tuple(self.profile["layers"]), num_layers)
        return tuple(self.profile["layers"])

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p = self.params
        layers = self.evidence_layers(batch.num_layers)
        trace = batch.runner.prefill(trace=True).trace  # pass 1: where the model looks
        maps, highlighted = [], []
        for b, image in enumerate(batch.images):
            view = batch.layouts[b].view(0, 0)  # first image, first view (LLaVA-NeXT: the base view)
            per_layer = [trace.image_map(layer, b) for layer in layers]  # each (rows, cols)
            attention = np.mean([m / max(float(m.sum()), 1e-30) for m in per_layer], axis=0)  # (rows, cols), sum 1
            sigma = sigma_in_cells(p.smooth_sigma, view.image_size, view.region, attention.shape)
            grid = unit_range(gaussian_smooth(denoise_sinks(attention, p.denoise_lambda), sigma))  # (rows, cols)
            maps.append(grid)
            pixels = upsample_to_pixels(grid, view.region, view.image_size)  # (H, W)
            highlighted.append(highlight(image, pixels, p.highlight_floor))
        questions = [q + HINT for q in batch.questions] if p.hint else list(batch.questions)
        answered = batch.fork(images=highlighted, questions=questions)  # pass 2: the highlighted image
        generation = answered.runner.generate((), max_new_tokens=max_new_tokens)
        extras = [{"evidence_layers": list(layers), "evidence_map": grid.tolist()} for grid in maps]
        return MethodResult(generation, extras=extras, batch=answered)
