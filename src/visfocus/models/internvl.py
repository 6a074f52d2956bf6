"""InternVL (InternViT + Qwen2, transformers' native ``-hf`` checkpoints): each image is cut into dynamic tiles — the
image is resized (aspect not kept) to a ``cols × rows`` canvas of ``size`` px tiles, the canvas with the closest
aspect ratio among those of ``min_patches``..``max_patches`` tiles — then, when there is more than one tile, a
thumbnail of the whole image follows. Every tile gives ``image_seq_length`` ``<IMG_CONTEXT>`` tokens (a pixel-shuffled
square grid, row-major); the image's tokens sit between ``<img>`` and ``</img>``. 1-D RoPE, causal."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
import transformers
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from visfocus.models import processor as processor_module
from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView


class InternVLProcessorNoVideo(processor_module._NoVideo, transformers.InternVLProcessor):
    """``InternVLProcessor`` without a video processor (its video processor needs torchvision). Its own setting is
    named in the signature so that ``save_pretrained`` writes it."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, image_seq_length=image_seq_length,
                         **kwargs)


# load_processor's fallback where AutoProcessor cannot build the video processor
processor_module.register_no_video("internvl", InternVLProcessorNoVideo)


def tile_grid(processor, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the tiles the image processor cuts an image of ``size`` (width, height) into."""
    ip = processor.image_processor
    w, h = size
    cols, rows = get_optimal_tiled_canvas((h, w), (int(ip.size["height"]), int(ip.size["width"])),
                                          int(ip.min_patches), int(ip.max_patches))
    return rows, cols


@register_adapter
class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = ("internvl",)
    checkpoint = "OpenGVLab/InternVL3-1B-hf"

    @property
    def tile_side(self) -> int:
        """Tokens along each side of one tile's grid (patches per side, shrunk by the pixel shuffle)."""
        config = self.model.config
        vision = config.vision_config
        image_size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
        return int(round(image_size // patch * float(config.downsample_ratio)))

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

    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """The chat template writes one ``<IMG_CONTEXT>`` that the processor expands to ``<img>…</img>``: after the
        image's last token comes ``</img>``, then the template text."""
        after = super().template_after_image
        return (int(self.processor.end_image_token_id), *after) if after else ()

    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """Without the image: ``<img>…</img>`` and the newline the chat template writes after it."""
        start, end = self.processor.start_image_token_id, self.processor.end_image_token_id
        newline = self.processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
        out, inside, after_image = [], False, False
        for t in row_ids:
            if t == start:
                inside = True
            elif inside:
                inside = t != end
                after_image = not inside
            elif after_image and len(newline) == 1 and t == newline[0]:
                after_image = False
            else:
                after_image = False
                out.append(t)
        return out

