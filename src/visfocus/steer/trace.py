"""Recording where the model looks: the last prompt row's attention probabilities per layer and head, at O(S) memory.

Sites (shapes for a batch of B rows, H query heads, S prompt positions):
- ``text.layer[i].attn.last_row``      post-edit probabilities, ``Trace.last_row[i]`` (B, H, S) float32
- ``text.layer[i].attn.last_row_pre``  the same row before any edit, ``Trace.last_row_pre[i]`` (B, H, S) float32
- ``text.layer[i].attn.image_share``   ``Trace.image_share()[i]`` (B,): head-mean probability mass on image keys
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class TraceRecorder:
    """Collects one (B, H, S) row per decoder layer; a later forward over the same row overwrites the earlier one
    (a re-run of the last prompt token under an edit replaces the unedited row)."""

    def __init__(self) -> None:
        self.pre: dict[int, torch.Tensor] = {}
        self.post: dict[int, torch.Tensor] = {}

    def record(self, layer_idx: int, probs_pre: torch.Tensor, probs_post: torch.Tensor) -> None:
        self.pre[layer_idx] = probs_pre.detach().float().cpu()  # (B, H, S)
        same = probs_post is probs_pre  # no edit in this layer: keep one copy
        self.post[layer_idx] = self.pre[layer_idx] if same else probs_post.detach().float().cpu()  # (B, H, S)

    def finish(self, image_cols: torch.Tensor, attention_mask: torch.Tensor, layouts: list[Any],
               special_cols: torch.Tensor | None = None) -> Trace:
        if not self.post:
            raise RuntimeError("no attention was recorded: is the model loaded with the visfocus attention function?")
        layers = sorted(self.post)
        return Trace(
            last_row=torch.stack([self.post[i] for i in layers]),  # (L, B, H, S)
            last_row_pre=torch.stack([self.pre[i] for i in layers]),  # (L, B, H, S)
            image_cols=image_cols.detach().cpu(),
            attention_mask=attention_mask.detach().cpu().bool(),
            layouts=layouts,
            special_cols=special_cols.detach().cpu().bool() if special_cols is not None else None,
        )


@dataclass
class Trace:
    """What one call recorded. ``layouts[b]`` is the image layout of batch row b (see ``visfocus.models.layout``)."""

    last_row: torch.Tensor  # (L, B, H, S) float32, post-edit
    last_row_pre: torch.Tensor  # (L, B, H, S) float32, pre-edit
    image_cols: torch.Tensor  # (B, S) bool
    attention_mask: torch.Tensor  # (B, S) bool, False on left padding
    layouts: list[Any] = field(default_factory=list)
    special_cols: torch.Tensor | None = None  # (B, S) bool: chat-template and vision-boundary special tokens

    @property
    def num_layers(self) -> int:
        return self.last_row.shape[0]

    def image_share(self, pre: bool = False) -> torch.Tensor:
        """(L, B): probability mass of the last prompt row on image keys, averaged over heads."""
        probs = self.last_row_pre if pre else self.last_row  # (L, B, H, S)
        return (probs * self.image_cols[None, :, None, :]).sum(-1).mean(-1)

    def shares(self, pre: bool = False) -> torch.Tensor:
        """(L, B, 3): head-mean probability mass of the last prompt row on image, text and special-token keys
        (``text.layer[i].attn.image_share`` is ``[..., 0]``); the three sum to 1."""
        probs = (self.last_row_pre if pre else self.last_row).mean(2)  # (L, B, S)
        special = self.special_cols if self.special_cols is not None else torch.zeros_like(self.image_cols)
        special = special & ~self.image_cols
        text = self.attention_mask & ~self.image_cols & ~special
        return torch.stack([(probs * m[None]).sum(-1) for m in (self.image_cols, text, special)], dim=-1)

    def row(self, b: int) -> Trace:
        """Batch row ``b`` alone, left padding removed."""
        keep = self.attention_mask[b]  # (S,)
        return Trace(
            last_row=self.last_row[:, b : b + 1, :, keep],
            last_row_pre=self.last_row_pre[:, b : b + 1, :, keep],
            image_cols=self.image_cols[b : b + 1, keep],
            attention_mask=self.attention_mask[b : b + 1, keep],
            layouts=[self.layouts[b]] if self.layouts else [],
            special_cols=self.special_cols[b : b + 1, keep] if self.special_cols is not None else None,
        )

    def image_map(self, layer: int, b: int = 0, image: int = 0, view: int = 0, pre: bool = False) -> np.ndarray:
        """(rows, cols) head-averaged attention of layer ``layer`` over one image view's token grid."""
        probs = (self.last_row_pre if pre else self.last_row)[layer, b].mean(0)  # (S,)
        v = self.layouts[b].view(image, view)  # a VisfocusError where the image tokens have no grid
        pad = int(self.attention_mask[b].long().cumsum(0).eq(0).sum())  # columns count from the first real token
        cols = torch.as_tensor(v.columns) + pad
        return probs[cols].reshape(v.rows, v.cols).numpy()
