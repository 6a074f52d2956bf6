"""The model's own logits processors, and where they run relative to a method's processors at the logits site.

``generate`` builds processors from the model's generation config and the caller's settings: the repetition penalty,
no-repeat n-gram, min length and min new tokens, bad words, suppressed tokens (and whatever else the config sets) and,
when sampling, the warpers (temperature, top-k, top-p, …). transformers runs a caller's processors after its own
non-warper processors and before the warpers. The official code of every method that corrects the scores (VCD, DoLa,
DeCo, M3ID) runs the whole list after its correction instead; ``corrections_first`` gives that order without
rebuilding the list: the method's processors go at the head of the list ``generate`` builds, the rest stays as
``generate`` has it. Which order a method gets is its declaration (``Method.processors_after_correction``, carried
by the engine's ``Contract``); the runner applies it.

``own_processors`` is the list ``generate`` would build for a prompt, for a token the engine chooses itself (the
first token of a variant column, ``visfocus.steer.variants``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformers import GenerationConfig, GenerationMixin, LogitsProcessor, LogitsProcessorList

_BUILDER = "_get_logits_processor"  # the method of a transformers model that builds generate's processor list


@contextlib.contextmanager
def corrections_first(model, corrections: Sequence[LogitsProcessor]) -> Iterator[None]:
    """Within the block, ``model.generate`` runs ``corrections`` first, then every processor it builds itself in its
    own order (the caller's custom processors and the warpers included). Every generating module inside ``model`` is
    covered, as a composite model's ``generate`` may hand over to its language model's (InstructBLIP); each list is
    built by one of them, so the corrections run once."""
    if not corrections:
        yield
        return
    builders = [module for module in model.modules() if isinstance(module, GenerationMixin)]
    shadowed = [module.__dict__.get(_BUILDER) for module in builders]  # an enclosing block's, restored after
    for module in builders:
        build = getattr(module, _BUILDER)

        def built(*args, _build=build, **kwargs) -> LogitsProcessorList:
            return LogitsProcessorList([*corrections, *_build(*args, **kwargs)])

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
    builds (no custom ones): ``config`` under the model's generation config, as ``generate`` merges them.
    input_ids, attention_mask: (B, S) the prompt."""
    prepared, _ = model._prepare_generation_config(config)
    model._prepare_special_tokens(prepared, True, device=input_ids.device)
    return model._get_logits_processor(generation_config=prepared, input_ids_seq_length=input_ids.shape[1],
                                       encoder_input_ids=input_ids, device=input_ids.device,
                                       model_kwargs={"attention_mask": attention_mask})
