"""Loading a Hugging Face VLM by Hub id or local path, with the visfocus attention function on the text decoder and
SDPA on the vision tower."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from visfocus.errors import VisfocusError
from visfocus.models import llava, qwen  # noqa: F401  (registers the family adapters)
from visfocus.models.base import Adapter, adapter_for
from visfocus.models.processor import load_processor
from visfocus.steer.attention import register

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise VisfocusError(f"unknown dtype '{dtype}'; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_adapter(id_or_path: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, device_map: str | dict | None = None,
                 max_memory: dict | None = None) -> Adapter:
    """Load model + processor, wrapped in the family's adapter (``visfocus.load`` makes a ``VLM`` of it).
    ``dtype="auto"`` keeps the checkpoint's. ``device_map`` (e.g. ``"auto"``, with an optional ``max_memory`` such as
    ``{0: "20GiB", 1: "20GiB"}``) shards the model over devices instead of moving it to ``device``."""
    try:
        config = AutoConfig.from_pretrained(id_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VisfocusError(f"cannot load model '{id_or_path}': not a local model folder and not loadable from the "
                            f"Hugging Face Hub ({first})") from err
    adapter_cls = adapter_for(config.model_type)
    name = register()
    model = AutoModelForImageTextToText.from_pretrained(
        id_or_path, dtype=_dtype(dtype), trust_remote_code=trust_remote_code,
        attn_implementation={"": "sdpa", "text_config": name, "vision_config": "sdpa"},
        **({"device_map": device_map, "max_memory": max_memory} if device_map is not None else {}))
    if device_map is None:
        model.to(device)
    model.eval()
    processor = load_processor(id_or_path, trust_remote_code=trust_remote_code)
    return adapter_cls(model, processor)
