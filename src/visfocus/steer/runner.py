"""Running a prepared batch through ``generate`` under edits, and prefix-cache reuse: prefill the prompt once
(unedited), then re-run only the last prompt token under an edit from a cropped copy of the cache. With ``sharing``
(``visfocus.steer.prefix``) everything starts from stored image prefixes: ``generate`` runs each question's own tokens
on them in its first forward (the last one under the edits), ``prefill`` in a forward of its own."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList

from visfocus.steer.compat import cache_argument, output_cache
from visfocus.steer.context import Cost, SteerState, steering
from visfocus.steer.edits import Edit
from visfocus.steer.forced import ForcedContinuation, eos_token_ids
from visfocus.steer.prefix import Sharing, assemble, build_cache, cache_layers, extract, leading_padding
from visfocus.steer.trace import TraceRecorder


@dataclass
class Generation:
    new_tokens: torch.Tensor  # (B, T) generated ids (pad after EOS)
    first_logits: torch.Tensor  # (B, V) float32, raw (unprocessed) logits of the first generated token
    step_logits: tuple[torch.Tensor, ...] = ()  # raw logits of every step, (B, V) each, as generate returned them


@dataclass
class Prefix:
    """The unedited prompt prefill: its cache (all S positions) and the first-token logits it gives."""

    cache: object  # transformers Cache
    first_logits: torch.Tensor  # (B, V) float32
    trace: object = None  # a Trace of this pass when asked for (``prefill(trace=True)``)


class Runner:
    """The engine over one encoded batch. ``cost`` and the trace recorder accumulate over every call made through it.

    inputs: the processor's BatchFeature (left padded). image_cols: (B, S) bool image-token columns.
    drop_on_continue: the vision inputs to leave out when decoding continues from a cache (else the vision tower
    re-runs on a prompt that no longer holds the image tokens).
    prefill_position_ids: positions for a manual prefill, the same ones ``generate`` uses (None: the model's own).
    layouts: per row, the image-token geometry a finished trace carries (opaque to the engine).
    sharing: the shared-prefix plan of a batch laid out by ``prefix.split_layout`` (None: ordinary left padding).
    generation_defaults: ``GenerationConfig`` settings every ``generate`` call starts from, before its own (e.g. the
    caller's sampling: a method that passes ``do_sample`` itself still decides).
    forced: set by ``force(tokens)``: every ``generate`` takes those tokens and records how the method rates them
    (``visfocus.steer.forced``); None: the model's own choices.
    Methods receive a runner inside a ``visfocus.interventions.Batch``, which holds the rest of the batch.
    """

    def __init__(self, model, inputs: dict, image_cols: torch.Tensor, *, drop_on_continue: tuple[str, ...],
                 prefill_position_ids: torch.Tensor | None, layouts: list | None = None,
                 record_trace: bool = False, sharing: Sharing | None = None) -> None:
        self.model = model
        self.inputs = dict(inputs)
        self.image_cols = image_cols
        self.drop_on_continue = drop_on_continue
        self.prefill_position_ids = prefill_position_ids
        self.layouts = list(layouts) if layouts is not None else []
        self.cost = Cost()
        self.recorder = TraceRecorder() if record_trace else None
        self.sharing = sharing
        self.generation_defaults: dict = {}
        self.forced: ForcedContinuation | None = None

    def force(self, tokens: list[list[int]]) -> ForcedContinuation:
        """Teacher forcing from now on: row b's ``generate`` takes ``tokens[b]`` (then the end-of-sequence token) and
        the returned processor records each forced token's log-probability under the method's final scores."""
        eos = eos_token_ids(self.model.generation_config)
        pad = self.model.generation_config.pad_token_id
        self.forced = ForcedContinuation(tokens, end_token=eos[0] if eos else (pad if pad is not None else 0))
        return self.forced

    @property
    def left_padding(self) -> torch.Tensor:
        """(B,) padding columns before each row's first real token (a repetition penalty skips only these)."""
        return leading_padding(self.inputs["attention_mask"])

    def _state(self, edits: tuple[Edit, ...]) -> SteerState:
        return SteerState(image_cols=self.image_cols, edits=edits, recorder=self.recorder, cost=self.cost)

    def _generation_config(self, max_new_tokens: int, **overrides) -> GenerationConfig:
        base = self.model.generation_config
        eos = base.eos_token_id
        pad = base.pad_token_id if base.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        settings = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                        bos_token_id=base.bos_token_id, return_dict_in_generate=True, output_logits=True)
        settings.update(self.generation_defaults)  # the caller's (sampling), under the method's own
        settings.update(overrides)
        return GenerationConfig(**settings)

    @torch.inference_mode()
    def generate(self, edits: tuple[Edit, ...] = (), max_new_tokens: int = 1, prefix: Prefix | None = None,
                 logits_processor=None, first_logits_from: str = "logits", keep_prefix: bool = True,
                 **generation_settings) -> Generation:
        """Decoding under ``edits`` (greedy unless ``generation_settings`` or the runner's ``generation_defaults`` say
        ``do_sample=True``). With ``prefix``, positions 0..S-2 come from its cache and only the last prompt token
        (and the decoding steps) run here.
        ``keep_prefix=False`` crops the prefix's own cache instead of a copy (the prefix is used up; saves a copy).
        ``logits_processor``: extra processors (a ``LogitsProcessorList``); ``first_logits_from="scores"`` reports
        the processed first-token scores (what chose the token) instead of the raw logits. A forced runner
        (``force``) appends its ``ForcedContinuation`` after them and resets its record here."""
        kwargs, cache = dict(self.inputs), None
        if prefix is None and self.sharing is not None:  # the prompt but its last token from the shared prefix
            if self.sharing.store.keep_prompts:  # the whole prompt, to keep it
                prefix, keep_prefix = self.prefill(), False
            else:  # the image prefixes; generate's first forward runs every question token, the last under the edits
                cache, _ = self._prefix_cache(self._keys(""), None)
        if prefix is not None:
            cache = copy.deepcopy(prefix.cache) if keep_prefix else prefix.cache
            if not keep_prefix:
                prefix.cache = None  # used up
            cache.crop(-1)  # drop the last prompt position; generate re-runs it under the edits
        if cache is not None:
            kwargs = {k: v for k, v in kwargs.items() if k not in self.drop_on_continue}
            kwargs[cache_argument(self.model)] = cache
        prompt_len = self.image_cols.shape[1]
        processors = LogitsProcessorList(logits_processor or [])  # a copy: the caller's list stays as it is
        if self.forced is not None:  # last, so it sees the method's final scores
            self.forced.start(prompt_len)
            processors.append(self.forced)
        with steering(self._state(tuple(edits))):
            out = self.model.generate(**kwargs, logits_processor=processors,
                                      generation_config=self._generation_config(
                                          max_new_tokens, output_scores=first_logits_from == "scores",
                                          **generation_settings))
        first = (out.scores if first_logits_from == "scores" else out.logits)[0].float()
        return Generation(new_tokens=out.sequences[:, prompt_len:], first_logits=first, step_logits=out.logits)

    @torch.inference_mode()
    def prefill(self, trace: bool = False, *, vision: dict | None = None, tag: str = "") -> Prefix:
        """Unedited forward over the whole prompt, keeping the cache. The runner's trace, if any, records this pass;
        ``trace=True`` instead records it privately into ``Prefix.trace`` (e.g. to read attention for VEA).
        ``vision``: other vision inputs (e.g. VCD's noised pixels) for a side stream, named by ``tag`` in the prefix
        store; a side stream is never recorded."""
        if self.sharing is not None:
            return self._shared_prefill(trace, vision, tag)
        kwargs = {**self.inputs, **(vision or {})}
        if self.prefill_position_ids is not None:
            kwargs["position_ids"] = self.prefill_position_ids
        state = self._state(())
        if trace or vision is not None:
            state.recorder = TraceRecorder() if trace else None
        with steering(state):
            out = self.model(**kwargs, use_cache=True, logits_to_keep=1)
        mask = self.inputs["attention_mask"]
        recorded = state.recorder.finish(self.image_cols, mask, self.layouts) if trace else None
        return Prefix(cache=output_cache(out), first_logits=out.logits[:, -1].float(), trace=recorded)

    def _keys(self, tag: str) -> tuple[list[torch.Tensor], list, list]:
        """Per row: its real columns, its prefix key and its whole-prompt key in the store."""
        sh, ids, mask = self.sharing, self.inputs["input_ids"], self.inputs["attention_mask"].bool()  # (B, S)
        columns = [mask[b].nonzero().squeeze(-1) for b in range(ids.shape[0])]  # each row's real columns, in order
        tokens = [tuple(ids[b, cols].tolist()) for b, cols in enumerate(columns)]
        prefix_keys = [(tag, sh.image_keys[b], t[:sh.prefix_lengths[b]]) for b, t in enumerate(tokens)]
        prompt_keys = [(tag, sh.image_keys[b], t) for b, t in enumerate(tokens)]
        return columns, prefix_keys, prompt_keys

    def _prefix_cache(self, keys: tuple, vision: dict | None) -> tuple[object, torch.Tensor]:
        """A cache of columns 0..C-1 holding every row's image prefix (prefilled here where the store lacks it), and
        the position ids of the columns after it; readies the model to continue there (Qwen: its M-RoPE offsets)."""
        sh = self.sharing
        self._prefill_prefixes(keys[1], vision)
        entries = [sh.store.get(k) for k in keys[1]]
        C = sh.prefix_cols
        cache = build_cache(assemble(entries, [torch.arange(C - p, C) for p in sh.prefix_lengths], C))
        return cache, sh.continuation_positions(self.inputs, C)  # (B, N) or (3, B, N)

    def _shared_prefill(self, trace: bool, vision: dict | None, tag: str) -> Prefix:
        """The prefill from stored prefixes: each row's whole prompt when kept and nothing needs recording, else its
        image prefix (computed here for the images not stored yet) and a forward over the question tokens only."""
        sh, inputs, store = self.sharing, self.inputs, self.sharing.store
        ids = inputs["input_ids"]  # (B, S)
        B, S, C = ids.shape[0], ids.shape[1], sh.prefix_cols
        keys = self._keys(tag)
        columns, prefix_keys, prompt_keys = keys
        if store.keep_prompts and not trace:
            whole = [store.entries.get(k) for k in prompt_keys]
            if all(entry is not None for entry in whole):
                for key in (*prompt_keys, *prefix_keys):
                    store.get(key)  # in use
                sh.continuation_positions(inputs, S)  # readies decoding (Qwen: the M-RoPE offsets)
                cache = build_cache(assemble(whole, columns, S))
                first = torch.stack([entry.last_logits for entry in whole]).to(ids.device)  # (B, V)
                return Prefix(cache=cache, first_logits=first)
        cache, positions = self._prefix_cache(keys, vision)
        state = self._state(())
        if trace or vision is not None:
            state.recorder = TraceRecorder() if trace else None
        kwargs = {"input_ids": ids[:, C:], "attention_mask": inputs["attention_mask"],  # (B, N), (B, S)
                  cache_argument(self.model): cache, "position_ids": positions}
        with steering(state):
            out = self.model(**kwargs, use_cache=True, logits_to_keep=1)
        cache, first = output_cache(out), out.logits[:, -1].float()  # (B, V)
        if store.keep_prompts:
            layers = cache_layers(cache)
            for b in range(B):
                store.put(prompt_keys[b], extract(layers, b, columns[b], first[b]))
        recorded = state.recorder.finish(self.image_cols, inputs["attention_mask"], self.layouts) if trace else None
        return Prefix(cache=cache, first_logits=first, trace=recorded)

    def _prefill_prefixes(self, prefix_keys: list, vision: dict | None) -> None:
        """Prefill, once per distinct image, the prefixes the store does not hold yet (unedited, unrecorded)."""
        sh, inputs, store = self.sharing, self.inputs, self.sharing.store
        missing: dict = {}  # key -> the first row that needs it
        for b, key in enumerate(prefix_keys):
            if key not in store.entries:
                missing.setdefault(key, b)
        if not missing:
            return
        rows, C = list(missing.values()), sh.prefix_cols
        width = max(sh.prefix_lengths[r] for r in rows)
        ids = inputs["input_ids"]
        part = {k: v[rows, C - width:C] for k, v in inputs.items()
                if isinstance(v, torch.Tensor) and v.shape == ids.shape}  # (R, width) each, left padded
        part.update(sh.select_vision({**inputs, **(vision or {})}, rows))
        if self.prefill_position_ids is not None:
            part["position_ids"] = self.prefill_position_ids[rows, C - width:C]  # (R, width)
        state = SteerState(image_cols=self.image_cols[rows, C - width:C], cost=self.cost)  # no edit, no trace
        with steering(state):
            out = self.model(**part, use_cache=True, logits_to_keep=1)
        layers = cache_layers(output_cache(out))
        for j, (key, r) in enumerate(missing.items()):
            store.put(key, extract(layers, j, torch.arange(width - sh.prefix_lengths[r], width)))
