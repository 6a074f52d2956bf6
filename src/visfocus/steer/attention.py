"""The visfocus attention function: SDPA for every row, then the one row an edit or the trace needs, recomputed
explicitly and spliced in. Registered with transformers' AttentionInterface and AttentionMaskInterface.

Edits on ``rows="post_image_prompt_and_decode"`` also need, in the forward that holds the prompt, every prompt row
after the image: per batch row b, the real (unmasked) rows after its last image column. Their span is found from the
image columns and the mask of each batch row, so left padding (and any layout) is exact; the rows between the first
such row over the batch and the last prompt row are recomputed as one (B, H, R, K) block (R: tens of rows) and only
the selected (b, row) pairs are spliced in. The last prompt row and the decoding rows take the one-row path below.

Attention-logit soft-capping (Gemma 2's ``softcap``: logits → cap · tanh(logits / cap), before the mask) is applied
wherever scores are computed: SDPA cannot cap, so a layer called with ``softcap`` computes every row as transformers'
eager attention does, and the recomputed rows cap their scores before any edit."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from visfocus.errors import VisfocusError
from visfocus.steer.context import SteerState, VariantColumns, active_state
from visfocus.steer.edits import Edit, RowView, soft_cap

ATTN_NAME = "visfocus"
POST_IMAGE = "post_image_prompt_and_decode"


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


def _rows_mask(attention_mask: torch.Tensor | None, start: int, stop: int, first_pos: int, kv_len: int,
               device) -> torch.Tensor:
    """Additive (B or 1, 1, R, K) float mask for query rows start..stop-1 of this forward: 0 visible, -inf not."""
    if attention_mask is None:  # causal, no padding
        positions = torch.arange(first_pos + start, first_pos + stop, device=device)  # (R,)
        visible = (torch.arange(kv_len, device=device)[None, :] <= positions[:, None])[None, None]  # (1, 1, R, K)
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask[:, :, start:stop, :kv_len]  # (B, 1, R, K)
    else:
        return attention_mask[:, :, start:stop, :kv_len].float()  # (B, 1, R, K) already additive
    return torch.zeros(visible.shape, device=device).masked_fill(~visible, float("-inf"))


def _real_rows(attention_mask: torch.Tensor | None, start: int, stop: int, first_pos: int, batch: int,
               device) -> torch.Tensor:
    """(B, R) bool: which query rows start..stop-1 are real tokens. A padding row cannot see its own column (the
    mask's diagonal); without a mask every row is real."""
    if attention_mask is None:
        return torch.ones(batch, stop - start, dtype=torch.bool, device=device)
    rows = torch.arange(start, stop, device=attention_mask.device)  # (R,)
    diagonal = attention_mask[:, 0, rows, first_pos + rows]  # (B|1, R)
    visible = diagonal if diagonal.dtype == torch.bool else diagonal == 0
    return visible.expand(batch, -1).to(device)


def _image_end(image_cols: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) the last image column of each batch row (-1 when it has none), and (B,) whether it has one."""
    has_image = image_cols.any(-1)  # (B,)
    last = image_cols.shape[1] - 1 - image_cols.flip(-1).long().argmax(-1)  # (B,)
    return torch.where(has_image, last, -1).to(device), has_image.to(device)


def _post_image_rows(state: SteerState, edits: list[Edit], query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None, scale: float, softcap: float | None,
                     out: torch.Tensor) -> None:
    """Recompute, under ``edits`` (all on rows="post_image_prompt_and_decode"), every prompt row of this forward
    after each batch row's image but the last prompt row (the one-row path edits that one), and splice the
    selected rows into ``out`` (B, Q, H, D) in place."""
    for edit in edits:
        if edit.changes_probs:
            raise VisfocusError(f"{type(edit).__name__} edits probabilities, which only rows='last_prompt' or "
                                f"'last_prompt_and_decode' support, not rows='{POST_IMAGE}'")
    B, H, q_len, D = query.shape
    kv_len, H_kv = key.shape[2], key.shape[1]
    first_pos, last = kv_len - q_len, state.last_prompt_pos
    end, has_image = _image_end(state.image_cols, query.device)  # (B,) last image column per batch row, (B,)
    if not has_image.any():
        return
    starts = end + 1  # (B,) first post-image position per batch row
    if bool((has_image & (starts < first_pos)).any()):
        raise VisfocusError(f"an edit on rows='{POST_IMAGE}' needs every prompt row after the image in one forward, "
                            f"but this forward starts at position {first_pos}, after the image ends at "
                            f"{int(end[has_image].min())} (a stored image prefix or a re-run of the last prompt "
                            "token only); run it without prefix sharing or prefix reuse")
    start = int(starts[has_image].min()) - first_pos  # first row (within this forward's queries) to recompute
    stop = min(last, kv_len) - first_pos  # the last prompt row is not part of the block
    if stop <= start:
        return
    positions = torch.arange(first_pos + start, first_pos + stop, device=query.device)  # (R,) absolute
    selected = has_image[:, None] & (positions[None, :] > end[:, None])  # (B, R)
    selected &= _real_rows(attention_mask, start, stop, first_pos, B, query.device)
    if state.edited_rows is not None:
        selected &= state.edited_rows.to(query.device)[:, None]
    R, group = stop - start, H // H_kv
    # Group the query heads by their KV head instead of repeating K/V (GQA).
    q_rows = query[:, :, start:stop, :].float().reshape(B, H_kv, group * R, D)  # (B, Hkv, g·R, D)
    scores = (torch.matmul(q_rows, key.float().transpose(-1, -2)) * scale).reshape(B, H, R, kv_len)  # (B, H, R, K)
    scores = soft_cap(scores, softcap)  # (B, H, R, K)
    image_cols = state.image_cols_for(kv_len).to(query.device)  # (B, K)
    for edit in edits:
        scores = edit.apply_rows(scores, image_cols)  # (B, H, R, K)
    mask = _rows_mask(attention_mask, start, stop, first_pos, kv_len, query.device)  # (B|1, 1, R, K)
    probs = torch.softmax(scores + mask, dim=-1).reshape(B, H_kv, group * R, kv_len)  # (B, Hkv, g·R, K)
    rows_out = torch.matmul(probs, value.float()).reshape(B, H, R, D).transpose(1, 2)  # (B, R, H, D)
    out[:, start:stop] = torch.where(selected[:, :, None, None], rows_out.to(out.dtype), out[:, start:stop])


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
    softcap = kwargs.pop("softcap", None)
    if softcap is None:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                        **kwargs)  # (B, Q, H, D)
    else:
        out = _softcapped_attention(query, key, value, attention_mask, scaling, softcap)  # (B, Q, H, D)
    state = active_state()
    if state is None:
        return out, None
    layer = module.layer_idx
    q_len, kv_len = query.shape[2], key.shape[2]
    if layer == 0:
        _count(state, q_len, kv_len)
    post_image = [e for e in state.edits if e.rows == POST_IMAGE and e.applies_to(layer, False)]
    if post_image and kv_len - q_len <= state.last_prompt_pos:  # this forward holds prompt rows
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        _post_image_rows(state, post_image, query, key, value, attention_mask, scale, softcap, out)
    variants = state.variants
    if variants is not None and kv_len == variants.end and kv_len - q_len < variants.start:  # holds the columns
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        _variant_rows(state, variants, layer, query, key, value, attention_mask, scale, softcap, out)
    target = _target_row(state, q_len, kv_len)
    if target is None:
        return out, None
    row, is_decode = target
    edits = [e for e in state.edits if e.applies_to(layer, is_decode)]
    record = state.recorder is not None and not is_decode
    if not edits and not record:
        return out, None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    abs_pos = kv_len - q_len + row
    mask = _row_mask(attention_mask, row, abs_pos, kv_len, query.device)  # (B|1, 1, K)
    row_out, probs_pre, probs = _edited_row(state, edits, layer, row, abs_pos, is_decode, query, key, value, mask,
                                            scale, softcap)
    if row_out is not None:
        row_out = row_out.to(out.dtype)  # (B, H, D)
        if state.edited_rows is not None:  # rows of a side stream keep their unedited output
            row_out = torch.where(state.edited_rows.to(out.device)[:, None, None], row_out, out[:, row])
        out[:, row] = row_out
    if record:
        state.recorder.record(layer, probs_pre, probs)
    return out, None


def _edited_row(state: SteerState, edits: list[Edit], layer: int, row: int, abs_pos: int, is_decode: bool,
                query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float,
                softcap: float | None, *, always: bool = False
                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Query row ``row`` of this forward (at key column ``abs_pos``) under ``edits``, over the additive ``mask``
    (B|1, 1, K): its output (B, H, D) float32 (None when no edit changed it, unless ``always``), and its
    probabilities before and after the edits, (B, H, K) each."""
    B, H, _, D = query.shape
    kv_len, H_kv = key.shape[2], key.shape[1]
    group = H // H_kv
    # Group the query heads by their KV head instead of repeating K/V (GQA).
    q_row = query[:, :, row, :].reshape(B, H_kv, group, D).float()  # (B, Hkv, g, D)
    scores = torch.matmul(q_row, key.float().transpose(-1, -2)) * scale  # (B, Hkv, g, K)
    scores = soft_cap(scores.reshape(B, H, kv_len), softcap)  # (B, H, K)

    probs_pre = torch.softmax(scores + mask, dim=-1)  # (B, H, K)
    probs = probs_pre
    image_cols = state.image_cols_for(kv_len).to(query.device)  # (B, K)
    if any(e.changes_logits for e in edits):
        for edit in edits:
            if edit.changes_logits:
                edited = edit.apply(scores, image_cols)  # (B, H, K)
                if edit.rows == POST_IMAGE:  # only the batch rows that have an image before this row
                    end, has_image = _image_end(state.image_cols, query.device)  # (B,), (B,)
                    after = has_image & (end < abs_pos)  # (B,)
                    edited = torch.where(after[:, None, None], edited, scores)
                scores = edited
        probs = torch.softmax(scores + mask, dim=-1)  # (B, H, K)
    if any(e.changes_probs for e in edits):
        view = RowView(layer=layer, row=row, abs_pos=abs_pos, is_decode=is_decode,
                       query=query[:, :, row, :].float(), key=key, scale=scale, mask=mask, image_cols=image_cols,
                       softcap=softcap)
        for edit in edits:
            if edit.changes_probs:
                probs = edit.edit_probs(probs, view)  # (B, H, K)
    if probs is probs_pre and not always:
        return None, probs_pre, probs
    row_out = torch.matmul(probs.reshape(B, H_kv, group, kv_len), value.float())  # (B, Hkv, g, D)
    return row_out.reshape(B, H, D), probs_pre, probs


def _variant_rows(state: SteerState, variants: VariantColumns, layer: int, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor, attention_mask: torch.Tensor | None, scale: float, softcap: float | None,
                  out: torch.Tensor) -> None:
    """The variant columns (``VariantColumns``) of a forward that holds them and the last prompt row: variant j
    re-runs the last prompt token at its position under its own edits, attending to what the last prompt row attends
    to (the model's own mask: causal, sliding window, padding) but that row itself, and to itself. Each row is
    computed explicitly and spliced into ``out`` (B, Q, H, D) in place (SDPA gave it the causal mask)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    first_pos, last = kv_len - q_len, variants.start - 1
    base = _row_mask(attention_mask, last - first_pos, last, kv_len, query.device)  # (B|1, 1, K): the last row's
    base = base.clone()
    base[..., last:] = float("-inf")  # not the original last row, not the other variants
    for j, edits in enumerate(variants.edit_sets):
        column = variants.start + j
        mask = base.clone()
        mask[..., column] = 0.0  # itself
        here = [e for e in edits if e.applies_to(layer, False)]
        row_out, _, _ = _edited_row(state, here, layer, column - first_pos, column, False, query, key, value, mask,
                                    scale, softcap, always=True)
        out[:, column - first_pos] = row_out.to(out.dtype)


def _softcapped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None, softcap: float) -> torch.Tensor:
    """Every row as transformers' eager attention with ``softcap`` computes it (Gemma 2's ``eager_attention_forward``):
    q·kᵀ·scale capped, the mask added (masked: the dtype's minimum, so a fully masked padding row stays finite),
    softmax in float32 cast back, times V. A missing mask means causal, as eager's mask is. Returns (B, Q, H, D)."""
    B, H, q_len, D = query.shape
    kv_len, H_kv = key.shape[2], key.shape[1]
    group = H // H_kv
    scale = scaling if scaling is not None else D**-0.5
    # Group the query heads by their KV head instead of repeating K/V (GQA).
    grouped = query.reshape(B, H_kv, group * q_len, D)  # (B, Hkv, g·Q, D)
    scores = (torch.matmul(grouped, key.transpose(-1, -2)) * scale).reshape(B, H, q_len, kv_len)  # (B, H, Q, K)
    scores = soft_cap(scores, softcap)
    if attention_mask is None:  # causal, no padding
        positions = torch.arange(kv_len - q_len, kv_len, device=query.device)  # (Q,)
        attention_mask = torch.arange(kv_len, device=query.device)[None, :] <= positions[:, None]  # (Q, K)
        attention_mask = attention_mask[None, None]  # (1, 1, Q, K)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :kv_len], torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[..., :kv_len]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (B, H, Q, K)
    out = torch.matmul(probs.reshape(B, H_kv, group * q_len, kv_len), value)  # (B, Hkv, g·Q, D)
    return out.reshape(B, H, q_len, D).transpose(1, 2).contiguous()  # (B, Q, H, D)


def _count(state: SteerState, q_len: int, kv_len: int) -> None:
    """Cost accounting at layer 0: one forward pass; its positions split into prompt and generated tokens."""
    first_pos = kv_len - q_len
    prompt_positions = max(0, min(kv_len, state.last_prompt_pos + 1) - first_pos)
    if state.variants is not None and kv_len == state.variants.end:  # the variant rows re-run the last prompt token
        prompt_positions += len(state.variants.edit_sets)
    state.cost.forward_passes += 1
    state.cost.prefill_tokens += prompt_positions
    state.cost.decode_tokens += q_len - prompt_positions


def register() -> str:
    """Register the attention and mask functions under ``ATTN_NAME`` (idempotent); returns the name."""
    AttentionInterface.register(ATTN_NAME, visfocus_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME
