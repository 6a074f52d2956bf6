"""What the engine returns: a generation (its tokens, logits and scores) and an unedited prompt prefill."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generation:
    new_tokens: torch.Tensor  # (B, T) generated ids (pad after EOS)
    first_logits: torch.Tensor  # (B, V) float32, the model's raw (unprocessed) logits of the first generated token
    # (B, V) float32, the scores the first token was decoded from: the raw logits when the method passed no logits
    # processor, else its processed scores (its correction, −inf where it rules a token out)
    first_scores: torch.Tensor | None = None
    step_logits: tuple[torch.Tensor, ...] = ()  # raw logits of every step, (B, V) each, as generate returned them
    # the scores every step's token was chosen from, (B, V) float32 each (after the method's processors and the
    # model's own): kept when the runner's ``keep_step_scores`` is set, else ()
    step_scores: tuple[torch.Tensor, ...] = ()

    def __post_init__(self) -> None:
        if self.first_scores is None:
            self.first_scores = self.first_logits

    def row_steps(self, eos: list[int]) -> list[int]:
        """Per row, its decoding steps: up to and including its first end-of-sequence token (``eos``: their ids)."""
        ended = torch.isin(self.new_tokens, torch.tensor(eos, device=self.new_tokens.device)) if eos else \
            torch.zeros_like(self.new_tokens, dtype=torch.bool)  # (B, T)
        return [int(row.nonzero()[0]) + 1 if row.any() else self.new_tokens.shape[1] for row in ended]


@dataclass
class Prefix:
    """The unedited prompt prefill: its cache (all S positions) and the first-token logits it gives."""

    cache: object  # transformers Cache
    first_logits: torch.Tensor  # (B, V) float32
    trace: object = None  # a Trace of this pass when asked for (``prefill(trace=True)``)
