"""AdaptVis (Chen et al., ICML 2025, Eq. 3): ScalingVis with α chosen per sample from the model's confidence in an
unedited pass — α_low (smooth, broaden the focus) when confidence < threshold, α_high (sharpen) otherwise.

Paper names α1, α2, β; the official code ``--weight1 --weight2 --threshold``; the survey ``smoothen_weight``,
``sharpen_weight``, ``confidence_threshold``. Cost: one forward. The prompt's forward (from the shared image prefix,
or whole) runs unedited and carries two more columns, the last prompt token under α_low and under α_high
(``visfocus.steer.variants``); the unedited row's confidence picks the branch, and decoding goes on from that
branch's column. Where variant columns are not exact (a prefix-LM prompt, sampling, teacher forcing, a recorded
trace), the unedited prefill comes first and only the last prompt token is re-run under the chosen α from a cropped
copy of its cache (docs/methods.md §12.3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from visfocus.interventions.base import (
    Fidelity,
    LayerSpec,
    Method,
    MethodResult,
    Params,
    VariantChoice,
    check_number,
    edit_layers,
    param,
    register_method,
)
from visfocus.interventions.batch import Batch
from visfocus.interventions.variants import run_variants
from visfocus.steer.edits import ScaleLogits

# max_prob: max softmax over the whole vocabulary of the raw first-token logits (the paper's "generation probability",
# the official WhatsUp path). option_prob: the largest full-vocabulary probability among the answer options' first
# tokens. max_logit: the raw maximum logit, no softmax — the official VSR path, kept only to reproduce it.
CONFIDENCES = ("max_prob", "option_prob", "max_logit")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # of the dev set's own confidences, added to a sweep's thresholds
ANSWER_ALIASES = {"yes": ("true",), "no": ("false",)}  # a True/False prompt answers a yes/no task


@dataclass(frozen=True)
class AdaptVisParams(Params):
    alpha_low: float = param(0.5, paper="α1", low=0.0)  # α1, used when confidence < threshold (paper Table 8: 0.5)
    alpha_high: float = param(1.2, paper="α2", low=0.0)  # α2, used otherwise (paper Table 8: 1.2)
    threshold: float = param(0.3, paper="β")  # β (paper Table 8: 0.3); on the logit scale for confidence="max_logit"
    # how the unedited first answer token's confidence is measured: max_prob, the largest softmax probability over
    # the vocabulary (the official WhatsUp path); option_prob, the largest probability of an answer option's first
    # token; max_logit, the largest raw logit (the official VSR path)
    confidence: str = param("max_prob", choices=CONFIDENCES)
    layers: LayerSpec = None  # decoder layers to edit; None = all
    decode: bool = False  # also edit every decoding step's row (the official code does not)
    # round the confidence to this many decimals before comparing it with the threshold; the official code rounds to 2
    # (``np.round(C, 2)``, docs/methods.md §3.2), so samples within 0.005 of the threshold may take the other branch
    # there. None: the raw value (default)
    confidence_decimals: int | None = param(None, low=0)

    def check(self, num_layers: int | None = None) -> None:
        if self.confidence != "max_logit":  # a probability threshold; on the logit scale any finite value
            check_number("threshold", self.threshold, low=0.0, high=1.0)


def option_token_ids(tokenizer, options: tuple[str, ...]) -> list[int]:
    """First token ids of each option as the model may start it (bare, capitalised, after a space)."""
    words = [w for o in options for w in (o, *ANSWER_ALIASES.get(o.lower(), ()))]
    ids = set()
    for word in words:
        for variant in (word, word.capitalize(), " " + word, " " + word.capitalize()):
            tokens = tokenizer.encode(variant, add_special_tokens=False)
            if tokens:
                ids.add(tokens[0])
    return sorted(ids)


def smooth_branch(confidences: list[float], threshold: float, decimals: int | None = None) -> list[bool]:
    """Per row, whether AdaptVis smooths (α_low): confidence < threshold, strictly (C == threshold sharpens, as in
    both reference codes), the confidence first rounded to ``decimals`` as the official code does (``np.round``)
    when given."""
    if decimals is not None:
        confidences = [float(np.round(c, decimals)) for c in confidences]
    return [c < threshold for c in confidences]


def confidence(first_logits: torch.Tensor, mode: str, option_ids: list[list[int]] | None = None) -> torch.Tensor:
    """(B,) confidence from raw first-token logits (B, V)."""
    if mode == "max_logit":
        return first_logits.max(-1).values
    probs = torch.softmax(first_logits.float(), dim=-1)  # (B, V)
    if mode == "max_prob":
        return probs.max(-1).values
    return torch.stack([probs[b, ids].max() for b, ids in enumerate(option_ids)])  # (B,)


@register_method
class AdaptVis(Method):
    name = "adaptvis"
    paper = ("Chen et al., ICML 2025, “Why Is Spatial Reasoning Hard for VLMs? An Attention Mechanism Perspective on "
             "Focus Areas”, Eq. 3, https://arxiv.org/abs/2503.01773")
    equation = ("α = α1 if C < β, else α2   (C: the confidence of the unedited first answer token)\n"
                "s[l,h,n,j] ← α·s[l,h,n,j] for every image key j ∈ I (ScalingVis with the chosen α)")
    fidelity = (
        Fidelity(reference="the paper's two passes run naively in the test: an unedited answer gives C, then "
                           "scaling_vis with the chosen α (itself checked against tests/eager_reference.py)",
                 equal="branch, α used and answer text; first-token logits; both branches, every family",
                 tolerance="fp32, first-token logits max abs ≤ 1e-4, confidence ≤ 1e-6; branch and text exact",
                 test="tests/test_method_adaptvis.py::test_adaptvis_equals_two_pass_reference"),
        Fidelity(reference="shiqichen17/AdaptVis, llava15.py (official code): its branch rule, C rounded with "
                           "np.round(C, 2) then smooth if C < threshold, transcribed in the test",
                 equal="the branch and α used, at thresholds on both sides of C and of round(C, 2)",
                 tolerance="exact",
                 test="tests/test_method_adaptvis.py::"
                      "test_two_decimal_rounding_takes_the_official_branch_exactly_where_rounding_matters",
                 option="confidence_decimals=2"),
        Fidelity(reference="shiqichen17/AdaptVis, llava15.py (official code): its VSR confidence, the raw maximum "
                           "first-token logit without softmax, computed in the test from the unedited logits",
                 equal="the confidence compared with the threshold",
                 tolerance="relative ≤ 1e-5",
                 test="tests/test_method_adaptvis.py::test_confidence_modes_are_defined_as_documented",
                 option="confidence=max_logit"),
    )
    Params = AdaptVisParams
    identity = {"alpha_low": 1.0, "alpha_high": 1.0}
    search_grid = {"alpha_low": (0.5, 0.8), "alpha_high": (1.2, 1.5, 2.0),
                   "threshold": tuple(round(0.2 + 0.05 * i, 2) for i in range(10))}  # App. E.3: 0.2 … 0.65
    sites = frozenset({"attention"})
    extras = {"alpha_used": "the α applied: α_low when the confidence was below the threshold, else α_high",
              "branch": "smooth (α_low) or sharpen (α_high)",
              "confidence_used": "the unedited pass's confidence that chose the branch",
              "confidence_mode": "how that confidence was computed (the confidence parameter)",
              "confidence_compared": "the confidence rounded to confidence_decimals, as compared (when given)"}

    @property
    def needs_options(self) -> bool:
        return self.params.confidence == "option_prob"

    @classmethod
    def wants_dev_confidences(cls, grid, given: set[str]) -> bool:
        """The paper's thresholds plus quantiles of the dev set's own confidences, unless the user chose the
        thresholds or another confidence than max_prob (the one a plain run reports)."""
        return "threshold" not in given and list(grid.get("confidence", ["max_prob"])) == ["max_prob"]

    @classmethod
    def grid_with_dev_confidences(cls, grid, confidences: list[float]) -> dict[str, list]:
        quantiles = [round(float(q), 4) for q in np.quantile(confidences, QUANTILES)] if confidences else []
        return {**grid, "threshold": sorted(set(grid.get("threshold", ())) | set(quantiles))}

    def _branches(self, num_layers: int, alpha: float | tuple[float, ...]) -> ScaleLogits:
        p = self.params
        return ScaleLogits(alpha=alpha, layers=edit_layers(p.layers, num_layers),
                           rows="last_prompt_and_decode" if p.decode else "last_prompt")

    def variant_edits(self, num_layers: int) -> tuple:
        """The two branches: the last prompt token under α_low (variant 0) and under α_high (variant 1)."""
        return ((self._branches(num_layers, float(self.params.alpha_low)),),
                (self._branches(num_layers, float(self.params.alpha_high)),))

    def choose_variant(self, batch: Batch, unedited_logits: torch.Tensor) -> VariantChoice:
        """The branch of each row from the unedited row's confidence; decoding rows (``decode``) under its α."""
        p = self.params
        option_ids = None
        if p.confidence == "option_prob":
            option_ids = [option_token_ids(batch.adapter.processor.tokenizer, o) for o in batch.options]
        scores = confidence(unedited_logits, p.confidence, option_ids).tolist()  # (B,)
        smooth = smooth_branch(scores, p.threshold, p.confidence_decimals)
        alphas = tuple(float(p.alpha_low if s else p.alpha_high) for s in smooth)
        extras = [{"alpha_used": a, "confidence_used": float(c), "confidence_mode": p.confidence,
                   "branch": "smooth" if s else "sharpen"} for a, c, s in zip(alphas, scores, smooth)]
        if p.confidence_decimals is not None:  # what was compared with the threshold
            for extra, c in zip(extras, scores):
                extra["confidence_compared"] = float(np.round(c, p.confidence_decimals))
        return VariantChoice(choice=[0 if s else 1 for s in smooth],
                             decode_edits=(self._branches(batch.num_layers, alphas),) if p.decode else (),
                             extras=extras)

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        together = run_variants(batch, [self], max_new_tokens=max_new_tokens)  # one forward, where exact
        if together is not None:
            return together[0]
        # an unedited prefill, then the last prompt token again under each row's α
        prefix = batch.runner.prefill()
        chosen = self.choose_variant(batch, prefix.first_logits)
        edit = self._branches(batch.num_layers, tuple(extra["alpha_used"] for extra in chosen.extras))
        generation = batch.runner.generate((edit,), max_new_tokens=max_new_tokens, prefix=prefix, keep_prefix=False)
        return MethodResult(generation, extras=chosen.extras)
