"""Dynamic tiles then a thumbnail, as the GOT-OCR2 image processor cuts them (InternVL, Aya Vision): the image is
resized (aspect not kept) to a ``cols × rows`` canvas of ``size`` px tiles — the canvas with the closest aspect ratio
among those of ``min_patches``..``max_patches`` tiles — and, when there is more than one tile, a thumbnail of the
whole image follows. Every tile and the thumbnail give a square ``tile_side × tile_side`` token grid, row-major."""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from visfocus.models.layout import ImageView


def tile_grid(processor, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the tiles the image processor cuts an image of ``size`` (width, height) into."""
    ip = processor.image_processor
    w, h = size
    cols, rows = get_optimal_tiled_canvas((h, w), (int(ip.size["height"]), int(ip.size["width"])),
                                          int(ip.min_patches), int(ip.max_patches))
    return rows, cols


class TiledViews:
    """Adapter mixin: ``views`` and ``select_vision`` for GOT-OCR2 tiles; the adapter gives ``tile_side``."""

    tile_side: int

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        g, (w, h) = self.tile_side, size
        # one tile only (crop_to_patches off, or a 1 × 1 canvas): the whole image resized to one tile, no thumbnail
        rows, cols = tile_grid(self.processor, size) if len(segment) != g * g else (1, 1)
        tiles = rows * cols
        self._check_count(segment, g * g * (tiles + (tiles > 1)), self.family)
        tile_w, tile_h = w / cols, h / rows  # one tile of the resized canvas, in original pixels
        out = []
        for k in range(tiles):  # row-major, as crop_image_to_patches
            r, c = divmod(k, cols)
            region = (c * tile_w, r * tile_h, (c + 1) * tile_w, (r + 1) * tile_h)
            name = "image" if tiles == 1 else f"tile_{r}_{c}"
            out.append(ImageView(name, segment[k * g * g:(k + 1) * g * g], g, g, region, size))
        if tiles > 1:
            out.append(ImageView("thumbnail", segment[tiles * g * g:], g, g, (0.0, 0.0, float(w), float(h)), size))
        return out

    def select_vision(self, inputs: dict, rows: list[int]) -> dict:
        """``pixel_values`` holds every tile of every image, one image after another (one image per row)."""
        if not isinstance(inputs.get("pixel_values"), torch.Tensor):
            return {}
        g = self.tile_side
        tiles = ((inputs["input_ids"] == self.image_token_id).sum(-1) // (g * g)).tolist()  # (B,)
        chunks = inputs["pixel_values"].split(tiles)
        return {"pixel_values": torch.cat([chunks[b] for b in rows])}
