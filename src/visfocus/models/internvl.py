"""InternVL (InternViT + Qwen2, transformers' native ``-hf`` checkpoints): each image is cut into dynamic tiles — the
image is resized (aspect not kept) to a ``cols × rows`` canvas of ``size`` px tiles, the canvas with the closest
aspect ratio among those of ``min_patches``..``max_patches`` tiles — then, when there is more than one tile, a
thumbnail of the whole image follows. Every tile gives ``image_seq_length`` ``<IMG_CONTEXT>`` tokens (a pixel-shuffled
square grid, row-major); the image's tokens sit between ``<img>`` and ``</img>``. 1-D RoPE, causal."""

from __future__ import annotations

from functools import cached_property

import transformers

from visfocus.models import processor as processor_module
from visfocus.models.base import Adapter, register_adapter
from visfocus.models.tiles import TiledViews


class InternVLProcessorNoVideo(processor_module._NoVideo, transformers.InternVLProcessor):
    """``InternVLProcessor`` without a video processor (its video processor needs torchvision). Its own setting is
    named in the signature so that ``save_pretrained`` writes it."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, image_seq_length=image_seq_length,
                         **kwargs)


# load_processor's fallback where AutoProcessor cannot build the video processor
processor_module.register_no_video("internvl", InternVLProcessorNoVideo)


@register_adapter
class InternVLAdapter(TiledViews, Adapter):
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

