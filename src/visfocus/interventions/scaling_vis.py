"""ScalingVis (Chen et al., AdaptVis paper §4.2): multiply the pre-softmax logits of the image keys in the last
prompt row by α, in every (or the chosen) decoder layer and every head. α < 1 flattens attention over the image,
α > 1 sharpens it. It is a logit multiplier (temperature 1/α on the image block only), so it also changes the total
image mass. The official code calls α ``--weight``; official behaviour edits the prefill row only (``decode=False``)."""

from __future__ import annotations

from dataclasses import dataclass

from visfocus.interventions.base import (
    Fidelity,
    LayerSpec,
    Method,
    MethodResult,
    Params,
    VariantChoice,
    edit_layers,
    param,
    register_method,
)
from visfocus.interventions.batch import Batch
from visfocus.steer.edits import ScaleLogits


@dataclass(frozen=True)
class ScalingVisParams(Params):
    # the paper's best on the synthetic WhatsUp subsets; real images favour α > 1
    alpha: float = param(0.5, paper="α", low=0.0)
    layers: LayerSpec = None  # decoder layers to edit; None = all
    decode: bool = False  # also edit the query row of every decoding step (the official code does not)


@register_method
class ScalingVis(Method):
    name = "scaling_vis"
    paper = ("Chen et al., ICML 2025, “Why Is Spatial Reasoning Hard for VLMs? An Attention Mechanism Perspective on "
             "Focus Areas”, §4.2, https://arxiv.org/abs/2503.01773")
    equation = ("s[l,h,n,j] ← α·s[l,h,n,j] for every image key j ∈ I, in every layer l and head h, before the softmax\n"
                "(n: the last prompt token; s = q·k/√d)")
    fidelity = (
        Fidelity(reference="independent eager re-implementation of the paper's equation (tests/eager_reference.py)",
                 equal="first-token logits, α ∈ {0, 0.5, 2}, every family",
                 tolerance="fp32, max abs ≤ 1e-4",
                 test="tests/test_engine.py::test_scaling_vis_matches_eager_reference"),
        Fidelity(reference="independent eager re-implementation of the paper's equation (tests/eager_reference.py)",
                 equal="the last prompt row's attention probabilities in every layer and head, before and after "
                       "the edit (the trace), every family",
                 tolerance="fp32, max abs ≤ 1e-5",
                 test="tests/test_engine.py::test_trace_matches_eager_reference"),
    )
    Params = ScalingVisParams
    identity = {"alpha": 1.0}
    search_grid = {"alpha": (0.5, 0.8, 1.2, 1.5, 2.0)}
    sites = frozenset({"attention"})
    extras = {"alpha_used": "α, the multiplier applied to the image keys' attention logits"}

    def edit(self, num_layers: int) -> ScaleLogits:
        p = self.params
        return ScaleLogits(alpha=float(p.alpha), layers=edit_layers(p.layers, num_layers),
                           rows="last_prompt_and_decode" if p.decode else "last_prompt")

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        generation = batch.runner.generate((self.edit(batch.num_layers),), max_new_tokens=max_new_tokens)
        return MethodResult(generation, extras=self._extras(batch.size))

    def _extras(self, size: int) -> list[dict]:
        return [{"alpha_used": float(self.params.alpha)} for _ in range(size)]

    def variant_edits(self, num_layers: int) -> tuple:
        return ((self.edit(num_layers),),)  # one variant: the last prompt token under α (a sweep's point)

    def choose_variant(self, batch: Batch, unedited_logits) -> VariantChoice:
        edit = self.edit(batch.num_layers)
        return VariantChoice(choice=[0] * batch.size, decode_edits=(edit,) if self.params.decode else (),
                             extras=self._extras(batch.size))
