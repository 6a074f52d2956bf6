"""Teacher forcing under a method: ``generate`` takes given continuation tokens instead of its own choices, and each
step records how the method's final scores rate the forced token (its log-probability, and whether it is the argmax,
i.e. the token greedy decoding would have taken). ``Runner.force(tokens)`` switches a runner to this mode; its
``generate`` then appends the ``ForcedContinuation`` last to the logits processors, after the method's own (DoLa's and
VCD's contrasts, repetition penalties), so it sees exactly the scores the method decodes from. A method runs as it
always does: edits, prefixes and side streams are untouched; only the token fed back at each step is the forced one."""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor


def eos_token_ids(generation_config) -> list[int]:
    """The end-of-sequence ids ``generate`` stops a row at (none when the model sets none)."""
    eos = generation_config.eos_token_id
    if eos is None:
        return []
    return [int(t) for t in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


class ForcedContinuation(LogitsProcessor):
    """Forces ``tokens[b]`` on batch row b, one token per decoding step, and records the row's steps.

    tokens: per row, the continuation's token ids (at least one each). end_token: what a row takes after its
    continuation ends (the end-of-sequence id, so that ``generate`` finishes it); those steps are not recorded.
    ``start(prompt_len)`` resets the record; ``Runner.generate`` calls it, so a method that generates more than once
    leaves the record of its last call. The processor returns −inf for every token but the forced one, which gets 0
    (finite even where the method ruled the token out), so greedy decoding and sampling alike take it.
    """

    def __init__(self, tokens: list[list[int]], end_token: int) -> None:
        if not tokens or any(len(row) == 0 for row in tokens):
            raise ValueError("every row needs at least one continuation token")
        self.tokens = [list(row) for row in tokens]
        self.end_token = end_token
        self.start(0)

    @property
    def length(self) -> int:
        """Decoding steps that cover every row's continuation (the longest one)."""
        return max(len(row) for row in self.tokens)

    def start(self, prompt_len: int) -> None:
        """A new ``generate`` call over a prompt of ``prompt_len`` columns: forget what earlier calls recorded."""
        self.prompt_len = prompt_len
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: (B,) log-probabilities, (B,) argmax hits

    def _targets(self, step: int, device: torch.device) -> torch.Tensor:
        """(B,) the token each row is forced to at ``step``."""
        return torch.tensor([row[step] if step < len(row) else self.end_token for row in self.tokens], device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len  # tokens generated so far
        target = self._targets(step, scores.device)[:, None]  # (B, 1)
        log_probs = torch.log_softmax(scores.float(), dim=-1).gather(-1, target)[:, 0]  # (B,)
        hits = scores.argmax(-1) == target[:, 0]  # (B,) ties go to the lowest id, as in greedy decoding
        if step < self.length:
            self.steps.append((log_probs.cpu(), hits.cpu()))
        return torch.full_like(scores, -math.inf).scatter_(-1, target, 0.0)  # (B, V)

    def token_logprobs(self) -> list[list[float]]:
        """Per row, the log-probability of each continuation token under the scores of the last ``generate``."""
        self._check_complete()
        return [[float(self.steps[i][0][b]) for i in range(len(row))] for b, row in enumerate(self.tokens)]

    def greedy(self) -> list[bool]:
        """Per row: every continuation token was the argmax of its step's scores."""
        self._check_complete()
        return [all(bool(self.steps[i][1][b]) for i in range(len(row))) for b, row in enumerate(self.tokens)]

    def _check_complete(self) -> None:
        if len(self.steps) < self.length:
            raise RuntimeError(f"the method decoded {len(self.steps)} of the {self.length} forced tokens; it must "
                               f"generate max_new_tokens tokens for its continuations to be scored")
