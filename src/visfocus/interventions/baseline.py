"""The plain model: greedy answer, no edit. ``method=None`` means this."""

from __future__ import annotations

from visfocus.interventions.base import Method, MethodResult, VariantChoice, register_method
from visfocus.interventions.batch import Batch
from visfocus.steer.variants import UNEDITED


@register_method
class Baseline(Method):
    name = "baseline"

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        return MethodResult(batch.runner.generate((), max_new_tokens=max_new_tokens))

    def variant_edits(self, num_layers: int) -> tuple:
        return ()  # the unedited row itself (beside other methods' variants in a sweep)

    def choose_variant(self, batch: Batch, unedited_logits) -> VariantChoice:
        return VariantChoice(choice=[UNEDITED] * batch.size)
