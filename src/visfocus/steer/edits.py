"""What a method may change at the ``attention`` site (``visfocus.steer.sites``): an edit of chosen query rows'
pre-softmax attention logits (or post-softmax probabilities) over chosen key columns, in decoder layer ``i``
(``text.layer[i].attn``), scores ``(batch, heads, keys)`` float32 per row.

An edit may also select every prompt row after the image (``rows="post_image_prompt_and_decode"``, ClearSight/VAF):
the engine then recomputes those tens of rows explicitly in one (B, H, R, K) block per layer (see
``visfocus.steer.attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

Rows = Literal["last_prompt", "last_prompt_and_decode", "post_image_prompt_and_decode"]
Keys = Literal["image", "text", "before_image"]
# the row selections that also edit the query row of every decoding step
DECODE_ROWS = ("last_prompt_and_decode", "post_image_prompt_and_decode")


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
    softcap: float | None = None  # the layer's attention-logit soft-capping (``soft_cap``), None: none

    def scores(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The layer's pre-mask attention logits of query (B, H, D) over key (B, Hkv, K, D): q·kᵀ·scale, soft-capped
        where the layer caps. Returns (B, H, K) float32."""
        B, H, D = query.shape
        H_kv = key.shape[1]
        grouped = query.float().reshape(B, H_kv, H // H_kv, D)  # (B, Hkv, g, D)
        logits = torch.matmul(grouped, key.float().transpose(-1, -2)).reshape(B, H, -1) * self.scale  # (B, H, K)
        return soft_cap(logits, self.softcap)


def soft_cap(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Attention-logit soft-capping as transformers' eager attention applies it (Gemma 2): cap · tanh(scores / cap);
    ``softcap`` None: scores unchanged."""
    return scores if softcap is None else torch.tanh(scores / softcap) * softcap


@dataclass(frozen=True)
class Edit:
    """Base edit: selects layers, heads, query rows and key columns; subclasses say what happens to the logits.

    layers: decoder layer indices to edit (None = all).
    heads: query-head indices to edit (None = all).
    rows: "last_prompt" edits only the last prompt token's row (the row that produces the first answer token);
        "last_prompt_and_decode" also edits the query row of every decoding step;
        "post_image_prompt_and_decode" edits, per batch row, every real prompt row after that row's last image token
        (the template text after the image, the question, the last prompt token) and every decoding row. A batch row
        without image tokens is not edited. All those prompt rows must run in one forward (the engine raises
        otherwise): it starts from a stored image prefix only where that ends at the image (a method's
        ``prefix_split = "image"``), and never from a re-run of the last token only.
        Logit edits only (``changes_probs`` edits take the last-row selections).
    keys: which key columns the edit may change: "image" tokens, all other ("text") tokens, or "before_image": the
        columns before the row's first image token (BOS, system prompt, template; left padding is masked anyway;
        none in a row without image tokens).
    """

    layers: frozenset[int] | None = None
    heads: tuple[int, ...] | None = None
    rows: Rows = "last_prompt"
    keys: Keys = "image"

    changes_logits: ClassVar[bool] = True  # ``transform`` edits the pre-softmax logits
    changes_probs: ClassVar[bool] = False  # ``edit_probs`` edits the probabilities after the softmax
    # ``transform`` treats every key column on its own (no reduction over the keys), so several query rows can go
    # through it at once as one (B, H, R·K) block; otherwise ``apply_rows`` edits them one at a time
    columnwise: ClassVar[bool] = False

    def applies_to(self, layer_idx: int, is_decode_row: bool) -> bool:
        if self.layers is not None and layer_idx not in self.layers:
            return False
        return self.rows in DECODE_ROWS or not is_decode_row

    def transform(self, scores: torch.Tensor, key_cols: torch.Tensor) -> torch.Tensor:
        """scores: (B, H, K) scaled logits q·k/√d before the mask; key_cols: (B, 1, K) bool. Returns (B, H, K)."""
        raise NotImplementedError

    def edit_probs(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        """probs: (B, H, K) the row's probabilities after the logit edits. Returns (B, H, K)."""
        return probs

    def key_columns(self, image_cols: torch.Tensor) -> torch.Tensor:
        """(B, K) bool: the key columns ``keys`` selects, from the image columns (B, K)."""
        if self.keys == "image":
            return image_cols
        if self.keys == "before_image":
            has_image = image_cols.any(-1, keepdim=True)  # (B, 1)
            return (image_cols.long().cumsum(-1) == 0) & has_image  # (B, K)
        return ~image_cols

    def apply(self, scores: torch.Tensor, image_cols: torch.Tensor) -> torch.Tensor:
        """Apply to the selected heads and key columns. scores (B, H, K); image_cols (B, K) bool."""
        return self._apply(scores, self.key_columns(image_cols))

    def _apply(self, scores: torch.Tensor, key_cols: torch.Tensor) -> torch.Tensor:
        """scores (B, H, N); key_cols (B, N) bool, the columns ``keys`` selects. Returns (B, H, N)."""
        edited = self.transform(scores, key_cols[:, None, :])  # (B, H, N)
        if self.heads is None:
            return edited
        head_sel = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        head_sel[list(self.heads)] = True
        return torch.where(head_sel[None, :, None], edited, scores)

    def apply_rows(self, scores: torch.Tensor, image_cols: torch.Tensor) -> torch.Tensor:
        """``apply`` on several query rows of one forward: scores (B, H, R, K); image_cols (B, K). Returns
        (B, H, R, K)."""
        B, H, R, K = scores.shape
        if self.columnwise:  # one call on the rows side by side
            key_cols = self.key_columns(image_cols).repeat(1, R)  # (B, R·K)
            return self._apply(scores.reshape(B, H, R * K), key_cols).reshape(B, H, R, K)
        return torch.stack([self.apply(scores[:, :, r], image_cols) for r in range(R)], dim=2)  # (B, H, R, K)


@dataclass(frozen=True)
class ScaleLogits(Edit):
    """Multiply the selected logits by ``alpha`` (a float, or one value per batch row): ScalingVis' edit.

    alpha = 0 gives the selected keys equal logits (uniform attention within them); never NaN, because the
    edit happens before the mask is applied.
    """

    alpha: float | tuple[float, ...] = 1.0

    columnwise: ClassVar[bool] = True

    def transform(self, scores: torch.Tensor, key_cols: torch.Tensor) -> torch.Tensor:
        if isinstance(self.alpha, tuple):
            alpha = torch.tensor(self.alpha, dtype=scores.dtype, device=scores.device)[:, None, None]  # (B, 1, 1)
        else:
            alpha = self.alpha
        return torch.where(key_cols, scores * alpha, scores)  # (B, H, K)
