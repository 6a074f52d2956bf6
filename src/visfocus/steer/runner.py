"""Running a prepared batch through ``generate`` under edits, and prefix-cache reuse: prefill the prompt once
(unedited), then re-run only the last prompt token under an edit from a cropped copy of the cache."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from visfocus.steer.compat import cache_argument, output_cache
from visfocus.steer.context import Cost, SteerState, steering
from visfocus.steer.edits import Edit
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
    Methods receive a runner inside a ``visfocus.interventions.Batch``, which holds the rest of the batch.
    """

    def __init__(self, model, inputs: dict, image_cols: torch.Tensor, *, drop_on_continue: tuple[str, ...],
                 prefill_position_ids: torch.Tensor | None, layouts: list | None = None,
                 record_trace: bool = False) -> None:
        self.model = model
        self.inputs = dict(inputs)
        self.image_cols = image_cols
        self.drop_on_continue = drop_on_continue
        self.prefill_position_ids = prefill_position_ids
        self.layouts = list(layouts) if layouts is not None else []
        self.cost = Cost()
        self.recorder = TraceRecorder() if record_trace else None

    def _state(self, edits: tuple[Edit, ...]) -> SteerState:
        return SteerState(image_cols=self.image_cols, edits=edits, recorder=self.recorder, cost=self.cost)

    def _generation_config(self, max_new_tokens: int, **overrides) -> GenerationConfig:
        base = self.model.generation_config
        eos = base.eos_token_id
        pad = base.pad_token_id if base.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        settings = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                        bos_token_id=base.bos_token_id, return_dict_in_generate=True, output_logits=True)
        settings.update(overrides)
        return GenerationConfig(**settings)

    @torch.inference_mode()
    def generate(self, edits: tuple[Edit, ...] = (), max_new_tokens: int = 1, prefix: Prefix | None = None,
                 logits_processor=None, first_logits_from: str = "logits", keep_prefix: bool = True,
                 **generation_settings) -> Generation:
        """Decoding under ``edits`` (greedy unless ``generation_settings`` say ``do_sample=True``). With ``prefix``,
        positions 0..S-2 come from its cache and only the last prompt token (and the decoding steps) run here.
        ``keep_prefix=False`` crops the prefix's own cache instead of a copy (the prefix is used up; saves a copy).
        ``logits_processor``: extra processors (a ``LogitsProcessorList``); ``first_logits_from="scores"`` reports
        the processed first-token scores (what chose the token) instead of the raw logits."""
        kwargs = dict(self.inputs)
        if prefix is not None:
            cache = copy.deepcopy(prefix.cache) if keep_prefix else prefix.cache
            if not keep_prefix:
                prefix.cache = None  # used up
            cache.crop(-1)  # drop the last prompt position; generate re-runs it under the edits
            kwargs = {k: v for k, v in kwargs.items() if k not in self.drop_on_continue}
            kwargs[cache_argument(self.model)] = cache
        prompt_len = self.image_cols.shape[1]
        with steering(self._state(tuple(edits))):
            out = self.model.generate(**kwargs, logits_processor=logits_processor,
                                      generation_config=self._generation_config(
                                          max_new_tokens, output_scores=first_logits_from == "scores",
                                          **generation_settings))
        first = (out.scores if first_logits_from == "scores" else out.logits)[0].float()
        return Generation(new_tokens=out.sequences[:, prompt_len:], first_logits=first, step_logits=out.logits)

    @torch.inference_mode()
    def prefill(self, trace: bool = False) -> Prefix:
        """Unedited forward over the whole prompt, keeping the cache. The runner's trace, if any, records this pass;
        ``trace=True`` instead records it privately into ``Prefix.trace`` (e.g. to read attention for VEA)."""
        kwargs = dict(self.inputs)
        if self.prefill_position_ids is not None:
            kwargs["position_ids"] = self.prefill_position_ids
        state = self._state(())
        if trace:
            state.recorder = TraceRecorder()
        with steering(state):
            out = self.model(**kwargs, use_cache=True, logits_to_keep=1)
        mask = self.inputs["attention_mask"]
        recorded = state.recorder.finish(self.image_cols, mask, self.layouts) if trace else None
        return Prefix(cache=output_cache(out), first_logits=out.logits[:, -1].float(), trace=recorded)
