"""The per-call steering state the attention function reads: image key columns, the last prompt position, the edits
to apply, the variant columns, the trace recorder and the cost counter. Set with ``steering(state)``; absent means
plain SDPA."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from visfocus.steer.edits import Edit
from visfocus.steer.trace import TraceRecorder


@dataclass
class Cost:
    """Work done by the text decoder: forward passes, and token positions per sequence (prompt vs generated)."""

    forward_passes: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"forward_passes": self.forward_passes, "prefill_tokens": self.prefill_tokens,
                "decode_tokens": self.decode_tokens, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class VariantColumns:
    """k variants of the last prompt token, appended as key columns ``start``..``start + k − 1`` of the forward that
    holds the prompt (``start`` = S): variant j sits at the last prompt token's position, attends to what that token
    attends to (but the token itself) and to itself only, and runs under ``edit_sets[j]``."""

    start: int
    edit_sets: tuple[tuple[Edit, ...], ...]

    @property
    def end(self) -> int:
        """The key length of the forward that holds the variants: S + k."""
        return self.start + len(self.edit_sets)


@dataclass
class SteerState:
    """image_cols: (B, S) bool, True where the prompt holds an image token. last_prompt_pos: S - 1 (left padding
    puts every row's last prompt token in the last column). edited_rows: (B,) bool, the batch rows the edits apply
    to (None: all; a side stream decoded as rows of the same batch is never edited, ``steer.rows``)."""

    image_cols: torch.Tensor
    edits: tuple[Edit, ...] = ()
    recorder: TraceRecorder | None = None
    cost: Cost = field(default_factory=Cost)
    variants: VariantColumns | None = None  # variant columns of the forward that holds the prompt (or none)
    edited_rows: torch.Tensor | None = None

    @property
    def last_prompt_pos(self) -> int:
        return self.image_cols.shape[1] - 1

    def image_cols_for(self, kv_len: int) -> torch.Tensor:
        """(B, kv_len) image-column mask: generated tokens are never image tokens; a shorter cache is cropped."""
        cols = self.image_cols
        if kv_len <= cols.shape[1]:
            return cols[:, :kv_len]
        pad = torch.zeros(cols.shape[0], kv_len - cols.shape[1], dtype=torch.bool, device=cols.device)
        return torch.cat([cols, pad], dim=1)


_ACTIVE: contextvars.ContextVar[SteerState | None] = contextvars.ContextVar("visfocus_steer", default=None)


def active_state() -> SteerState | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def steering(state: SteerState) -> Iterator[SteerState]:
    """Make ``state`` visible to the visfocus attention function for the duration of the block."""
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)
