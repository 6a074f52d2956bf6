"""An eager attention reference written independently of the engine: explicit q·kᵀ with repeated KV heads, the
last prompt row's image logits scaled by α, additive mask, softmax, and the probabilities of that row recorded."""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AutoModelForImageTextToText
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "visfocus_test_eager"
SETTINGS: dict = {"alpha": 1.0, "image_cols": None, "last_pos": None, "rows": {}, "rows_pre": {}}


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)  # (B, H, K, D)
    value = value.repeat_interleave(n_rep, dim=1)  # (B, H, K, D)
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling  # (B, H, Q, K)
    row = SETTINGS["last_pos"] - (kv_len - q_len)
    if 0 <= row < q_len:
        unedited = logits[:, :, row, :].clone()  # (B, H, K)
        if attention_mask is not None:
            unedited = unedited + attention_mask[:, :, row, :kv_len].float()
        SETTINGS["rows_pre"][module.layer_idx] = torch.softmax(unedited, dim=-1)
        image = SETTINGS["image_cols"][:, :kv_len][:, None, :]  # (B, 1, K)
        logits[:, :, row, :] = torch.where(image, logits[:, :, row, :] * SETTINGS["alpha"], logits[:, :, row, :])
    if attention_mask is not None:
        logits = logits + attention_mask[:, :, :, :kv_len].float()
    else:
        causal = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
        logits = logits.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, H, Q, K)
    if 0 <= row < q_len:
        SETTINGS["rows"][module.layer_idx] = probs[:, :, row, :].clone()
    out = torch.matmul(probs, value.float()).to(query.dtype)  # (B, H, Q, D)
    return out.transpose(1, 2).contiguous(), probs


def load_reference(path) -> torch.nn.Module:
    AttentionInterface.register(NAME, reference_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation={"": "sdpa", "text_config": NAME, "vision_config": "sdpa"})
    return model.eval()


@torch.no_grad()
def reference_last_logits(model, inputs: dict, position_ids, image_cols, alpha: float) -> torch.Tensor:
    """(B, V) last-position logits of a full eager prefill with the last row's image logits scaled by alpha."""
    SETTINGS.update(alpha=alpha, image_cols=image_cols, last_pos=image_cols.shape[1] - 1, rows={}, rows_pre={})
    kwargs = dict(inputs)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return model(**kwargs).logits[:, -1].float()
