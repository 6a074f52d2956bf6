"""Gemma 3 (SigLIP + Gemma 3 decoder, e.g. google/gemma-3-4b-it): each image is resized to one square (aspect not
kept), its SigLIP patches average-pooled to a row-major √N × √N grid of N = ``mm_tokens_per_image``
``<image_soft_token>`` tokens. The chat template writes ``<start_of_image>``, which the processor expands to
``\\n\\n<start_of_image>`` + N soft tokens + ``<end_of_image>\\n\\n``. 1-D RoPE whose base differs between the
sliding-window and the global layers (``layer_types``); the image's soft tokens attend to each other both ways (the
model builds that mask from ``token_type_ids``). Pan-and-scan crops are not supported."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from PIL import Image

from visfocus.errors import VisfocusError
from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView


@register_adapter
class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3",)
    checkpoint = "google/gemma-3-4b-it"

    @property
    def grid_side(self) -> int:
        """Tokens along each side of an image's pooled grid."""
        side = int(round(int(self.model.config.mm_tokens_per_image) ** 0.5))
        return side

    def rotate(self, x: torch.Tensor, position_shift: torch.Tensor) -> torch.Tensor:
        """The RoPE of the first decoder layer's type: sliding-window and global layers rotate with RoPEs of their own
        (other bases; the global one linearly scaled, which composes as exactly), and CLVS moves keys and queries at
        layer 0, a sliding-window layer in every Gemma 3 checkpoint (each block of layers ends with its global one)."""
        layer_type = self.model.config.get_text_config().layer_types[0]
        cos, sin = self.text_model.rotary_emb(x, position_shift, layer_type)  # (B, K, D) each
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, K, D)
        half = x.shape[-1] // 2
        rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # (B, H, K, D)
        return x * cos + rotated_half * sin

    def encode_prompts(self, images: list[Image.Image], prompts: list[str]) -> dict:
        """As the base (no second BOS after the template's), the images one list per prompt: ``Gemma3Processor``
        reads a flat list as one prompt's images."""
        if getattr(self.processor.image_processor, "do_pan_and_scan", False):
            raise VisfocusError("gemma3: pan-and-scan crops are not supported; set do_pan_and_scan to false in the "
                                "processor config")
        return super().encode_prompts([[image] for image in images], prompts)

    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """The processor's expansion of ``<start_of_image>`` closes with ``<end_of_image>`` and a blank line; those
        and the template text that follows, up to the question, are the same for every question."""
        blank = Image.new("RGB", (8, 8))
        first, second = (self.encode([blank], [q])["input_ids"][0].tolist() for q in ("A", "Z"))
        start = len(first) - first[::-1].index(self.image_token_id)  # just after the image's last soft token
        shared = 0
        while start + shared < min(len(first), len(second)) and first[start + shared] == second[start + shared]:
            shared += 1
        return tuple(first[start:start + shared])

    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """The prompt without its image: the processor's whole expansion (blank lines, markers, soft tokens) taken
        out of the text, which is then tokenized again (the newlines around the image may merge with the template's
        in one token)."""
        tokenizer = self.processor.tokenizer
        text = tokenizer.decode(row_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = text.replace(self.processor.full_image_sequence, "")
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        g, (w, h) = self.grid_side, size
        self._check_count(segment, g * g, self.family)
        # the image is stretched onto one square: the pooled grid covers the whole original image
        return [ImageView("image", segment, g, g, (0.0, 0.0, float(w), float(h)), size)]
