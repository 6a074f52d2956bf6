"""ScalingVis (Chen et al., AdaptVis paper §4.2): multiply the pre-softmax logits of the image keys in the last
prompt row by α, in every (or the chosen) decoder layer and every head. α < 1 flattens attention over the image,
α > 1 sharpens it. It is a logit multiplier (temperature 1/α on the image block only), so it also changes the total
image mass. The official code calls α ``--weight``; official behaviour edits the prefill row only (``decode=False``)."""

from __future__ import annotations

from dataclasses import dataclass

from visfocus.interventions.base import (
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
