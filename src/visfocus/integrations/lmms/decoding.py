"""An lmms-eval task's ``gen_kwargs`` → how visfocus decodes: the token budget, the stop strings and, when the task
asks to sample, the sampling settings. Pure functions; no lmms-eval needed.

Greedy or sampling follows lmms-eval's own models: ``do_sample`` decides when the task gives it, otherwise a
``temperature`` above 0 means sampling. ``num_beams`` above 1 is refused (the methods decode one beam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visfocus.api import Sampling
from visfocus.errors import VisfocusError

DEFAULT_MAX_NEW_TOKENS = 128  # when a task gives none
KNOWN = ("max_new_tokens", "until", "do_sample", "temperature", "top_p", "top_k", "num_beams")


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    until: tuple[str, ...]
    sampling: Sampling | None  # None: greedy
    ignored: tuple[str, ...] = ()  # gen_kwargs keys visfocus does not use (reported once)


def _number(gen_kwargs: dict[str, Any], key: str, default: float) -> float:
    value = gen_kwargs.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise VisfocusError(f"gen_kwargs {key}={value!r} is not a number") from err


def decoding(gen_kwargs: dict[str, Any] | None) -> Decoding:
    gen = dict(gen_kwargs or {})
    max_new_tokens = gen.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise VisfocusError(f"gen_kwargs max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
    if int(_number(gen, "num_beams", 1)) > 1:
        raise VisfocusError(f"gen_kwargs num_beams={gen['num_beams']}: visfocus methods decode one beam; "
                            "pass --gen_kwargs num_beams=1")
    until = gen.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(str(u) for u in until)
    temperature = _number(gen, "temperature", 0.0)
    sample = bool(gen["do_sample"]) if gen.get("do_sample") is not None else temperature > 0
    sampling = None
    if sample:
        top_k = gen.get("top_k")
        sampling = Sampling(temperature=temperature if temperature > 0 else 1.0, top_p=_number(gen, "top_p", 1.0),
                            top_k=None if top_k in (None, 0) else int(top_k))
    ignored = tuple(sorted(k for k in gen if k not in KNOWN))
    return Decoding(max_new_tokens=max_new_tokens, until=tuple(u for u in until if u), sampling=sampling,
                    ignored=ignored)


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any stop string (as lmms-eval's own models do)."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text
