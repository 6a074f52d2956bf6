"""LLaVA-1.5 (one CLIP view, CLS dropped) and LLaVA-NeXT (a base view of the whole image, then the "anyres"
high-resolution grid with one newline token closing each of its rows)."""

from __future__ import annotations

import numpy as np
from transformers.image_processing_utils import select_best_resolution

from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView


def _clip_region(processor, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of the original image (x0, y0, x1, y1) that survives CLIP preprocessing: optional pad-to-square,
    resize of the shortest edge, centre crop. Parts outside the image (padding) extend beyond it."""
    ip = processor.image_processor
    w, h = size
    x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
    if getattr(ip, "do_pad", False):  # pad to square (original LLaVA behaviour)
        side = max(w, h)
        x0, y0 = -(side - w) / 2, -(side - h) / 2
        x1, y1 = x0 + side, y0 + side
    if getattr(ip, "do_center_crop", False) and ip.crop_size:
        cw, ch = _hw(ip.crop_size)[::-1]
        short = _shortest_edge(ip.size)
        if short is not None:
            scale = short / min(x1 - x0, y1 - y0)  # resized px per original px
            rw, rh = (x1 - x0) * scale, (y1 - y0) * scale
            left, top = (rw - cw) / 2, (rh - ch) / 2
            x0, y0 = x0 + left / scale, y0 + top / scale
            x1, y1 = x0 + cw / scale, y0 + ch / scale
    return (x0, y0, x1, y1)


def _hw(size) -> tuple[int, int]:
    size = dict(size) if not isinstance(size, dict) else size
    return int(size["height"]), int(size["width"])


def _shortest_edge(size) -> int | None:
    size = dict(size) if not isinstance(size, dict) else size
    return int(size["shortest_edge"]) if size.get("shortest_edge") else None


@register_adapter
class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    checkpoint = "llava-hf/llava-1.5-7b-hf"

    @property
    def grid_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        g = self.grid_side
        self._check_count(segment, g * g, self.family)
        return [ImageView("image", segment, g, g, _clip_region(self.processor, size), size)]


@register_adapter
class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    model_types = ("llava_next",)
    checkpoint = "llava-hf/llava-v1.6-mistral-7b-hf"

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        g = self.grid_side
        w, h = size
        side = int(self.model.config.vision_config.image_size)
        best_h, best_w = select_best_resolution([h, w], self.processor.image_processor.image_grid_pinpoints)
        unpadded, rows = self.processor._get_unpadded_features(h, w, g, g, best_h // side, best_w // side)
        cols = unpadded // rows
        self._check_count(segment, g * g + rows * (cols + 1), self.family)
        base = ImageView("base", segment[: g * g], g, g, (0.0, 0.0, float(w), float(h)), size)
        tiles = segment[g * g :].reshape(rows, cols + 1)[:, :cols].reshape(-1)  # drop each row's newline token
        # After unpadding, the high-resolution grid covers the whole (aspect-preserving) resized image.
        return [base, ImageView("tiles", tiles, rows, cols, (0.0, 0.0, float(w), float(h)), size)]
