"""The plain model: greedy answer, no edit. ``method=None`` means this."""

from __future__ import annotations

from visfocus.interventions.base import Method, MethodResult, register_method
from visfocus.interventions.batch import Batch


@register_method
class Baseline(Method):
    name = "baseline"

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        return MethodResult(batch.runner.generate((), max_new_tokens=max_new_tokens))
