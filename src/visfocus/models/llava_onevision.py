"""LLaVA-OneVision (SigLIP + Qwen2): LLaVA-NeXT's layout — a base view of the whole image, then the "anyres" grid
with one newline token closing each of its rows — where the unpadded grid is shrunk (bilinear) to at most about
``vision_aspect_ratio`` = "anyres_max_N" tiles' worth of tokens. The processor's ``_get_unpadded_features`` counts
that shrunk grid; SigLIP has no CLS token to drop. The tiles' region is the exact one the unpadding leaves."""

from __future__ import annotations

import math

import numpy as np
import transformers
from transformers.image_processing_utils import select_best_resolution

from visfocus.models import processor as processor_module
from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView
from visfocus.models.llava import LlavaNextAdapter


class LlavaOnevisionProcessorNoVideo(processor_module._NoVideo, transformers.LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without a video processor (its video processor needs torchvision). Its own
    settings are named in the signature so that ``save_pretrained`` writes them."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, image_token=image_token,
                         video_token=video_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs)


# load_processor's fallback where AutoProcessor cannot build the video processor
processor_module.register_no_video("llava_onevision", LlavaOnevisionProcessorNoVideo)


def tiles_region(size: tuple[int, int], best: tuple[int, int], grid: tuple[int, int]) -> tuple[float, ...]:
    """The part (x0, y0, x1, y1) of the original image (width, height = ``size``) that the unpadded high-resolution
    token grid shows: the image is resized into the ``best`` (height, width) canvas keeping its aspect ratio and
    pasted in its centre; the canvas holds ``grid`` (rows, cols) tokens, and the model drops whole token rows (or
    columns) of padding from both sides. What is left may reach a little past the image (padding)."""
    w, h = size
    best_h, best_w = best
    rows, cols = grid
    if best_w / w < best_h / h:  # as get_patch_output_size
        new_w, new_h = best_w, min(math.ceil(h * best_w / w), best_h)
    else:
        new_w, new_h = min(math.ceil(w * best_h / h), best_w), best_h
    paste_x, paste_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    drop_r = drop_c = 0  # as the model's unpad_image
    if w / h > cols / rows:
        drop_r = (rows - int(round(h * (cols / w), 7))) // 2
    else:
        drop_c = (cols - int(round(w * (rows / h), 7))) // 2
    tok_h, tok_w = best_h / rows, best_w / cols
    x0, x1 = drop_c * tok_w, (cols - drop_c) * tok_w
    y0, y1 = drop_r * tok_h, (rows - drop_r) * tok_h
    sx, sy = w / new_w, h / new_h
    return ((x0 - paste_x) * sx, (y0 - paste_y) * sy, (x1 - paste_x) * sx, (y1 - paste_y) * sy)


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    checkpoint = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    # The processor also returns the images per prompt; like the pixels it is only needed for the prefill.
    drop_on_continue = (*Adapter.drop_on_continue, "batch_num_images")

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        base, tiles = super().views(inputs, image_index, segment, size)
        w, h = size
        g, side = self.grid_side, int(self.model.config.vision_config.image_size)
        best_h, best_w = select_best_resolution([h, w], self.processor.image_processor.image_grid_pinpoints)
        tiles.region = tiles_region(size, (best_h, best_w), (g * best_h // side, g * best_w // side))
        return [base, tiles]
