"""Running a prepared batch through ``generate`` under edits, and prefix-cache reuse: prefill the prompt once
(unedited), then re-run only the last prompt token under an edit from a cropped copy of the cache. With ``sharing``
(``visfocus.steer.prefix``) everything starts from stored image prefixes: ``generate`` runs each question's own tokens
on them in its first forward (the last one under the edits), ``prefill`` in a forward of its own."""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig, LogitsProcessorList

from visfocus.steer.attention import POST_IMAGE
from visfocus.steer.compat import cache_argument, fresh_cache, output_cache
from visfocus.steer.context import Cost, SteerState, steering
from visfocus.steer.edits import Edit
from visfocus.steer.forced import ForcedContinuation, eos_token_ids
from visfocus.steer.generation import Generation, Prefix
from visfocus.steer.prefix import SharedPrefill, Sharing, leading_padding
from visfocus.steer.processors import engine_processors
from visfocus.steer.rows import FollowMain, OnMainRows, RowsPlan, SideRowLogits, plan_rows
from visfocus.steer.sites import Contract, LayerHook, installed
from visfocus.steer.streams import SideStream
from visfocus.steer.trace import TraceRecorder
from visfocus.steer.variant_runs import VariantRuns

__all__ = ["Generation", "Prefix", "Runner"]


