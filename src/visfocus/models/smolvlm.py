"""SmolVLM and Idefics3 (SigLIP + a Llama-style decoder at ``model.model.text_model``). The image processor resizes
an image (aspect kept) so that its longest edge is ``size["longest_edge"]``, then stretches it to a canvas of whole
``max_image_size`` tiles (``rows × cols``, each side rounded up to a multiple of the tile) and cuts the canvas into
those tiles, row-major; the whole image resized to one tile (the global image) follows. An image that fits in one
tile (or with splitting off) is the global image alone. Each tile gives an ``s × s`` grid of ``<image>`` tokens
(patches per side shrunk by the pixel shuffle's ``scale_factor``, row-major). The processor writes, per tile,
``<fake_token_around_image><row_r_col_c>`` then its tokens, a newline after each row of tiles, then
``\\n<fake_token_around_image><global-img>``, the global tokens and a closing ``<fake_token_around_image>``: an image's
tokens are interrupted by markers. 1-D RoPE, causal."""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import transformers
from transformers import ProcessorMixin
from transformers.image_utils import is_valid_image
from transformers.models.smolvlm.image_processing_pil_smolvlm import (
    MAX_IMAGE_SIZE,
    _resize_output_size_rescale_to_max_len,
    _resize_output_size_scale_below_upper_bound,
)

from visfocus.models import processor as processor_module
from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView


class SmolVLMProcessorNoVideo(processor_module._NoVideo, transformers.SmolVLMProcessor):
    """``SmolVLMProcessor`` for images and text only, built from its parts: no video processor (it needs
    torchvision), and not the ``num2words`` check of ``SmolVLMProcessor.__init__`` (``num2words`` only spells out a
    video's frame count). Its own setting is named in the signature so that ``save_pretrained`` writes it."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None, **kwargs):
        # the attributes SmolVLMProcessor.__init__ sets, read from the tokenizer as it does
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, **kwargs):
        """As ``SmolVLMProcessor``, and a flat list of images for a batch of prompts is dealt out one ``<image>`` at
        a time, as ``Idefics3Processor`` does (``SmolVLMProcessor`` would take the whole list as the first prompt's:
        pass one list per prompt where the real class may be in use, as the adapter does)."""
        if (isinstance(images, (list, tuple)) and images and is_valid_image(images[0])
                and isinstance(text, (list, tuple)) and len(text) > 1):
            counts = [prompt.count(self.image_token) for prompt in text]
            if sum(counts) == len(images):
                starts = [sum(counts[:i]) for i in range(len(counts))]
                images = [list(images[start:start + n]) for start, n in zip(starts, counts)]
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """The tokenizer's chat template (``SmolVLMProcessor``'s own reads its video processor's frame settings)."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


# load_processor's fallback where AutoProcessor cannot build the video processor (or lacks num2words)
processor_module.register_no_video("smolvlm", SmolVLMProcessorNoVideo)


def tile_grid(processor, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the tiles the image processor cuts an image of ``size`` (width, height) into; (0, 0) when it
    keeps the global image alone. The arithmetic of the image processor's ``resize``, ``resize_for_vision_encoder``
    and ``split_images``."""
    ip = processor.image_processor
    w, h = size
    if not ip.do_image_splitting:
        return 0, 0
    if ip.do_resize:
        if ip.size.get("longest_edge"):
            h, w = _resize_output_size_rescale_to_max_len(h, w, max_len=ip.size["longest_edge"])
            h, w = _resize_output_size_scale_below_upper_bound(h, w, max_len=MAX_IMAGE_SIZE)
        else:
            h, w = ip.size["height"], ip.size["width"]
    tile = int(ip.max_image_size["longest_edge"])
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return (h // tile, w // tile) if h > tile or w > tile else (0, 0)


@register_adapter
class SmolVLMAdapter(Adapter):
    family = "smolvlm"
    model_types = ("smolvlm", "idefics3")
    checkpoint = "HuggingFaceTB/SmolVLM-256M-Instruct"
    # pixel_values (B, images, C, H, W) and pixel_attention_mask (B, images, H, W): one image's tiles per row
    drop_on_continue = ("pixel_values", "pixel_attention_mask")

    def encode(self, images: list, questions: list[str]) -> dict:
        """As the base, the images one list per prompt (``SmolVLMProcessor`` reads a flat list as one prompt's)."""
        return super().encode([[image] for image in images], questions)

    @property
    def text_model(self):
        return self.model.model.text_model

    @property
    def tile_side(self) -> int:
        """Tokens along each side of one tile's grid (patches per side, shrunk by the pixel shuffle)."""
        vision = self.model.config.vision_config
        return int(vision.image_size // vision.patch_size // self.model.config.scale_factor)

    @cached_property
    def marker_ids(self) -> tuple[int, int]:
        """The ids of ``<fake_token_around_image>`` and ``<global-img>`` (Idefics3's processor calls the latter its
        ``global_image_tag``)."""
        proc = self.processor
        global_image = getattr(proc, "global_image_token", None) or proc.global_image_tag
        return (int(proc.tokenizer.convert_tokens_to_ids(proc.fake_image_token)),
                int(proc.tokenizer.convert_tokens_to_ids(global_image)))

    def image_segments(self, row_ids: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """One array per image: an image's tokens end with the run that follows its ``<global-img>``."""
        _, global_image = self.marker_ids
        segments, current, in_global = [], [], False
        for position, token in enumerate(row_ids.tolist()):
            if token == self.image_token_id:
                current.append(position)
            elif token == global_image:
                in_global = True
            elif in_global and current:  # the closing marker after the global image's tokens
                segments.append(np.asarray(current))
                current, in_global = [], False
        if current:
            segments.append(np.asarray(current))
        return segments

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        """The tiles row-major (``tile_r_c``, each its part of the image: the canvas is the whole image stretched),
        then the global image (``global``, the whole image)."""
        g, (w, h) = self.tile_side, size
        rows, cols = tile_grid(self.processor, size)
        tiles = rows * cols
        self._check_count(segment, g * g * (tiles + 1), self.family)
        out = []
        for k in range(tiles):
            r, c = divmod(k, cols)
            region = (c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows)
            out.append(ImageView(f"tile_{r}_{c}", segment[k * g * g:(k + 1) * g * g], g, g, region, size))
        out.append(ImageView("global", segment[tiles * g * g:], g, g, (0.0, 0.0, float(w), float(h)), size))
        return out

    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """The chat template writes one ``<image>`` that the processor expands to the image block: after the image's
        last token comes the closing ``<fake_token_around_image>``, then the template text (none in SmolVLM's: the
        question follows at once)."""
        fake, _ = self.marker_ids
        return (fake, *super().template_after_image)

    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """Without the image: every image block, from its first ``<fake_token_around_image>`` to the one that closes
        its global image (the tokens, the row/column and global markers and the processor's newlines between)."""
        fake, global_image = self.marker_ids
        out, inside, in_global = [], False, False
        for t in row_ids:
            if inside:
                in_global = in_global or t == global_image
                inside = not (in_global and t == fake)
            elif t == fake:
                inside, in_global = True, False
            else:
                out.append(t)
        return out
