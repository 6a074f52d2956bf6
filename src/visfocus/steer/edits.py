"""What the engine can change: an edit of one query row's pre-softmax attention logits over chosen key columns.

Naming scheme (TransformerLens-style) for the sites the engine edits and records:
``text.layer[i].attn.last_row`` — the last prompt row's attention in decoder layer ``i``,
scores ``(batch, heads, keys)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

Rows = Literal["last_prompt", "last_prompt_and_decode"]
Keys = Literal["image", "text"]


@dataclass
class RowView:
    """What a probability edit may use about the row being recomputed (one query row per batch row)."""

    layer: int
    row: int  # index of the row among this forward's queries
    abs_pos: int  # its absolute position in the sequence
    is_decode: bool
    query: torch.Tensor  # (B, H, D) float32, post-RoPE
    key: torch.Tensor  # (B, Hkv, K, D), post-RoPE, post-cache
    scale: float
    mask: torch.Tensor  # (B|1, 1, K) additive
    image_cols: torch.Tensor  # (B, K) bool


@dataclass(frozen=True)
class Edit:
    """Base edit: selects layers, heads, query rows and key columns; subclasses say what happens to the logits.

    layers: decoder layer indices to edit (None = all).
    heads: query-head indices to edit (None = all).
    rows: "last_prompt" edits only the last prompt token's row (the row that produces the first answer token);
        "last_prompt_and_decode" also edits the query row of every decoding step.
    keys: which key columns the edit may change: "image" tokens or all other ("text") tokens.
    """

    layers: frozenset[int] | None = None
    heads: tuple[int, ...] | None = None
    rows: Rows = "last_prompt"
    keys: Keys = "image"

    changes_logits: ClassVar[bool] = True  # ``transform`` edits the pre-softmax logits
    changes_probs: ClassVar[bool] = False  # ``edit_probs`` edits the probabilities after the softmax

    def applies_to(self, layer_idx: int, is_decode_row: bool) -> bool:
        if self.layers is not None and layer_idx not in self.layers:
            return False
        return self.rows == "last_prompt_and_decode" or not is_decode_row

    def transform(self, scores: torch.Tensor, key_cols: torch.Tensor) -> torch.Tensor:
        """scores: (B, H, K) scaled logits q·k/√d before the mask; key_cols: (B, 1, K) bool. Returns (B, H, K)."""
        raise NotImplementedError

    def edit_probs(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        """probs: (B, H, K) the row's probabilities after the logit edits. Returns (B, H, K)."""
        return probs

    def apply(self, scores: torch.Tensor, image_cols: torch.Tensor) -> torch.Tensor:
        """Apply to the selected heads and key columns. scores (B, H, K); image_cols (B, K) bool."""
        key_cols = image_cols if self.keys == "image" else ~image_cols  # (B, K)
        edited = self.transform(scores, key_cols[:, None, :])  # (B, H, K)
        if self.heads is None:
            return edited
        head_sel = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        head_sel[list(self.heads)] = True
        return torch.where(head_sel[None, :, None], edited, scores)


@dataclass(frozen=True)
class ScaleLogits(Edit):
    """Multiply the selected logits by ``alpha`` (a float, or one value per batch row): ScalingVis' edit.

    alpha = 0 gives the selected keys equal logits (uniform attention within them); never NaN, because the
    edit happens before the mask is applied.
    """

    alpha: float | tuple[float, ...] = 1.0

    def transform(self, scores: torch.Tensor, key_cols: torch.Tensor) -> torch.Tensor:
        if isinstance(self.alpha, tuple):
            alpha = torch.tensor(self.alpha, dtype=scores.dtype, device=scores.device)[:, None, None]  # (B, 1, 1)
        else:
            alpha = self.alpha
        return torch.where(key_cols, scores * alpha, scores)  # (B, H, K)
