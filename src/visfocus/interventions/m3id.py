"""M3ID, "Multi-Modal Hallucination Control by Visual Information Grounding" (Favero et al., CVPR 2024). Each
decoding step t = 1, 2, … mixes the conditional log-probabilities l_c = log p(y | image, text) with the unconditional
ones l_u = log p(y | text) as l_c + ((1−γ_t)/γ_t)·(l_c − l_u), γ_t = exp(−λ·t): the correction towards the image grows
with the length of the answer, as the model forgets the image. Tokens whose conditional logit is below max + log β
get −inf (the adaptive plausibility constraint, β 0.1). l_u comes from the text-only stream
(``steer.streams.TextOnlyStream``: the chat prompt with the image taken out, its own cache, no edit).

No official code exists. The defaults (λ 0.02, β 0.1, t counted from 1 at the first answer token, the cutoff on the
raw conditional logits) follow the re-implementation in AvisC (sangminwoo/AvisC, ``avisc_utils/avisc_sample.py``, the
``use_m3id`` branch), and so does the order: there the model's logits processors (repetition penalty, no-repeat
n-gram, min new tokens, bad words, suppressed tokens, …) and then its warpers run on the mixture, right after the
mixing lines (``m3id_logit = logits_processor(input_ids, m3id_logit)``); here too (``processors_after_correction``),
so the β cut reads the unprocessed conditional logits. That code stores the text-only stream's updated arguments under
the wrong name (``model_kwargs_cd = ...`` after the M3ID stream's step), which is harmless: transformers'
``_update_model_kwargs_for_generation`` updates the dict it is given in place and returns it, so the stream keeps
its cache all the same, as the text-only stream here does. It samples; here decoding is greedy by default
(``sampling`` applies the warpers after the mixture). At t = 1 the correction is small ((1−γ_1)/γ_1 ≈ 0.02): a
one-token answer (POPE) barely moves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from visfocus.interventions.base import Fidelity, Method, MethodResult, Params, param, register_method
from visfocus.interventions.batch import Batch
from visfocus.interventions.decoding import plausibility_cut, processor_order_fidelity
from visfocus.steer.streams import TextOnlyStream


def mutual_information_scores(conditional: torch.Tensor, unconditional: torch.Tensor, step: int, decay: float,
                              beta: float) -> torch.Tensor:
    """(B, V) l_c + ((1−γ_t)/γ_t)·(l_c − l_u), γ_t = exp(−decay·step), −inf where the conditional logit is below
    its max + log β. conditional, unconditional: (B, V) raw logits; step: t ≥ 1."""
    gamma_t = math.exp(-decay * step)
    l_c = conditional.float().log_softmax(-1)  # (B, V)
    l_u = unconditional.float().log_softmax(-1)  # (B, V)
    mixed = l_c + ((1 - gamma_t) / gamma_t) * (l_c - l_u)  # (B, V)
    return plausibility_cut(mixed, conditional, beta)


class MutualInformation(LogitsProcessor):
    def __init__(self, stream: TextOnlyStream, prompt_len: int, decay: float, beta: float) -> None:
        self.stream, self.prompt_len, self.decay, self.beta = stream, prompt_len, decay, beta

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len + 1  # t = 1 at the first answer token
        unconditional = self.stream.logits(input_ids).to(scores.device)  # (B, V)
        return mutual_information_scores(scores, unconditional, step, self.decay, self.beta)


@dataclass(frozen=True)
class M3IDParams(Params):
    decay: float = param(0.02, paper="λ", low=0.0)  # λ in γ_t = exp(−λ·t); 0 = no correction
    beta: float = param(0.1, paper="β", low=0, high=1, low_open=True)  # plausibility cutoff: keep logits ≥ max + log β


@register_method
class M3ID(Method):
    name = "m3id"
    paper = ("Favero et al., CVPR 2024, “Multi-Modal Hallucination Control by Visual Information Grounding”, "
             "https://arxiv.org/abs/2403.14003")
    equation = ("γ_t = exp(−λ·t),  t = 1, 2, … over the answer tokens\n"
                "score_t(y) = l_c(y) + ((1 − γ_t)/γ_t)·(l_c(y) − l_u(y)), kept where z_c(y) ≥ max z_c + log β")
    fidelity = (
        Fidelity(reference="independent eager re-implementation of the paper's equation "
                           "(tests/test_method_pai_m3id.py): a plain conditional forward and a text-only prompt built "
                           "from the prompt's text",
                 equal="the scores, the tokens they cut and the greedy token at each of 3 steps, every family",
                 tolerance="fp32, max abs ≤ 1e-4; the cut and the tokens exact",
                 test="tests/test_method_pai_m3id.py::test_m3id_equals_the_reference_mixture_at_every_step"),
        processor_order_fidelity(
            "an independent reference in sangminwoo/AvisC avisc_sample.py's order (logits_processor, "
            "then logits_warper, on the mixture): plain full forwards, the correction written in the "
            "test, transformers' processor classes applied in that order"),
    )
    Params = M3IDParams
    identity = {"decay": 0.0}
    search_grid = {"decay": (0.01, 0.02, 0.05, 0.1)}
    sites = frozenset({"logits"})
    side_streams = frozenset({"text_only"})

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p = self.params
        if p.decay == 0:  # γ_t = 1: nothing to mix in, the plain model
            return MethodResult(batch.runner.generate((), max_new_tokens))
        mixture = MutualInformation(batch.text_only_stream(), batch.runner.prompt_len, p.decay, p.beta)
        return MethodResult(batch.runner.generate((), max_new_tokens, logits_processor=LogitsProcessorList([mixture])))
