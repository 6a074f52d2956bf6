"""PaliGemma / PaliGemma 2 (SigLIP + Gemma / Gemma 2): one view — SigLIP resizes the image to ``image_size`` ×
``image_size`` (aspect not kept), so its square grid of ``<image>`` tokens covers the whole picture. No chat template:
the processor writes ``<image>`` × N, BOS, the question and "\\n". A prefix-LM: the whole prompt (``token_type_ids``
0) attends bidirectionally, generated tokens causally. RoPE positions count from 1."""

from __future__ import annotations

from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView


@register_adapter
class PaliGemmaAdapter(Adapter):
    family = "paligemma"
    model_types = ("paligemma",)
    checkpoint = "google/paligemma2-3b-pt-224"
    # generate marks every generated token 1 in token_type_ids: outside the bidirectional prefix
    appended_token_inputs: ClassVar[dict[str, int]] = {"token_type_ids": 1}
    # a forward without token types attends causally: a text-only row in a batch is all "suffix" (1)
    text_row_token_inputs: ClassVar[dict[str, int]] = {"token_type_ids": 1}
    prefix_lm = True

    @property
    def grid_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        g, (w, h) = self.grid_side, size
        self._check_count(segment, g * g, self.family)
        return [ImageView("image", segment, g, g, (0.0, 0.0, float(w), float(h)), size)]

    # --- prompts: the question after the image token; the processor adds the rest -----------------------------------
    def build_prompt(self, question: str) -> str:
        """``<image>`` then the question: the processor expands the image token, puts BOS after it and "\\n" last."""
        return f"{self.processor.image_token}{question}"

    def encode_prompts(self, images: list[Image.Image], prompts: list[str]) -> dict:
        """The processor's inputs without its training ``labels`` (they would make every forward compute a loss)."""
        inputs = super().encode_prompts(images, prompts)
        inputs.pop("labels", None)
        return inputs

    def encode_answers(self, images: list[Image.Image], prompts: list[str],
                       answers: list[str]) -> tuple[dict, list[str]]:
        """As PaliGemma trains: the answer is the processor's ``suffix`` — after the prompt's "\n", ended by EOS,
        ``token_type_ids`` 1 (causal) — so each row ends in answer + EOS."""
        self.processor.tokenizer.padding_side = "left"
        inputs = dict(self.processor(images=images, text=prompts, suffix=answers, padding=True, return_tensors="pt"))
        inputs.pop("labels", None)
        return inputs, [a + self.processor.tokenizer.eos_token for a in answers]

    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """The processor puts BOS between the image tokens and the question."""
        return (int(self.processor.tokenizer.bos_token_id),)

    # --- positions: PaliGemma counts from 1 (its forward adds 1 to the positions generate and arange give) ---------
    def prefill_position_ids(self, inputs: dict) -> torch.Tensor:
        return super().prefill_position_ids(inputs) + 1  # (B, S)

    def decode_position_ids(self, inputs: dict, attention_mask: torch.Tensor) -> torch.Tensor:
        return super().decode_position_ids(inputs, attention_mask) + 1  # (B, 1)

    def text_position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        return super().text_position_ids(attention_mask) + 1  # (B, S)
