"""The visfocus attention function: SDPA for every row, then the one row an edit or the trace needs, recomputed
explicitly and spliced in. Registered with transformers' AttentionInterface and AttentionMaskInterface."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from visfocus.steer.context import SteerState, active_state
from visfocus.steer.edits import RowView

ATTN_NAME = "visfocus"


def _target_row(state: SteerState, q_len: int, kv_len: int) -> tuple[int, bool] | None:
    """Index (within this forward's queries) of the row to edit/record, and whether it is a decoding row."""
    first_pos = kv_len - q_len  # absolute position of query row 0
    last = state.last_prompt_pos
    if first_pos <= last < kv_len:
        return last - first_pos, False
    if q_len == 1 and first_pos > last:
        return 0, True
    return None


def _row_mask(attention_mask: torch.Tensor | None, row: int, abs_pos: int, kv_len: int, device) -> torch.Tensor:
    """Additive (B or 1, 1, K) float mask for one query row: 0 where visible, -inf elsewhere."""
    if attention_mask is None:  # causal, no padding
        visible = (torch.arange(kv_len, device=device) <= abs_pos)[None, None, :]  # (1, 1, K)
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask[:, :, row, :kv_len]  # (B, 1, K)
    else:
        return attention_mask[:, :, row, :kv_len].float()  # (B, 1, K) already additive
    return torch.zeros(visible.shape, device=device).masked_fill(~visible, float("-inf"))


def visfocus_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, Q, D), post-RoPE
    key: torch.Tensor,  # (B, Hkv, K, D), post-cache
    value: torch.Tensor,  # (B, Hkv, K, D)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)  # (B, Q, H, D)
    state = active_state()
    if state is None:
        return out, None
    layer = module.layer_idx
    q_len, kv_len = query.shape[2], key.shape[2]
    if layer == 0:
        _count(state, q_len, kv_len)
    target = _target_row(state, q_len, kv_len)
    if target is None:
        return out, None
    row, is_decode = target
    edits = [e for e in state.edits if e.applies_to(layer, is_decode)]
    record = state.recorder is not None and not is_decode
    if not edits and not record:
        return out, None

    B, H, _, D = query.shape
    H_kv = key.shape[1]
    group = H // H_kv
    scale = scaling if scaling is not None else D**-0.5
    # Group the query heads by their KV head instead of repeating K/V (GQA).
    q_row = query[:, :, row, :].reshape(B, H_kv, group, D).float()  # (B, Hkv, g, D)
    scores = torch.matmul(q_row, key.float().transpose(-1, -2)) * scale  # (B, Hkv, g, K)
    scores = scores.reshape(B, H, kv_len)  # (B, H, K)
    mask = _row_mask(attention_mask, row, kv_len - q_len + row, kv_len, query.device)  # (B|1, 1, K)

    probs_pre = torch.softmax(scores + mask, dim=-1)  # (B, H, K)
    probs = probs_pre
    image_cols = state.image_cols_for(kv_len).to(query.device)  # (B, K)
    if any(e.changes_logits for e in edits):
        for edit in edits:
            if edit.changes_logits:
                scores = edit.apply(scores, image_cols)  # (B, H, K)
        probs = torch.softmax(scores + mask, dim=-1)  # (B, H, K)
    if any(e.changes_probs for e in edits):
        view = RowView(layer=layer, row=row, abs_pos=kv_len - q_len + row, is_decode=is_decode,
                       query=query[:, :, row, :].float(), key=key, scale=scale, mask=mask, image_cols=image_cols)
        for edit in edits:
            if edit.changes_probs:
                probs = edit.edit_probs(probs, view)  # (B, H, K)
    if probs is not probs_pre:
        row_out = torch.matmul(probs.reshape(B, H_kv, group, kv_len), value.float())  # (B, Hkv, g, D)
        out[:, row] = row_out.reshape(B, H, D).to(out.dtype)
    if record:
        state.recorder.record(layer, probs_pre, probs)
    return out, None


def _count(state: SteerState, q_len: int, kv_len: int) -> None:
    """Cost accounting at layer 0: one forward pass; its positions split into prompt and generated tokens."""
    first_pos = kv_len - q_len
    prompt_positions = max(0, min(kv_len, state.last_prompt_pos + 1) - first_pos)
    state.cost.forward_passes += 1
    state.cost.prefill_tokens += prompt_positions
    state.cost.decode_tokens += q_len - prompt_positions


def register() -> str:
    """Register the attention and mask functions under ``ATTN_NAME`` (idempotent); returns the name."""
    AttentionInterface.register(ATTN_NAME, visfocus_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME
