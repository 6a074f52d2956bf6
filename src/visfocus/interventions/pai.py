"""PAI, "Paying More Attention to Image: A Training-Free Method for Alleviating Hallucination in LVLMs" (Liu, Zheng,
Chen; ECCV 2024; reference code LALBJ/PAI, ``attention.py::llama_new_forward`` and ``CFG.py::CFGLogits``).

Attention edit: on the image key columns of the last prompt row and of every decoding row, all heads, the
pre-softmax logits become z + α·|z| (``magnitude="per_head"``), in the layers from the third to the last (the
reference's ``range(2, 32)`` of 32, here the fraction range ``"0.0625:1"`` of any depth). The edit happens after the
mask in the reference; on image columns the mask is 0, so editing before it is the same. ``magnitude="head_mean"``
uses the head-mean magnitude z + α·mean_heads|z| of the "middle layers" follow-up (Jiang et al., CVPR 2025,
``modify_attention.py``; their layers ≈ 5–18 of 32, ``layers="0.15:0.6"``, and α 0.5).

Contrast (the reference's ``--use-cfg``, γ ≠ 1): log-softmax outputs γ·log p(y | image, text) − (γ−1)·log p(y | text),
with tokens whose conditional log-probability is below log 0.1 + max set to −inf. p(y | text) comes from a text-only
stream (``steer.streams.TextOnlyStream``: the same chat prompt with the image taken out, its own cache, no edit),
decoded as rows of the answer's own forwards (``steer.rows``; apart where rows are not exact). γ = 1 switches the
contrast off entirely, as in the reference.

Processor order, as the reference has it (``processors_after_correction = False``): the reference passes ``CFGLogits``
to ``generate`` as a custom logits processor (``chair_eval.py``, transformers 4.37), and transformers runs its own
processors first: the model's repetition penalty, no-repeat n-gram, min new tokens, bad words and suppressed tokens
act on the conditional logits before the contrast (so the plausibility cut reads penalised log-probabilities; the
text-only stream's are its own, unprocessed), and the sampling warpers after it. This is the one contrastive method
here whose model processors come before its correction.

Reference bug kept as an option: with the contrast on, the reference applies no edit to the first generated token (its
``use_cfg`` flag is reset only after the first unconditional pass), which is exactly the answer token of POPE. By
default every row is edited, as the paper intends; ``first_token_unedited=True`` reproduces the reference there (the
last prompt row is left unedited, decoding rows are edited). Defaults: α 0.2 and γ 1.1 (the reference README); its
scripts' argparse default is γ 2 and follow-up work on POPE often uses α 0.5 (in the search grid). Decoding is greedy
by default; with ``sampling`` the warpers act on the contrasted scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from visfocus.interventions.base import (
    Fidelity,
    LayerSpec,
    Method,
    MethodResult,
    Params,
    edit_layers,
    param,
    register_method,
)
from visfocus.interventions.batch import Batch
from visfocus.interventions.decoding import plausibility_cut, processor_order_fidelity
from visfocus.steer.edits import Edit
from visfocus.steer.streams import TextOnlyStream

MAGNITUDES = ("per_head", "head_mean")
PLAUSIBLE = 0.1  # keep tokens whose conditional log-probability is at least max + log 0.1


@dataclass(frozen=True)
class AddMagnitude(Edit):
    """z + α·|z| on the selected columns (``head_mean``: z + α·mean over heads of |z|). With ``skip_last_prompt``
    only decoding rows are edited (the reference's first-token behaviour)."""

    alpha: float = 0.2
    magnitude: str = "per_head"
    skip_last_prompt: bool = False

    def applies_to(self, layer_idx: int, is_decode_row: bool) -> bool:
        if self.skip_last_prompt and not is_decode_row:
            return False
        return super().applies_to(layer_idx, is_decode_row)

    def transform(self, scores: torch.Tensor, key_cols: torch.Tensor) -> torch.Tensor:
        magnitude = scores.abs()  # (B, H, K)
        if self.magnitude == "head_mean":
            magnitude = magnitude.mean(dim=1, keepdim=True)  # (B, 1, K)
        return torch.where(key_cols, scores + self.alpha * magnitude, scores)  # (B, H, K)


def guided(conditional: torch.Tensor, unconditional: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, V) γ·l_c − (γ−1)·l_u on log-softmax outputs, −inf where l_c < max l_c + log 0.1 (the reference's CFG)."""
    l_c = conditional.float().log_softmax(-1)  # (B, V)
    l_u = unconditional.float().log_softmax(-1)  # (B, V)
    return plausibility_cut(gamma * (l_c - l_u) + l_u, l_c, PLAUSIBLE)


class TextGuidance(LogitsProcessor):
    """Contrasts every step's scores with the text-only stream's (``guided``)."""

    def __init__(self, stream: TextOnlyStream, gamma: float) -> None:
        self.stream, self.gamma = stream, gamma

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return guided(scores, self.stream.logits(input_ids).to(scores.device), self.gamma)


@dataclass(frozen=True)
class PAIParams(Params):
    alpha: float = param(0.2, paper="α", low=0.0)  # α: strength of the image-attention boost
    gamma: float = param(1.1, paper="γ", low=1.0)  # γ: contrast with the text-only prompt; 1 = no contrast
    layers: LayerSpec = "0.0625:1"  # from the third layer of 32 to the last, as a fraction of the depth
    magnitude: str = param("per_head", choices=MAGNITUDES)  # |z| per head, or its mean over heads (CVPR 2025)
    first_token_unedited: bool = False  # the reference's bug with the contrast on: the first token's row unedited


@register_method
class PAI(Method):
    name = "pai"
    paper = ("Liu, Zheng, Chen, ECCV 2024, “Paying More Attention to Image: A Training-Free Method for Alleviating "
             "Hallucination in LVLMs”, https://arxiv.org/abs/2407.21771")
    equation = ("z ← z + α·|z| on the image keys of the last prompt row and every decoding row (pre-softmax)\n"
                "score(y) = γ·log p(y | image, text) − (γ − 1)·log p(y | text), cut where log p(y | image, text) "
                "< max + log 0.1")
    fidelity = (
        Fidelity(reference="independent eager re-implementation of the paper's equation "
                           "(tests/test_method_pai_m3id.py, pai_reference_attention), decoded by generate",
                 equal="raw logits at each of 3 greedy steps, magnitude per_head and head_mean, every family",
                 tolerance="fp32, max abs ≤ 1e-4",
                 test="tests/test_method_pai_m3id.py::test_pai_edit_equals_the_eager_reference_at_every_step"),
        Fidelity(reference="independent eager re-implementation of the paper's equation "
                           "(tests/test_method_pai_m3id.py), the text-only prompt built from the prompt's text",
                 equal="contrasted scores at the first two steps, and the tokens the first step cuts, every family",
                 tolerance="fp32, max abs ≤ 1e-4; the first step's cut exact",
                 test="tests/test_method_pai_m3id.py::test_pai_contrast_with_the_text_only_prompt_equals_the_reference"),
        Fidelity(reference="LALBJ/PAI (official code): its unedited first generated token, as the independent eager "
                           "re-implementation (tests/test_method_pai_m3id.py) editing from the second token on",
                 equal="raw logits at each of 3 greedy steps",
                 tolerance="fp32, max abs ≤ 1e-4",
                 test="tests/test_method_pai_m3id.py::"
                      "test_first_token_unedited_differs_from_the_default_exactly_on_the_first_token",
                 option="first_token_unedited=true"),
        processor_order_fidelity(
            "an independent reference in LALBJ/PAI's order (CFGLogits a custom processor of generate:"
            " the model's processors before it, warpers after): plain full forwards, the correction "
            "written in the test, transformers' processor classes applied in that order"),
    )
    Params = PAIParams
    identity = {"alpha": 0.0, "gamma": 1.0}
    search_grid = {"alpha": (0.2, 0.5, 0.8), "gamma": (1.0, 1.1, 2.0)}
    sites = frozenset({"attention", "logits"})
    side_streams = frozenset({"text_only"})
    # the reference's CFGLogits is a custom processor of generate: the model's own processors come before it
    processors_after_correction = False
    bench_points = {"pai": {"gamma": 1.0},  # the attention edit alone
                    "pai_contrast": {}}  # with the text-only contrast (γ 1.1)

    def edit(self, num_layers: int) -> AddMagnitude:
        p = self.params
        return AddMagnitude(alpha=float(p.alpha), magnitude=p.magnitude, rows="last_prompt_and_decode",
                            layers=edit_layers(p.layers, num_layers),
                            skip_last_prompt=p.first_token_unedited)

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p = self.params
        edits = (self.edit(batch.num_layers),) if p.alpha != 0 else ()
        guidance = [TextGuidance(batch.text_only_stream(), p.gamma)] if p.gamma != 1 else []
        generation = batch.runner.generate(edits, max_new_tokens, logits_processor=LogitsProcessorList(guidance))
        return MethodResult(generation)
