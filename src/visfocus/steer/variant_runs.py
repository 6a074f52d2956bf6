"""The runner's variant columns (``visfocus.steer.variants``): the prompt's one forward with k re-runs of its last
token, and decoding on from the variant each row chose, with the model's own logits processors applied as greedy
``generate`` applies them. A part of ``Runner`` (``steer.runner``), kept in its own file."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from visfocus.steer.attention import POST_IMAGE
from visfocus.steer.compat import cache_argument, fresh_cache, output_cache
from visfocus.steer.context import SteerState, VariantColumns, steering
from visfocus.steer.edits import Edit
from visfocus.steer.forced import eos_token_ids
from visfocus.steer.generation import Generation
from visfocus.steer.processors import engine_processors, own_processors, unwrapped
from visfocus.steer.variants import VariantPass, columns_enabled, finished_after_first, with_variant_columns

# The processors of a model's generation config under which the first token of a variant column (chosen here, by
# ``_own_first_scores``) and the decoding that goes on from it (``generate`` from the prompt and that token, with
# ``min_new_tokens`` one less) equal plain ``generate``: they read only the tokens so far and their absolute count.
VARIANT_EXACT = (RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor, SequenceBiasLogitsProcessor,
                 MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor, SuppressTokensLogitsProcessor,
                 InfNanRemoveLogitsProcessor, LogitNormalization)


class VariantRuns:
    """``Runner``'s methods for variant columns."""

    def variants_refused(self, edit_sets=()) -> str | None:
        """Why ``variant_pass`` cannot stand in for re-runs of the last prompt token here (None: it can): a
        prefix-LM prompt (its earlier rows attend to the last one), teacher forcing or sampling (the first token is
        chosen by hand, greedily), a trace being recorded (it records the re-run), edits of earlier prompt rows, no
        positions from the family, or a logits processor of the model's generation config outside ``VARIANT_EXACT``
        (those inside it are applied to the first token as ``generate`` would); inside
        ``variants.separate_passes``."""
        if not columns_enabled():
            return "separate passes were asked for"
        if not self.rerun_last_token:
            return "the prompt is a prefix-LM"
        if self.forced is not None or self.generation_defaults:
            return "teacher forcing or sampling"
        if self.recorder is not None:
            return "a trace is recorded"
        if any(edit.rows == POST_IMAGE for edits in edit_sets for edit in edits):
            return "an edit of earlier prompt rows"
        if self.continuation_positions is None:
            return "no family positions"
        unmatched = sorted({type(unwrapped(p)).__name__ for p in self._own_processors()
                            if not isinstance(unwrapped(p), VARIANT_EXACT)})
        if unmatched:
            return f"the model's generation config sets processors a variant cannot follow ({', '.join(unmatched)})"
        return None

    def _own_processors(self) -> LogitsProcessorList:
        """The processors greedy ``generate`` builds from the model's generation config for this prompt."""
        return own_processors(self.model, self._generation_config(1), self.inputs["input_ids"],
                              self.inputs["attention_mask"])

    def _own_first_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) the scores greedy ``generate`` chooses the first token from, given its raw (B, V) ``logits``: the
        model's own processors (repetition penalty, suppressed tokens, …) on the prompt."""
        processors = self._own_processors()
        return processors(self.inputs["input_ids"], logits.clone()) if processors else logits

    @torch.inference_mode()
    def variant_pass(self, edit_sets) -> VariantPass:
        """The prompt's forward, unedited, with one variant column of its last token per entry of ``edit_sets``
        (a tuple of edits each, at the attention site): k re-runs of the last prompt token in the prompt's own
        forward (``visfocus.steer.variants``). From the shared image prefixes (or the store's kept prompts) when the
        batch shares them, else the whole prompt. Check ``variants_refused`` first."""
        edit_sets = tuple(tuple(edits) for edits in edit_sets)
        for edits in edit_sets:
            self._check_sites(edits, None, ())
        refused = self.variants_refused(edit_sets)
        if refused is not None:
            raise RuntimeError(f"variant columns are not exact here: {refused}")
        count, S = len(edit_sets), self.prompt_len
        state = SteerState(image_cols=self.image_cols, cost=self.cost,
                           variants=VariantColumns(start=S, edit_sets=edit_sets))

        def forward(kwargs: dict) -> tuple[object, torch.Tensor]:
            with steering(state):
                out = self.model(**with_variant_columns(kwargs, count), use_cache=True, logits_to_keep=count + 1)
            return output_cache(out), out.logits[:, -(count + 1):].float()  # (B, 1 + k, V)

        if self.sharing is not None:
            cache, logits = self._shared().prefill(forward, rerun_last=True)
        else:
            positions, offsets = self.continuation_positions(self.inputs, 0)  # (B, S) or (3, B, S)
            cache, logits = forward({**self.inputs, cache_argument(self.model): fresh_cache(),
                                     "position_ids": positions})
            self.set_decode_offsets(offsets)
        return VariantPass(logits=logits, cache=cache, prompt_len=S)

    @torch.inference_mode()
    def continue_variants(self, variants: VariantPass, choices: list[list[int]], max_new_tokens: int,
                          decode_edits: list[tuple[Edit, ...]] | None = None, max_rows: int | None = None,
                          keep_pass: bool = False) -> list[Generation]:
        """One generation per entry of ``choices``: row b's first token is the greedy choice of variant
        ``choices[c][b]`` (``variants.UNEDITED``: the unedited row), and decoding goes on from that variant's cache
        (under ``decode_edits[c]``, edits of the decoding rows). The same tokens and logits as ``generate`` under the
        variant's edits on a re-run of the last prompt token. Equal continuations decode once; those without
        decoding edits decode together as rows of one ``generate``, at most ``max_rows`` rows at a time (None: all).
        The last continuation reuses the pass's cache (no copy) unless ``keep_pass``."""
        B = variants.logits.shape[0]
        decode_edits = decode_edits or [()] * len(choices)
        distinct: dict[tuple, int] = {}  # (choice, decode edits) -> index of its first continuation
        for c, key in enumerate(zip(map(tuple, choices), decode_edits)):
            distinct.setdefault(key, c)
        firsts = {c: variants.first_logits(choices[c]) for c in distinct.values()}  # (B, V) each
        tokens = {c: self._own_first_scores(first).argmax(-1, keepdim=True) for c, first in firsts.items()}  # (B, 1)
        if max_new_tokens == 1:
            done = {c: Generation(new_tokens=tokens[c], first_logits=first, step_logits=(first,))
                    for c, first in firsts.items()}
        else:
            per_group = max(1, (max_rows or B * len(firsts)) // B)
            plain = [c for c in firsts if not decode_edits[c]]
            groups = [plain[i:i + per_group] for i in range(0, len(plain), per_group)]
            groups += [[c] for c in firsts if decode_edits[c]]
            done = {}
            for i, group in enumerate(groups):
                edits = decode_edits[group[0]] if len(group) == 1 else ()
                last = i == len(groups) - 1 and not keep_pass
                generations = self._continue(variants, [choices[c] for c in group], [firsts[c] for c in group],
                                             [tokens[c] for c in group], max_new_tokens, edits, in_place=last)
                done.update(zip(group, generations))
        return [done[distinct[key]] for key in zip(map(tuple, choices), decode_edits)]

    def _continue(self, variants: VariantPass, choices: list[list[int]], firsts: list[torch.Tensor],
                  tokens: list[torch.Tensor], max_new_tokens: int, edits: tuple[Edit, ...],
                  in_place: bool = False) -> list[Generation]:
        """``continue_variants`` for continuations decoded as rows of one ``generate`` (C·B rows), from each
        continuation's raw first logits ``firsts`` and first tokens ``tokens`` (B, 1)."""
        self._check_sites(edits, None, ())
        C, B = len(choices), firsts[0].shape[0]
        first_tokens = torch.cat(tokens)  # (C·B, 1)
        kwargs = {}
        ids = self.inputs["input_ids"]  # (B, S)
        for key, value in self.inputs.items():
            if key in self.drop_on_continue:
                continue
            if isinstance(value, torch.Tensor) and (key == "attention_mask" or value.shape == ids.shape):
                value = value.repeat(C, 1)  # (C·B, S)
                extra = first_tokens if key == "input_ids" else value[:, -1:]  # the first token: a real text token
                value = torch.cat([value, extra.to(value.dtype)], dim=1)  # (C·B, S + 1)
            kwargs[key] = value
        _, offsets = self.continuation_positions(self.inputs, self.prompt_len)
        self.set_decode_offsets(offsets.repeat(C, 1) if offsets is not None else None)
        kwargs[cache_argument(self.model)] = variants.continuation_cache(choices, in_place=in_place)
        min_new = self.model.generation_config.min_new_tokens  # counts the first token, which is decoded already
        config = self._generation_config(max_new_tokens - 1, **({"min_new_tokens": min_new - 1} if min_new else {}))
        state = SteerState(image_cols=self.image_cols.repeat(C, 1), edits=tuple(edits), cost=self.cost)
        with steering(state), engine_processors(self.model):
            out = self.model.generate(**kwargs, generation_config=config)
        new = out.sequences[:, self.prompt_len:]  # (C·B, T): the first token, then the rest
        eos = eos_token_ids(self.model.generation_config)
        new = finished_after_first(new, eos, int(config.pad_token_id))
        steps = [torch.cat(firsts)] + [logits.float() for logits in out.logits][:new.shape[1] - 1]  # (C·B, V) each
        return [Generation(new_tokens=new[c * B:(c + 1) * B], first_logits=firsts[c],
                           step_logits=tuple(step[c * B:(c + 1) * B] for step in steps)) for c in range(C)]
