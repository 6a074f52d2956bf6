"""The plain model: greedy answer, no edit. ``method=None`` means this."""

from __future__ import annotations

from visfocus.methods.base import Method, MethodResult, register_method
from visfocus.steer.runner import Runner


@register_method
class Baseline(Method):
    name = "baseline"

    def run(self, runner: Runner, *, max_new_tokens: int, num_layers: int) -> MethodResult:
        generation = runner.generate((), max_new_tokens=max_new_tokens)
        return MethodResult(generation, alpha_used=[None] * generation.new_tokens.shape[0])
