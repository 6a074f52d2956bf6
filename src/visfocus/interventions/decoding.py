"""Decoding pieces the contrastive methods share (VCD, DoLa, DeCo, M3ID, PAI's contrast, CLVS's stop rule), written
once: the plausibility cut, the choice of a layer per row, early-exit logits and top-k entropy. No method module
imports another; they import this.

Where the model's own logits processors (its generation config's and the caller's: repetition penalty, no-repeat
n-gram, min length / min new tokens, bad words, suppressed tokens, then the sampling warpers) run is one declaration
per method, ``Method.processors_after_correction``: after the correction (the default; the official code of VCD,
DoLa, DeCo and M3ID) or before it, where transformers runs a processor passed to ``generate`` (PAI's official code).
The engine applies it to the very list ``generate`` builds (``visfocus.steer.processors``), so a method passes only
its correction and never rebuilds a penalty or a warper itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from visfocus.interventions.base import Fidelity


def plausibility_cut(scores: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, V) ``scores`` with −inf where ``reference`` < max ``reference`` + log β: the adaptive plausibility
    constraint (on logits: p(v) < β·max p(v); on log-probabilities the same). reference: (B, V)."""
    cutoff = reference.max(dim=-1, keepdim=True).values + math.log(beta)  # (B, 1)
    return scores.masked_fill(reference < cutoff, float("-inf"))


@dataclass
class LayerChoice:
    """Per batch row, the chosen layer, its score and the (B, V) tensor the evaluation kept for it."""

    layers: list[int]
    scores: torch.Tensor  # (B,)
    kept: torch.Tensor  # (B, V)


def choose_layer(candidates: dict[int, torch.Tensor],
                 evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 initial: torch.Tensor) -> LayerChoice:
    """The best layer per row over ``candidates`` {layer: (B, V) logits}, in their order: ``evaluate(logits)`` gives
    (kept (B, V), score (B,)); a strictly higher score wins, so ties keep the earlier layer. ``initial``: (B, V) what
    is kept before any layer wins. One candidate at a time: the extra memory is a few (B, V) tensors."""
    rows = initial.shape[0]
    best_score = torch.full((rows,), -math.inf, device=initial.device)  # (B,)
    best_layer = torch.zeros(rows, dtype=torch.long)  # (B,)
    best_kept = initial
    for layer, logits in candidates.items():
        kept, score = evaluate(logits)  # (B, V), (B,)
        better = score > best_score  # (B,)
        best_score = torch.where(better, score, best_score)
        best_layer = torch.where(better.cpu(), torch.tensor(layer), best_layer)
        best_kept = torch.where(better[:, None], kept, best_kept)  # (B, V)
    return LayerChoice(best_layer.tolist(), best_score, best_kept)


def early_exit_logits(adapter, hidden: torch.Tensor, final_norm: bool) -> torch.Tensor:
    """lm_head(h), or lm_head(norm(h)) with ``final_norm``: a premature layer's logits, (..., V) from (..., D)."""
    return adapter.lm_head(adapter.final_norm(hidden) if final_norm else hidden)


def normalized_top10_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) → (B,) entropy of the softmax over the 10 largest logits, divided by log 10 (in [0, 1])."""
    top = torch.softmax(logits.float().topk(10, dim=-1).values, dim=-1)  # (B, 10)
    return -(top * top.clamp_min(1e-12).log()).sum(-1) / math.log(10)


def survey_top10_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) → (...) the survey repository's form: −Σ p·log(p + 1e-12) / log 10 over p = softmax(top-10)."""
    top = torch.softmax(logits.float().topk(10, dim=-1).values, dim=-1)  # (..., 10)
    return -(top * (top + 1e-12).log()).sum(-1) / math.log(10)


def processor_order_fidelity(reference: str, warpers: bool = True) -> Fidelity:
    """The Fidelity entry of a correcting method's processor order (``Method.processors_after_correction``): its
    whole decode under each of the model's processors (and the sampling warpers, for a method that samples) equals
    an independent reference in ``reference``'s order."""
    return Fidelity(reference=reference,
                    equal="the tokens and every step's scores of a 4-step decode of a left-padded batch, with each of "
                          "repetition penalty, no-repeat n-gram, min new tokens, bad words, suppressed tokens"
                          + (" and the sampling warpers" if warpers else "") + " set, on LLaVA and Qwen2-VL",
                    tolerance="fp32, max abs ≤ 1e-4; the −inf set and the tokens exact",
                    test="tests/test_processor_order.py::test_the_models_processors_run_in_the_official_order")
