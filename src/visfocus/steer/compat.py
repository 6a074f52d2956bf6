"""Names that differ across the supported transformers range, chosen by feature detection, not by version number.

transformers 5.24 renamed the KV-cache argument of ``forward`` and ``generate`` and the cache field of model outputs
from ``past_key_values`` to ``cache`` (the old names warn, and go in 5.40 / 6.0); 5.23, the oldest supported release,
knows only the old name.
"""

from __future__ import annotations

import inspect
from functools import cache

from transformers import DynamicCache


@cache
def _forward_takes_cache(model_class: type) -> bool:
    return "cache" in inspect.signature(model_class.forward).parameters


def cache_argument(model) -> str:
    """The keyword under which ``model.forward`` and ``model.generate`` take a KV cache: ``cache`` where the model's
    forward declares it, else ``past_key_values``."""
    return "cache" if _forward_takes_cache(type(model)) else "past_key_values"


def output_cache(output):
    """The KV cache a model output carries (its ``cache`` field where it has one, else ``past_key_values``; a
    composite output that nests its language model's, as InstructBLIP's, that one's)."""
    fields = getattr(output, "__dataclass_fields__", {})
    if "language_model_outputs" in fields and output.language_model_outputs is not None:
        return output_cache(output.language_model_outputs)
    return output.cache if "cache" in fields else output.past_key_values


def fresh_cache() -> DynamicCache:
    """An empty KV cache whose every layer keeps every column. transformers would build sliding-window layers for a
    model with sliding-window attention (Gemma 3, Cohere 2), which keep only the last window − 1 keys; the engine
    reads key column k as position k (image columns, traces, stored prefixes), so it starts every forward from this
    cache instead. The sliding window itself is still applied, by the model's mask."""
    return DynamicCache()
