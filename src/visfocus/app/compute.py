"""The app's model side: answers one (image, question, method, parameters) once through the public API with a trace,
keeps the result in a bounded in-memory LRU shared by all sessions (results are read-only), and lists the examples
(rendered scenes, and records of VSR / WhatsUp / POPE found under a data root). A layer profile is named, never a
path: the Explorer resolves the name inside the operator's profile folder (``visfocus.app.params.ProfileFolder``)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

import visfocus as vf
from visfocus.app.params import PROFILE_PARAMETER, ProfileFolder, refusal
from visfocus.app.views import cache_key, image_hash, top_k
from visfocus.errors import VisfocusError
from visfocus.images import image_file_problem, open_image
from visfocus.interventions.base import param_specs
from visfocus.parsing import parse_binary, parse_option, synonyms_for
from visfocus.tracefile import sample_arrays

MAX_NEW_TOKENS = 12
TOP_K = 5


@dataclass
class Result:
    """One method's answer to one question, with what the views draw from (the trace-file arrays)."""

    key: str
    method: str
    params: dict[str, Any]
    text: str
    first_token: str
    confidence: float  # the largest first-token probability the method decoded from
    top_k: list[tuple[str, float]]  # those first-token probabilities, most probable first
    cost: dict[str, Any]
    extras: dict[str, Any]  # the method's per-answer decisions, as it declares them (``Method.extras``)
    parsed: str | None
    correct: bool | None  # None when no gold label is known
    attention: np.ndarray = field(repr=False)  # (L, H, N) float32 post-edit, on the image tokens
    attention_pre: np.ndarray | None = field(default=None, repr=False)  # (L, H, N) before the edit, when edited
    shares: np.ndarray = field(default=None, repr=False)  # (L, 3) image / text / special, post-edit
    views: list[dict[str, Any]] = field(default_factory=list)  # token grids (trace-file view dicts)
    no_grid: str | None = None  # why there are no views: the image tokens have no spatial grid (None: they do)

    def summary(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-ready."""
        out = {k: v for k, v in asdict(self).items() if k not in ("attention", "attention_pre", "shares", "views")}
        out["top_k"] = [[token, prob] for token, prob in self.top_k]
        return json.loads(json.dumps(out, default=_jsonable))

    def export(self) -> dict[str, Any]:
        """The summary plus the trace arrays as lists (the app's JSON export)."""
        out = self.summary()
        out.update(attention=self.attention.tolist(), shares=self.shares.tolist(), views=self.views)
        if self.attention_pre is not None:
            out["attention_pre"] = self.attention_pre.tolist()
        return out


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def parse_answer(text: str, options: Sequence[str] | None) -> str | None:
    """The option an answer names (yes/no questions also accept true/false), as the benchmarks parse it."""
    if not options:
        return None
    if {o.lower() for o in options} == {"yes", "no"}:
        return parse_binary(text)
    return parse_option(text, options, synonyms_for(options))


class Explorer:
    """Answers through one loaded VLM, one call at a time (forward hooks of some methods make the model
    single-threaded), caching up to ``max_results`` results by content. A ``profile`` parameter is a name from
    ``profiles`` (None: no profile is accepted)."""

    def __init__(self, vlm, max_results: int = 64, max_new_tokens: int = MAX_NEW_TOKENS,
                 profiles: ProfileFolder | None = None) -> None:
        self.vlm = vlm
        self.max_results = max_results
        self.max_new_tokens = max_new_tokens
        self.profiles = profiles
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()
        self.forward_calls = 0  # answers computed (not served from the cache)

    def answer(self, image: Image.Image, question: str, method: str, params: dict[str, Any] | None = None,
               options: Sequence[str] | None = None, gold: str | None = None) -> Result:
        """The cached result, or a new one. Bad input raises a ``VisfocusError`` before the model runs."""
        if not isinstance(question, str) or not question.strip():
            raise VisfocusError("the question is empty")
        built = vf.method(method, **self._method_args(params or {}))  # validates (the baseline is a method too)
        built.params.validate(self.vlm.num_layers)
        defaults = {spec.name: spec.default for spec in param_specs(method)}
        params = {k: v for k, v in (params or {}).items() if v != defaults[k]}  # the same call, the same key
        options = [o.strip() for o in options or () if o.strip()] or None
        key = cache_key(image_hash(image), question, options, method, params)
        with self._lock:
            result = self._results.get(key)
            if result is not None:
                self._results.move_to_end(key)
            else:
                started = time.perf_counter()
                with self.vlm.keeping_prompts():  # the next method on this question re-runs its last token only
                    answer = self.vlm.answer(image, question, method=built, max_new_tokens=self.max_new_tokens,
                                             trace=True, options=options)
                self.forward_calls += 1
                result = self._result(key, method, params, answer, options, time.perf_counter() - started)
                self._results[key] = result
                while len(self._results) > self.max_results:
                    self._results.popitem(last=False)
        # the verdict belongs to this request's gold label, not to the cached answer
        correct = None if gold is None else result.parsed is not None and result.parsed.lower() == gold.strip().lower()
        return replace(result, correct=correct)

    def _method_args(self, params: dict[str, Any]) -> dict[str, Any]:
        """The method's arguments: a profile name becomes its checked file inside the profile folder."""
        name = params.get(PROFILE_PARAMETER)
        if name is None:
            return params
        if self.profiles is None:
            raise refusal(name, None)
        profile = self.profiles.load(name)
        made_for = len(profile["auroc_per_layer"])
        if made_for != self.vlm.num_layers:
            raise VisfocusError(f"layer profile {name!r} was made for a model with {made_for} layers; this one has "
                                f"{self.vlm.num_layers}: pick another profile or leave it empty")
        return {**params, PROFILE_PARAMETER: str(self.profiles.path(name))}

    def _result(self, key, method, params, answer, options, seconds) -> Result:
        arrays = sample_arrays(answer.trace, answer.extras, "heads")
        meta = json.loads(str(arrays["meta"]))
        probs = torch.softmax(answer.first_token_scores.float(), dim=-1)  # (V,) what the method decoded from
        best = torch.topk(probs, TOP_K)
        tokens = [self.vlm.processor.tokenizer.decode([int(i)]) for i in best.indices]
        parsed = parse_answer(answer.text, options)
        pre = arrays.get("attention_pre")
        return Result(key=key, method=method, params=params, text=answer.text, first_token=answer.first_token,
                      confidence=answer.confidence,
                      top_k=top_k(best.values.tolist(), tokens, TOP_K),
                      cost={**answer.cost, "seconds": round(seconds, 3)}, extras=meta["extras"], parsed=parsed,
                      correct=None, attention=arrays["attention"].astype(np.float32),
                      attention_pre=None if pre is None else pre.astype(np.float32), shares=arrays["shares"],
                      views=meta["views"], no_grid=meta.get("no_grid"))


@dataclass
class Example:
    name: str
    image: Image.Image
    question: str
    options: tuple[str, ...]
    gold: str | None


def examples(data_root: str | None = None, scenes: int = 6, per_task: int = 20) -> list[Example]:
    """A few rendered scenes (no data needed), then, when ``data_root`` has them, records of VSR, WhatsUp and POPE
    whose image is present, with their gold labels."""
    out = [Example(f"scene {r.id} ({r.gold})", r.image, r.question, tuple(r.options), r.gold)
           for r in list(vf.task("scenes_test"))[:scenes]]
    if not data_root:
        return out
    for name in ("vsr_random_test", "vsr_zeroshot_test", "whatsup_controlled_a", "whatsup_controlled_b",
                 "pope_coco_random"):
        try:
            records = list(vf.task(name, data_root=data_root))
        except VisfocusError:
            continue  # this benchmark's files are not under the data root
        found = [r for r in records if r.image_path and image_file_problem(r.image_path) is None][:per_task]
        for r in found:
            out.append(Example(f"{name} #{r.id} ({r.gold})", open_image(r.image_path), r.question, tuple(r.options),
                               r.gold))
    return out
