"""The model's own logits processors: where they run relative to a method's processors at the logits site, and on
which tokens of a padded batch they read.

``generate`` builds processors from the model's generation config and the caller's settings: the repetition penalty,
no-repeat n-gram, min length and min new tokens, bad words, suppressed tokens (and whatever else the config sets) and,
when sampling, the warpers (temperature, top-k, top-p, …). transformers runs a caller's processors after its own
non-warper processors and before the warpers. The official code of every method that corrects the scores (VCD, DoLa,
DeCo, M3ID) runs the whole list after its correction instead. ``engine_processors`` gives that order without
rebuilding the list: the method's processors go at the head of the list ``generate`` builds, the rest stays as
``generate`` has it. Which order a method gets is its declaration (``Method.processors_after_correction``, carried
by the engine's ``Contract``); the runner applies it.

A processor that reads the tokens so far reads, in a batch, its row's padding too: the repetition penalty skips only
leading padding and the no-repeat n-gram skips none, and rows that share image prefixes hold padding inside the
prompt (``steer.prefix``). Both run here on each row's real tokens alone (``RealTokensOnly``), so that a row decodes
as it would alone, whatever padding its batch lays out.

``own_processors`` is the list ``generate`` would build for a prompt, for a token the engine chooses itself (the
first token of a variant column, ``visfocus.steer.variants``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformers import (
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

_BUILDER = "_get_logits_processor"  # the method of a transformers model that builds generate's processor list


class RealTokensOnly(LogitsProcessor):
    """``inner`` (a repetition penalty or a no-repeat n-gram) on each row's real tokens alone: the prompt columns its
    attention mask keeps, then every generated token. prompt_mask: (B, S) the prompt's attention mask."""

    def __init__(self, inner: LogitsProcessor, prompt_mask: torch.Tensor) -> None:
        self.inner, self.prompt_mask = inner, prompt_mask.bool()
        # the same processor for one unpadded row (the penalty's own padding skip has nothing left to skip)
        self.per_row = RepetitionPenaltyLogitsProcessor(inner.penalty) \
            if isinstance(inner, RepetitionPenaltyLogitsProcessor) else inner

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, S = self.prompt_mask.shape
        generated = torch.ones(B, input_ids.shape[1] - S, dtype=torch.bool, device=self.prompt_mask.device)
        keep = torch.cat([self.prompt_mask, generated], dim=1).to(input_ids.device)  # (B, T)
        rows = [self.per_row(input_ids[b, keep[b]][None], scores[b:b + 1].clone()) for b in range(B)]  # (1, V) each
        return torch.cat(rows)  # (B, V)


READS_TOKENS = (RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor)  # what ``RealTokensOnly`` wraps


def on_real_tokens(processors: Sequence[LogitsProcessor], prompt_mask: torch.Tensor | None) -> list[LogitsProcessor]:
    """``processors`` with each one that reads the tokens so far (``READS_TOKENS``) run on each row's real tokens
    alone; as they are without a mask."""
    if prompt_mask is None:
        return list(processors)
    return [RealTokensOnly(p, prompt_mask) if isinstance(p, READS_TOKENS) else p for p in processors]


def unwrapped(processor: LogitsProcessor) -> LogitsProcessor:
    """The transformers processor inside an engine wrapper (``RealTokensOnly``), or ``processor`` itself."""
    return processor.inner if isinstance(processor, RealTokensOnly) else processor


@contextlib.contextmanager
def engine_processors(model, corrections: Sequence[LogitsProcessor] = ()) -> Iterator[None]:
    """Within the block, ``model.generate`` runs ``corrections`` first, then every processor it builds itself in its
    own order (the caller's custom processors and the warpers included), those that read the tokens so far on each
    row's real tokens (``on_real_tokens``). Every generating module inside ``model`` is covered, as a composite
    model's ``generate`` may hand over to its language model's (InstructBLIP); each list is built by one of them, so
    the corrections run once."""
    builders = [module for module in model.modules() if isinstance(module, GenerationMixin)]
    shadowed = [module.__dict__.get(_BUILDER) for module in builders]  # an enclosing block's, restored after
    for module in builders:
        build = getattr(module, _BUILDER)

        def built(*args, _build=build, **kwargs) -> LogitsProcessorList:
            mask = (kwargs.get("model_kwargs") or {}).get("attention_mask")  # (B, S) the prompt's, as generate has it
            return LogitsProcessorList([*corrections, *on_real_tokens(_build(*args, **kwargs), mask)])

        module.__dict__[_BUILDER] = built  # the instance attribute shadows the class's method for this block only
    try:
        yield
    finally:
        for module, before in zip(builders, shadowed):
            if before is None:
                del module.__dict__[_BUILDER]
            else:
                module.__dict__[_BUILDER] = before


def own_processors(model, config: GenerationConfig, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> LogitsProcessorList:
    """The processors ``model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)``
    runs within ``engine_processors`` (no custom ones): ``config`` under the model's generation config, as
    ``generate`` merges them. input_ids, attention_mask: (B, S) the prompt."""
    prepared, _ = model._prepare_generation_config(config)
    model._prepare_special_tokens(prepared, True, device=input_ids.device)
    built = model._get_logits_processor(generation_config=prepared, input_ids_seq_length=input_ids.shape[1],
                                        encoder_input_ids=input_ids, device=input_ids.device,
                                        model_kwargs={"attention_mask": attention_mask})
    return LogitsProcessorList(on_real_tokens(built, attention_mask))
