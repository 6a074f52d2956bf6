"""Aya Vision (SigLIP + Cohere2, as CohereLabs/aya-vision-8b): each image is cut into dynamic tiles as InternVL's
(GotOcr2 image processor: a ``cols × rows`` canvas of square tiles, then a global thumbnail when there is more than one
tile); every tile gives ``(tile / (patch · downsample_factor))²`` ``<|IMG_PATCH|>`` tokens (a pixel-shuffled square
grid, row-major). The processor writes ``<|START_OF_IMG|>``, then per tile ``TILE_n`` and its tokens, ``TILE_GLOBAL``
and the thumbnail's tokens, then ``<|END_OF_IMG|>``: markers interrupt an image's tokens.

The Cohere2 decoder alternates sliding-window layers (interleaved RoPE) and full-attention layers (no RoPE at all);
causal; the LM head's logits are multiplied by the text config's ``logit_scale``."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import contiguous_segments
from visfocus.models.tiles import TiledViews


@register_adapter
class AyaVisionAdapter(TiledViews, Adapter):
    family = "aya_vision"
    model_types = ("aya_vision",)
    checkpoint = "CohereLabs/aya-vision-8b"

    @property
    def tile_side(self) -> int:
        """Tokens along each side of one tile's grid (patches per side, shrunk by the pixel shuffle)."""
        config = self.model.config
        vision = config.vision_config
        return int(vision.image_size) // int(vision.patch_size) // int(config.downsample_factor)

    @property
    def _image_markers(self) -> tuple[int, int]:
        """The ids of ``<|START_OF_IMG|>`` and ``<|END_OF_IMG|>``."""
        tokenizer, processor = self.processor.tokenizer, self.processor
        return (int(tokenizer.convert_tokens_to_ids(processor.start_of_img_token)),
                int(tokenizer.convert_tokens_to_ids(processor.end_of_img_token)))

    # --- the decoder -------------------------------------------------------------------------------------------
    def rotate(self, x: torch.Tensor, position_shift: torch.Tensor) -> torch.Tensor:
        """Cohere's RoPE rotates interleaved pairs (dims 2i, 2i+1), its cos/sin repeated per pair. Only the
        sliding-window layers apply RoPE; CLVS moves keys and queries at layer 0, a sliding-window layer in every
        Cohere2 checkpoint (the pattern ends each block with its full-attention layer)."""
        cos, sin = self.text_model.rotary_emb(x, position_shift)  # (B, K, D) each
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, K, D)
        rotated = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)  # (B, H, K, D)
        return x * cos + rotated * sin

    # --- image tokens ------------------------------------------------------------------------------------------
    def image_segments(self, row_ids: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """One array per ``<|START_OF_IMG|>`` … ``<|END_OF_IMG|>`` span: the image tokens between them (tile
        markers interrupt them)."""
        start, end = self._image_markers
        starts, ends = np.nonzero(row_ids == start)[0], np.nonzero(row_ids == end)[0]
        segments = [positions[(positions > s) & (positions < e)] for s, e in zip(starts, ends)]
        return [s for s in segments if len(s)] or contiguous_segments(positions)

    # --- prompts -----------------------------------------------------------------------------------------------
    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """The chat template writes ``<image>``, which the processor expands to ``<|START_OF_IMG|>…<|END_OF_IMG|>``:
        after the image's last token comes ``<|END_OF_IMG|>``, then the template text before the question (none in
        Aya's template: the question follows the image directly)."""
        tokenizer, placeholder = self.processor.tokenizer, self.processor.image_token
        first, second = (tokenizer(self.build_prompt(q).split(placeholder, 1)[-1], add_special_tokens=False)
                         ["input_ids"] for q in ("A", "Z"))
        shared = 0
        while shared < min(len(first), len(second)) and first[shared] == second[shared]:
            shared += 1
        return (self._image_markers[1], *first[:shared])

    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """Without the image: everything from ``<|START_OF_IMG|>`` to ``<|END_OF_IMG|>``, both included."""
        start, end = self._image_markers
        out, inside = [], False
        for t in row_ids:
            if t == start:
                inside = True
            elif inside:
                inside = t != end
            else:
                out.append(t)
        return out
