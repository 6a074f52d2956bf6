"""Mistral 3 (Pixtral vision tower + Mistral text, mistralai/Mistral-Small-3.1-24B-Instruct-2503): the image is
resized to fit ``longest_edge`` (aspect kept, floored), then each side up to a multiple of the token side
(``patch_size × spatial_merge_size`` px), so the whole image is stretched a little onto a ``rows × cols`` grid. The
patch merger folds ``spatial_merge_size²`` patches into one ``[IMG]`` token, row-major; the processor closes each
row with ``[IMG_BREAK]``, the last with ``[IMG_END]`` instead. 1-D RoPE, causal.

``PixtralProcessor``'s module imports a helper from the torchvision image processor's module, so without torchvision
transformers offers only a placeholder: ``PixtralProcessorPil`` is the real class, its module imported with that one
helper taken from the PIL image processor's module (the same function), used with ``PixtralImageProcessorPil``."""

from __future__ import annotations

import importlib
import sys
import types
from functools import cached_property

import numpy as np
from transformers.models.pixtral import image_processing_pil_pixtral as pixtral_pil

from visfocus.models import processor as processor_module
from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView

_PROCESSOR_MODULE = "transformers.models.pixtral.processing_pixtral"
_TORCHVISION_MODULE = "transformers.models.pixtral.image_processing_pixtral"


def _real_pixtral_processor() -> type:
    """transformers' ``PixtralProcessor`` class, with or without torchvision."""
    try:
        return importlib.import_module(_PROCESSOR_MODULE).PixtralProcessor
    except ImportError:
        pass
    stand_in = types.ModuleType(_TORCHVISION_MODULE)
    stand_in.get_resize_output_image_size = pixtral_pil.get_resize_output_image_size
    saved = sys.modules.get(_TORCHVISION_MODULE)
    sys.modules[_TORCHVISION_MODULE] = stand_in
    try:
        sys.modules.pop(_PROCESSOR_MODULE, None)
        return importlib.import_module(_PROCESSOR_MODULE).PixtralProcessor
    finally:  # the torchvision module stays unimportable for everyone else, as it was
        if saved is None:
            sys.modules.pop(_TORCHVISION_MODULE, None)
        else:
            sys.modules[_TORCHVISION_MODULE] = saved


class PixtralProcessorPil(processor_module._NoVideo, _real_pixtral_processor()):
    """``PixtralProcessor`` usable without torchvision (it has no video half; ``_NoVideo`` makes ``save_pretrained``
    write the real class name). Its own settings are named in the signature so that ``save_pretrained`` writes them."""

    def __init__(self, image_processor=None, tokenizer=None, patch_size=16, spatial_merge_size=1, chat_template=None,
                 image_token="[IMG]", image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, patch_size=patch_size,
                         spatial_merge_size=spatial_merge_size, image_token=image_token,
                         image_break_token=image_break_token, image_end_token=image_end_token, **kwargs)


# load_processor's fallback where AutoProcessor gives only the torchvision placeholder
processor_module.register_no_video("mistral3", PixtralProcessorPil)


def token_grid(processor, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the ``[IMG]`` grid the processor gives an image of ``size`` (width, height): the image
    processor's own resize arithmetic, with the processor's token side (``patch_size × spatial_merge_size``)."""
    ip = processor.image_processor
    side = int(processor.patch_size) * int(processor.spatial_merge_size)
    limit = ip.size.get("longest_edge") if isinstance(ip.size, dict) else getattr(ip.size, "longest_edge", None)
    if limit:
        bound = (int(limit), int(limit))
    else:
        bound = (int(ip.size["height"]), int(ip.size["width"]))
    w, h = size
    height, width = pixtral_pil.get_resize_output_image_size(np.zeros((3, h, w)), size=bound, patch_size=(side, side),
                                                             input_data_format="channels_first")
    return height // side, width // side


@register_adapter
class Mistral3Adapter(Adapter):
    family = "mistral3"
    model_types = ("mistral3",)
    checkpoint = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"

    @property
    def marker_ids(self) -> tuple[int, int]:
        """([IMG_BREAK], [IMG_END]) token ids."""
        return int(self.processor.image_break_token_id), int(self.processor.image_end_token_id)

    def image_segments(self, row_ids: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """One image = its ``[IMG]`` tokens up to its ``[IMG_END]`` (its rows are split by ``[IMG_BREAK]``)."""
        ends = np.nonzero(row_ids == self.marker_ids[1])[0]  # (n_images,)
        segments = np.split(positions, np.searchsorted(positions, ends))
        return [s for s in segments if len(s)]

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        """One view: the whole image (stretched onto the grid when resized), ``rows × cols`` tokens, row-major."""
        self._check_token_side()
        rows, cols = token_grid(self.processor, size)
        self._check_count(segment, rows * cols, self.family)
        w, h = size
        return [ImageView("image", segment, rows, cols, (0.0, 0.0, float(w), float(h)), size)]

    def _check_token_side(self) -> None:
        config = self.model.config
        model_side = int(config.vision_config.patch_size) * int(config.spatial_merge_size)
        processor_side = int(self.processor.patch_size) * int(self.processor.spatial_merge_size)
        if model_side != processor_side:
            raise RuntimeError(f"{self.family}: the processor's tokens cover {processor_side} px, the model's "
                               f"(patch_size × spatial_merge_size) {model_side} px")

    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """The chat template writes one ``[IMG]`` that the processor expands to rows ending in ``[IMG_BREAK]``, the
        last in ``[IMG_END]``: after the image's last ``[IMG]`` comes ``[IMG_END]``, then the template text."""
        return (self.marker_ids[1], *super().template_after_image)

    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """Without the image: its ``[IMG]``, ``[IMG_BREAK]`` and ``[IMG_END]`` tokens."""
        drop = {self.image_token_id, *self.marker_ids}
        return [t for t in row_ids if t not in drop]

    def shares_prefix_exactly(self, inputs: dict) -> bool:
        """Exact unless the text model's sliding window is shorter than a prompt (it could then span the gap of
        padding between the stored prefix and the question)."""
        window = getattr(self.model.config.get_text_config(), "sliding_window", None)
        return window is None or int(window) >= int(inputs["input_ids"].shape[1])
