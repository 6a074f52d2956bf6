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

    @property
    def grid_side(self) -> int:
        """Tokens along each side of an image's pooled grid."""
        side = int(round(int(self.model.config.mm_tokens_per_image) ** 0.5))
        return side

    def rope_cos_sin(self, x: torch.Tensor, positions: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sliding-window and global layers rotate with RoPEs of their own."""
        layer_type = self.model.config.get_text_config().layer_types[layer]
        return self.text_model.rotary_emb(x, positions, layer_type)

    def encode(self, images: list[Image.Image], questions: list[str]) -> dict:
        """Left-padded model inputs for one image per question. The processor takes the images nested per prompt;
        a prompt the chat template already starts with the BOS token gets no second one (as ``apply_chat_template``
        tokenizes)."""
        if getattr(self.processor.image_processor, "do_pan_and_scan", False):
            raise VisfocusError("gemma3: pan-and-scan crops are not supported; set do_pan_and_scan to false in the "
                                "processor config")
        prompts = [self.build_prompt(q) for q in questions]
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        bos = tokenizer.bos_token
        written = bos is not None and all(p.startswith(bos) for p in prompts)
        return dict(self.processor(images=[[image] for image in images], text=prompts, padding=True,
                                   return_tensors="pt", add_special_tokens=not written))

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

    def shares_prefix_exactly(self, inputs: dict) -> bool:
        """A sliding-window layer counts columns, padding included: a shared layout (masked padding between the
        image prefix and the question) wider than the window would hide keys the left-padded prompt shows."""
        text = self.model.config.get_text_config()
        window = getattr(text, "sliding_window", None)
        if window is None or "sliding_attention" not in (getattr(text, "layer_types", None) or ()):
            return True
        return inputs["input_ids"].shape[1] <= int(window)

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        g, (w, h) = self.grid_side, size
        self._check_count(segment, g * g, self.family)
        # the image is stretched onto one square: the pooled grid covers the whole original image
        return [ImageView("image", segment, g, g, (0.0, 0.0, float(w), float(h)), size)]
