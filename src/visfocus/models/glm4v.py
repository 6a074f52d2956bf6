"""GLM-4.1V (``Glm4vForConditionalGeneration``, zai-org/GLM-4.1V-9B-Thinking): as Qwen2-VL, one ``<|image|>`` token
per merged 2 × 2 patch block, a row-major grid over the whole image (``smart_resize`` stretches it to multiples of
patch × merge), and M-RoPE positions from the model's ``get_rope_index`` (cached ``rope_deltas`` for decoding). The
image's tokens sit between ``<|begin_of_image|>`` and ``<|end_of_image|>``; the question follows the closing marker
directly. The text decoder's RoPE differs from Qwen's: it rotates only the first ``partial_rotary_factor`` of each
head's dims, in interleaved pairs (dims 2i, 2i+1), so ``rotate`` uses the model's own rotary code."""

from __future__ import annotations

import torch
import transformers
from transformers.models.glm4v import modeling_glm4v

from visfocus.models import processor as processor_module
from visfocus.models.base import register_adapter
from visfocus.models.qwen import Qwen2VLAdapter


class Glm4vProcessorNoVideo(processor_module._NoVideo, transformers.Glm4vProcessor):
    """``Glm4vProcessor`` without a video processor (its video processor needs torchvision)."""


# load_processor's fallback where AutoProcessor cannot build the video processor
processor_module.register_no_video("glm4v", Glm4vProcessorNoVideo)


@register_adapter
class Glm4vAdapter(Qwen2VLAdapter):
    family = "glm4v"
    model_types = ("glm4v",)
    checkpoint = "zai-org/GLM-4.1V-9B-Thinking"

    def rotate(self, x: torch.Tensor, position_shift: torch.Tensor) -> torch.Tensor:
        """Move post-RoPE vectors x (B, H, K, D) by ``position_shift`` ((B, K) or (3, B, K)) with GLM's partial,
        interleaved M-RoPE: cos/sin from the text model's rotary embedding (B, K, rotary_dim), applied by the
        modeling file's own ``apply_rotary_pos_emb`` (the dims past rotary_dim pass through unchanged)."""
        cos, sin = self.text_model.rotary_emb(x, position_shift)  # (B, K, rotary_dim) each, in x's dtype
        moved, _ = modeling_glm4v.apply_rotary_pos_emb(x, x, cos, sin)  # (B, H, K, D) twice: as query and as key
        return moved

    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """Without the image: its ``<|image|>`` tokens and the ``<|begin_of_image|>``/``<|end_of_image|>`` around them
        (what the chat template writes for a message with no image)."""
        config = self.model.config
        dropped = {self.image_token_id, int(config.image_start_token_id), int(config.image_end_token_id)}
        return [t for t in row_ids if t not in dropped]