class Runner(VariantRuns):
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
    rerun_last_token: whether ``generate(prefix=...)`` may run only the last prompt token on the prefix's cache, exact
    for a causal prompt. In a prefix-LM the earlier prompt rows attend to the last one, so an edit of its row reaches
    theirs in later layers: False runs the whole prompt under the edits instead (the prefix goes unused), and no
    variant columns (``variant_pass``) either.
    continuation_positions / set_decode_offsets: the family's (``Adapter.continuation_positions``,
    ``Adapter.set_decode_offsets``), for a forward of the runner's own (``variant_pass``); None: none here.
    stream_rows: whether a side stream may decode as rows of ``generate``'s own batch (``steer.rows``: one forward
    per token for both streams) where that is exact; False: always apart (its own forwards). logits_module: the
    module whose forward gives ``generate`` each step's logits (None: the model).
    Methods receive a runner inside a ``visfocus.interventions.Batch``, which holds the rest of the batch.
    """

    def __init__(self, model, inputs: dict, image_cols: torch.Tensor, *, drop_on_continue: tuple[str, ...],
                 prefill_position_ids: torch.Tensor | None, layouts: list | None = None,
                 record_trace: bool = False, sharing: Sharing | None = None,
                 decoder_layers: list | None = None, rerun_last_token: bool = True,
                 continuation_positions=None, set_decode_offsets=None, stream_rows: bool = True,
                 logits_module: torch.nn.Module | None = None) -> None:
        self.model = model
        self.decoder_layers = decoder_layers  # the text decoder's layers, for the layer sites (``steer.sites``)
        self.contract: Contract | None = None  # what the running method declared (None: engine use, unchecked)
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
        self.rerun_last_token = rerun_last_token
        self.continuation_positions = continuation_positions
        self.set_decode_offsets = set_decode_offsets
        self.stream_rows = stream_rows
        self.logits_module = logits_module if logits_module is not None else model
        self.streams: list[SideStream] = []  # the side streams made for this runner, in order
        self.keep_step_scores = False  # every generation keeps the scores of every step (``Generation.step_scores``)

    def fork(self, model_inputs: dict, image_cols: torch.Tensor, *, drop_on_continue: tuple[str, ...],
             prefill_position_ids: torch.Tensor | None, layouts: list, decoder_layers: list | None) -> Runner:
        """A runner over other encoded inputs (other images or questions) that adds its cost and trace to this one's,
        decodes as this one does (the caller's sampling, teacher forcing) and answers to the same contract."""
        self.require("side_stream", "fork")
        other = Runner(self.model, model_inputs, image_cols, drop_on_continue=drop_on_continue,
                       prefill_position_ids=prefill_position_ids, layouts=layouts, decoder_layers=decoder_layers,
                       rerun_last_token=self.rerun_last_token,
                       continuation_positions=self.continuation_positions,
                       set_decode_offsets=self.set_decode_offsets, stream_rows=self.stream_rows,
                       logits_module=self.logits_module)
        other.cost, other.recorder, other.forced, other.contract = self.cost, self.recorder, self.forced, self.contract
        other.generation_defaults = dict(self.generation_defaults)
        other.keep_step_scores = self.keep_step_scores
        return other

    def require(self, kind: str, name: str) -> None:
        """Refuse a site ("site") or side stream ("side_stream") the running method did not declare."""
        if self.contract is not None:
            self.contract.require(kind, name)

    def side_stream(self, stream: SideStream) -> SideStream:
        """``stream``, once the running method is known to have declared its kind."""
        self.require("side_stream", stream.kind)
        self.streams.append(stream)
        return stream

    @property
    def prompt_len(self) -> int:
        """S: columns of the (left-padded or shared-prefix) prompt."""
        return self.image_cols.shape[1]

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
        # on a copy of the model's generation config, so that the processors it sets apply also where ``generate``
        # hands over to a language model with a config of its own (InstructBLIP)
        config = copy.deepcopy(base)
        config.update(**settings)
        return config

    @torch.inference_mode()
    def generate(self, edits: tuple[Edit, ...] = (), max_new_tokens: int = 1, prefix: Prefix | None = None,
                 logits_processor=None, keep_prefix: bool = True, layer_hooks: tuple[LayerHook, ...] = (),
                 **generation_settings) -> Generation:
        """Decoding under ``edits`` (the attention site; greedy unless ``generation_settings`` or the runner's
        ``generation_defaults`` say ``do_sample=True``). With ``prefix`` (and ``rerun_last_token``), positions
        0..S-2 come from its cache and only the last prompt token (and the decoding steps) run here.
        ``keep_prefix=False`` crops the prefix's own cache instead of a copy (the prefix is used up; saves a copy).
        ``logits_processor``: the method's processors (the logits site, a ``LogitsProcessorList``), run before the
        model's own (its generation config's and the caller's) or after its non-warper ones, as the method declared
        (``Contract.processors_after_correction``, ``steer.processors``); with any, the generation's
        ``first_scores`` are the processed first-token scores, else the raw logits. ``layer_hooks``: the
        layer sites' readers (``steer.sites``), installed for this call only. A forced runner (``force``) appends
        its ``ForcedContinuation`` after the method's processors and resets its record here."""
        self._check_sites(edits, logits_processor, layer_hooks)
        earlier_rows = any(edit.rows == POST_IMAGE for edit in edits)  # edits prompt rows before the last one
        stream = self._stream_for_rows(prefix, earlier_rows, layer_hooks, generation_settings)
        plan = plan_rows(self, stream) if stream is not None else None
        if plan is not None:
            return self._generate_rows(plan, stream, tuple(edits), max_new_tokens, logits_processor,
                                       generation_settings)
        kwargs, cache = dict(self.inputs), None
        if not self.rerun_last_token or earlier_rows:
            prefix = None  # the whole prompt (after a shared image prefix) runs under the edits
        if prefix is None and self.sharing is not None:  # the prompt but its last token from the shared prefix
            if self.sharing.store.keep_prompts and not earlier_rows:  # the whole prompt, to keep it
                prefix, keep_prefix = self.prefill(), False
            else:  # the image prefixes; generate's first forward runs every question token, the last under the edits
                cache = self._shared().image_prefixes()
        if prefix is not None:
            cache = copy.deepcopy(prefix.cache) if keep_prefix else prefix.cache
            if not keep_prefix:
                prefix.cache = None  # used up
            cache.crop(-1)  # drop the last prompt position; generate re-runs it under the edits
        if cache is not None:
            kwargs = {k: v for k, v in kwargs.items() if k not in self.drop_on_continue}
        kwargs[cache_argument(self.model)] = fresh_cache() if cache is None else cache
        processed = bool(logits_processor)
        first, processors = self._ordered(logits_processor or [])
        if self.forced is not None:  # after the model's own non-warper processors, so it sees the method's scores
            self.forced.start(self.prompt_len)
            processors.append(self.forced)
        config = self._generation_config(max_new_tokens, output_scores=processed or self.keep_step_scores,
                                         **generation_settings)
        with steering(self._state(tuple(edits))), installed(self.decoder_layers or [], layer_hooks), \
                engine_processors(self.model, first):
            out = self.model.generate(**kwargs, logits_processor=processors, generation_config=config)
        first_logits = out.logits[0].float()
        return Generation(new_tokens=out.sequences[:, self.prompt_len:], first_logits=first_logits,
                          first_scores=out.scores[0].float() if processed else first_logits, step_logits=out.logits,
                          step_scores=self._step_scores(out, None))

    def _ordered(self, method_processors) -> tuple[list, LogitsProcessorList]:
        """The method's processors split into those to run before every processor ``generate`` builds and those to
        hand it as custom processors (after its own non-warper ones), as the running method declared
        (``Contract.processors_after_correction``; engine use, without a contract: before)."""
        after = self.contract is None or self.contract.processors_after_correction
        if after:
            return list(method_processors), LogitsProcessorList()
        return [], LogitsProcessorList(method_processors)

    def _step_scores(self, out, rows: int | None) -> tuple[torch.Tensor, ...]:
        """Every step's processed scores from ``generate``'s output (the first ``rows`` rows), when kept."""
        if not self.keep_step_scores:
            return ()
        return tuple(step[:rows].float() for step in out.scores)

    def _stream_for_rows(self, prefix: Prefix | None, earlier_rows: bool, layer_hooks: tuple[LayerHook, ...],
                         generation_settings: dict) -> SideStream | None:
        """The side stream this ``generate`` call may decode as rows of its own batch: the one stream made for this
        runner and not run yet, when decoding is greedy from the start of the prompt (or of the shared image
        prefixes), with no teacher forcing, trace, layer hook or kept whole prompts; else None (apart)."""
        fresh = [s for s in self.streams if not s.started]
        if not self.stream_rows or len(fresh) != 1 or len(self.streams) != 1 or prefix is not None or earlier_rows:
            return None
        if self.forced is not None or self.recorder is not None or layer_hooks:
            return None
        if self.sharing is not None and self.sharing.store.keep_prompts:
            return None
        settings = {**self.generation_defaults, **generation_settings}
        if settings.get("do_sample") or settings.get("num_beams", 1) != 1:
            return None
        return fresh[0]

    def _generate_rows(self, plan: RowsPlan, stream: SideStream, edits: tuple[Edit, ...], max_new_tokens: int,
                       logits_processor, generation_settings: dict) -> Generation:
        """``generate`` over the main rows and ``stream``'s rows in one batch (``steer.rows``); the main rows'
        generation."""
        B = plan.main_rows
        kwargs = dict(plan.kwargs)
        kwargs.setdefault(cache_argument(self.model), fresh_cache())
        if plan.offsets is not None:
            self.sharing.set_decode_offsets(plan.offsets)  # (2B, 1): every row's, main and side
        processed = bool(logits_processor)
        first, processors = self._ordered([OnMainRows(p, B) for p in logits_processor or []])
        processors.append(FollowMain(B))  # last of the custom ones: the side rows take the main rows' tokens
        config = self._generation_config(max_new_tokens, output_scores=processed or self.keep_step_scores,
                                         **generation_settings)
        state = SteerState(image_cols=plan.image_cols, edits=edits, cost=self.cost, edited_rows=plan.edited_rows)
        with SideRowLogits(self.logits_module, B) as side_logits, steering(state), \
                engine_processors(self.model, first):
            stream.row_logits = side_logits
            out = self.model.generate(**kwargs, logits_processor=processors, generation_config=config)
        first_logits = out.logits[0][:B].float()  # (B, V)
        return Generation(new_tokens=out.sequences[:B, self.prompt_len:], first_logits=first_logits,
                          first_scores=out.scores[0][:B].float() if processed else first_logits,
                          step_logits=tuple(step[:B] for step in out.logits), step_scores=self._step_scores(out, B))

    def _check_sites(self, edits: tuple[Edit, ...], logits_processor, layer_hooks: tuple[LayerHook, ...]) -> None:
        if edits:
            self.require("site", "attention")
        if logits_processor:
            self.require("site", "logits")
        for hook in layer_hooks:
            self.require("site", hook.site)
        if layer_hooks and self.decoder_layers is None:
            raise RuntimeError("this runner was built without the decoder layers; layer sites need them")

    @torch.inference_mode()
    def prefill(self, trace: bool = False, *, vision: dict | None = None, tag: str = "") -> Prefix:
        """Unedited forward over the whole prompt, keeping the cache. The runner's trace, if any, records this pass;
        ``trace=True`` instead records it privately into ``Prefix.trace`` (e.g. to read attention for VEA).
        ``vision``: other vision inputs (e.g. VCD's noised pixels) for a side stream, named by ``tag`` in the prefix
        store; a side stream is never recorded. A sharing runner starts from the stored prefixes
        (``prefix.SharedPrefill``): a forward over the question tokens only, or none when the store keeps the prompts
        and nothing needs recording."""
        if trace:  # reading the attention of every layer: the attention site
            self.require("site", "attention")
        state = self._state(())
        if trace or vision is not None:
            state.recorder = TraceRecorder() if trace else None

        def forward(kwargs: dict) -> tuple[object, torch.Tensor]:
            with steering(state):
                out = self.model(**kwargs, use_cache=True, logits_to_keep=1)
            return output_cache(out), out.logits[:, -1].float()  # (B, V)

        if self.sharing is not None:
            cache, first = self._shared().prefill(forward, tag=tag, vision=vision, reuse=not trace)
        else:
            kwargs = {**self.inputs, **(vision or {}), cache_argument(self.model): fresh_cache()}
            if self.prefill_position_ids is not None:
                kwargs["position_ids"] = self.prefill_position_ids
            cache, first = forward(kwargs)
        mask = self.inputs["attention_mask"]
        recorded = state.recorder.finish(self.image_cols, mask, self.layouts) if trace else None
        return Prefix(cache=cache, first_logits=first, trace=recorded)

    def _shared(self) -> SharedPrefill:
        """The prefix-cache assembly of this (sharing) runner's batch, counting into its cost."""
        return SharedPrefill(self.model, self.inputs, self.sharing, image_cols=self.image_cols,
                             prefill_position_ids=self.prefill_position_ids, cost=self.cost)
