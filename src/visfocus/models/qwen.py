"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: one ``<|image_pad|>`` token per merged (merge × merge) patch block, a
row-major (gh/merge) × (gw/merge) grid over the whole resized image; M-RoPE positions come from the model."""

from __future__ import annotations

import numpy as np
import torch

from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView


@register_adapter
class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    checkpoint = "Qwen/Qwen2-VL-2B-Instruct"

    def prefill_position_ids(self, inputs: dict) -> torch.Tensor | None:
        return None  # the model computes 3-D M-RoPE positions (and caches rope_deltas for decoding)

    def prompt_position_ids(self, inputs: dict) -> torch.Tensor:
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"])
        return positions  # (3, B, S)

    def decode_position_ids(self, inputs: dict, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text position of the newest token plus the per-row M-RoPE offset the last prefill cached."""
        text = super().decode_position_ids(inputs, attention_mask)  # (B, 1)
        deltas = self.model.model.rope_deltas  # (B, 1), set by the last forward that saw the image
        return (text + deltas.to(text.device)).unsqueeze(0).expand(3, -1, -1)  # (3, B, 1)

    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """Without the image: its ``<|image_pad|>`` tokens and the ``<|vision_start|>``/``<|vision_end|>`` around them
        (what the chat template writes for a message with no image)."""
        config = self.model.config
        dropped = {self.image_token_id, int(config.vision_start_token_id), int(config.vision_end_token_id)}
        return [t for t in row_ids if t not in dropped]

    def text_position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        return super().text_position_ids(attention_mask).unsqueeze(0).expand(3, -1, -1)  # (3, B, S)

    def select_vision(self, inputs: dict, rows: list[int]) -> dict:
        grid = inputs["image_grid_thw"]  # (images, 3); each image's patches lie one after another in pixel_values
        chunks = inputs["pixel_values"].split(grid.prod(-1).tolist())
        return {"pixel_values": torch.cat([chunks[r] for r in rows]), "image_grid_thw": grid[rows]}

    def continuation_positions(self, inputs: dict, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions, deltas = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"])
        return positions[..., start:], deltas  # (3, B, S - start), (B, 1): what a prefill of these rows leaves

    def set_decode_offsets(self, offsets: torch.Tensor | None) -> None:
        self.model.model.rope_deltas = offsets  # (B, 1), read by generate's later steps and decode_position_ids

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        merge = int(self.processor.image_processor.merge_size)
        t, gh, gw = (int(v) for v in inputs["image_grid_thw"][image_index])
        rows, cols = gh // merge, gw // merge
        self._check_count(segment, t * rows * cols, self.family)
        # The resize stretches the whole image onto the grid, so the grid covers the whole original image.
        return [ImageView("image", segment, rows, cols, (0.0, 0.0, float(size[0]), float(size[1])), size)]


@register_adapter
class Qwen25VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    checkpoint = "Qwen/Qwen2.5-VL-3B-Instruct"


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    checkpoint = "Qwen/Qwen3-VL-2B-Instruct"
