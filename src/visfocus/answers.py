"""What an answer is: the ``Answer`` of ``VLM.answer``, the ``ContinuationScore`` of ``VLM.score_continuations`` and
the ``Sampling`` settings a caller can ask for — one meaning per field."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from visfocus.errors import VisfocusError
from visfocus.interventions import Method
from visfocus.models.layout import RowLayout
from visfocus.steer.runner import Generation, Runner
from visfocus.steer.trace import Trace


@dataclass
class Answer:
    text: str
    first_token: str
    first_token_logits: torch.Tensor  # (V,) float32, the model's raw logits of the first generated token
    # (V,) float32, the scores the method decoded the first token from: the raw logits for a method that only edits
    # attention, its corrected scores for one that acts at the logits site (VCD, DoLa, DeCo, M3ID, PAI's contrast)
    first_token_scores: torch.Tensor
    confidence: float  # max softmax probability of first_token_scores over the whole vocabulary
    # forward_passes, prefill_tokens, decode_tokens (per sequence), seconds, batch_size, shared_prefix_tokens (the
    # prompt tokens this row took from its image's shared prefix; 0 when prefixes were not shared)
    cost: dict[str, Any]
    layout: RowLayout | None = None
    trace: Trace | None = field(default=None, repr=False)
    # the method's per-sample decisions, as its class declares them (``Method.extras``: alpha used, branch, layer…)
    extras: dict[str, Any] = field(default_factory=dict)
    # the generated token ids, up to and including the end-of-sequence token (what ``text`` decodes, special tokens
    # included)
    tokens: list[int] = field(default_factory=list)
    # with ``answer_batch(..., return_scores=True)``: (T, V) float32, one row per token of ``tokens``, the scores it
    # was chosen from (generate's ``output_scores``): the method's correction and the model's own logits processors
    # and warpers, in the method's order (``Method.processors_after_correction``). Row 0 equals
    # ``first_token_scores`` for a method that acts at the logits site. None when not asked for.
    step_scores: torch.Tensor | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Sampling:
    """Sample the answer instead of decoding greedily (``answer_batch(sampling=...)``): transformers' temperature,
    top-k and top-p warpers on the scores the method decodes from. ``top_k=None`` filters nothing (not transformers'
    default of 50). ``seed``: seeds torch's global generator right before the method runs (None: left as it is).
    Methods that decode their own way refuse it (``Method.supports_sampling``: DoLa is greedy by definition, VCD
    samples with its own ``sample=True``)."""

    temperature: float
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _finite(self.temperature) or self.temperature <= 0:
            raise VisfocusError(f"sampling temperature must be a finite number > 0, got {self.temperature!r}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise VisfocusError(f"sampling top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not _integer(self.top_k) or self.top_k < 1):
            raise VisfocusError(f"sampling top_k must be an integer ≥ 1 or None (no top-k filter), got {self.top_k!r}")
        if self.seed is not None and not _integer(self.seed):
            raise VisfocusError(f"sampling seed must be an integer or None, got {self.seed!r}")

    def generation_settings(self) -> dict[str, Any]:
        """The runner's ``generation_defaults``; top_k=0 is how ``GenerationConfig`` says "no top-k filter"."""
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p),
                "top_k": self.top_k or 0}


@dataclass
class ContinuationScore:
    """How a method rates a given continuation of a prompt (``VLM.score_continuations``), teacher forced."""

    logprob: float  # the sum of token_logprobs (−inf when the method rules a token out, e.g. VCD's cut)
    greedy: bool  # every token is its step's argmax: the method's greedy decoding gives exactly this continuation
    token_logprobs: list[float]  # per token, its log-probability under the method's final scores at that step
    tokens: list[int]  # the continuation's token ids


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sampling_refused(method: Method) -> VisfocusError:
    """The error for sampling under a method that decodes its own way (naming its own sampling switch, if any)."""
    own = "sample" in {f.name for f in dataclasses.fields(method.Params)}
    how = "it samples its own way: give it sample=true (and its seed) instead" if own else "it decodes greedily"
    return VisfocusError(f"method '{method.name}' does not take sampling=...; {how}")


def _sampler(sampling: Sampling | None, keep_step_scores: bool = False) -> Callable[[Runner], None]:
    """Readies a runner for ``sampling`` (None: greedy) and, with ``keep_step_scores``, to keep every step's scores;
    the seed is set last, just before the run."""
    def setup(runner: Runner) -> None:
        runner.keep_step_scores = keep_step_scores
        if sampling is None:
            return
        runner.generation_defaults = sampling.generation_settings()
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
    return setup


def continuation_ids(row: Sequence[int], vocab: int, eos: set[int]) -> list[int]:
    """A continuation's token ids, checked against a vocabulary of ``vocab`` ids and the end-of-sequence ids ``eos``:
    at least one, each in the vocabulary, no end-of-sequence token before the last (decoding would stop there)."""
    if isinstance(row, (str, bytes)) or len(row) == 0:
        raise VisfocusError(f"a continuation must have at least one token, got {row!r}")
    ids = [int(t) if _integer(t) or (isinstance(t, torch.Tensor) and t.numel() == 1) else None for t in row]
    if any(t is None or not 0 <= t < vocab for t in ids):
        raise VisfocusError(f"continuation token ids must be integers in [0, {vocab}), got {list(row)!r}")
    if any(t in eos for t in ids[:-1]):
        raise VisfocusError(f"a continuation holds the end-of-sequence token before its end, where decoding "
                            f"would stop: {ids}")
    return ids


def row_steps_and_scores(generation: Generation, eos: list[int],
                         scores: bool) -> tuple[list[int], list[torch.Tensor | None]]:
    """Per row of ``generation``, its steps up to and including its end of sequence (``eos``: the ids), and, with
    ``scores``, its (T_b, V) step scores (else None)."""
    steps = generation.row_steps(eos)
    if not scores:
        return steps, [None] * len(steps)
    if not generation.step_scores:
        raise RuntimeError("the generation kept no step scores although they were asked for")
    stacked = torch.stack(generation.step_scores, dim=1).cpu()  # (B, T, V)
    return steps, [stacked[b, :steps[b]] for b in range(len(steps))]  # (T_b, V) each
