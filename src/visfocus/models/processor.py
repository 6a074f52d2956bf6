"""Load a VLM processor by Hub id or local path, also on machines without torchvision.

The Qwen2/2.5/3-VL processors declare a video processor, and the video processors need torchvision.  Without it
``AutoProcessor`` raises ("Can't load video processor") or, when the saved ``processor_class`` is unknown, silently
returns only the tokenizer.  ``load_processor`` then falls back to a subclass of the family's processor that has no
video slot; images and text work exactly as with the real class.
"""

from __future__ import annotations

import json
import os
from typing import Any

import transformers
from transformers import AutoConfig, AutoProcessor, ProcessorMixin

from visfocus.errors import VisfocusError

# model_type (from config.json) -> name of the real processor class in transformers, for the families whose processor
# AutoProcessor cannot build here (its video processor needs torchvision): ``load_processor`` falls back to the same
# class without the video slot (``NO_VIDEO_PROCESSORS``). A family file adds its own with ``register_no_video``.
FALLBACK_PROCESSORS: dict[str, str] = {
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_vl_moe": "Qwen3VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
}
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class _NoVideo:
    """Mixin: drops the ``video_processor`` slot of a Qwen-VL processor (images and text only)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save, then write the real class name so ``AutoProcessor`` works where torchvision exists."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        real = next(c.__name__ for c in type(self).__mro__ if c.__module__.startswith("transformers."))
        for name in ("processor_config.json", "tokenizer_config.json"):
            path = os.path.join(save_directory, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                data["processor_class"] = real
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2, sort_keys=True)
        return out


class Qwen3VLProcessorNoVideo(_NoVideo, transformers.Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor."""


class Qwen2_5_VLProcessorNoVideo(_NoVideo, transformers.Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor."""


class Qwen2VLProcessorNoVideo(_NoVideo, transformers.Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor."""


NO_VIDEO_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "Qwen3VLProcessor": Qwen3VLProcessorNoVideo,
    "Qwen2_5_VLProcessor": Qwen2_5_VLProcessorNoVideo,
    "Qwen2VLProcessor": Qwen2VLProcessorNoVideo,
}


def register_no_video(model_type: str, processor: type[ProcessorMixin]) -> None:
    """Make ``processor`` (a ``_NoVideo`` subclass of the family's processor) ``load_processor``'s fallback for
    ``model_type``."""
    name = next(base.__name__ for base in processor.__mro__[1:] if base.__module__.startswith("transformers"))
    FALLBACK_PROCESSORS[model_type] = name
    NO_VIDEO_PROCESSORS[name] = processor


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_processor(id_or_path: str, *, trust_remote_code: bool = False, **kwargs: Any) -> ProcessorMixin:
    """Load the processor for ``id_or_path`` (Hub id or local folder); extra kwargs go to ``from_pretrained``.

    Raises ``VisfocusError`` (a ``ValueError``) when neither ``AutoProcessor`` nor a known fallback gives a
    ``ProcessorMixin``.
    """
    try:
        proc = AutoProcessor.from_pretrained(id_or_path, trust_remote_code=trust_remote_code, **kwargs)
        if isinstance(proc, ProcessorMixin):
            return proc
        problem = f"AutoProcessor returned a {type(proc).__name__}, not a processor"
    except Exception as exc:  # noqa: BLE001 - any failure here is answered by the fallback below
        problem = f"AutoProcessor failed ({_first_line(exc)})"

    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    try:
        model_type = AutoConfig.from_pretrained(id_or_path, trust_remote_code=trust_remote_code, **hub).model_type
    except Exception as exc:  # noqa: BLE001
        model_type, problem = None, f"{problem}; config unreadable ({_first_line(exc)})"
    fallback = NO_VIDEO_PROCESSORS.get(FALLBACK_PROCESSORS.get(model_type or "", ""))
    if fallback is None:
        raise VisfocusError(
            f"Cannot load a processor for {id_or_path!r}: {problem}; no fallback for model_type {model_type!r} "
            "(check the id/path, pass trust_remote_code=True for custom code, or install torchvision)."
        )
    try:
        return fallback.from_pretrained(id_or_path, **kwargs)
    except Exception as exc:
        raise VisfocusError(
            f"Cannot load a processor for {id_or_path!r}: {problem}, and the {fallback.__name__} fallback failed "
            f"({_first_line(exc)})."
        ) from exc
