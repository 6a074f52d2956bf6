"""The plain model: greedy answer, no edit. ``method=None`` means this."""

from __future__ import annotations

from visfocus.interventions.base import Fidelity, Method, MethodResult, VariantChoice, register_method
from visfocus.interventions.batch import Batch
from visfocus.steer.variants import UNEDITED


@register_method
class Baseline(Method):
    name = "baseline"
    paper = "none: the plain model (greedy decoding with transformers' generate)"
    equation = "the model's own next-token logits, unedited"
    fidelity = (
        Fidelity(reference="a plain transformers forward of the same inputs (AutoModelForImageTextToText loaded "
                           "anew with SDPA attention; eager where the text config soft-caps its attention logits)",
                 equal="first-token logits, one row and a left-padded batch of two, every family",
                 tolerance="fp32, max abs ≤ 1e-5",
                 test="tests/test_engine.py::test_the_unedited_answer_equals_a_plain_sdpa_forward"),
    )

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        return MethodResult(batch.runner.generate((), max_new_tokens=max_new_tokens))

    def variant_edits(self, num_layers: int) -> tuple:
        return ()  # the unedited row itself (beside other methods' variants in a sweep)

    def choose_variant(self, batch: Batch, unedited_logits) -> VariantChoice:
        return VariantChoice(choice=[UNEDITED] * batch.size)
