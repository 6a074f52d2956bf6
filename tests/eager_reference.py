"""An eager attention reference written independently of the engine: explicit q·kᵀ with repeated KV heads (soft-capped
where the layer passes ``softcap``), the last prompt row's image logits scaled by α, additive mask, softmax, and the
probabilities of that row recorded.

``reference_scaled_logits`` instead scales chosen rows × chosen columns: SETTINGS["scale"] holds, per batch row, which
prompt rows to edit, whether to edit the rows after the prompt (decoding rows, fed here in the same forward), one
factor per prompt key column (1 = untouched) and the layers to edit."""

from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface, AutoModelForImageTextToText
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from visfocus.testing.fixtures import FIXTURES

NAME = "visfocus_test_eager"
SETTINGS: dict = {"alpha": 1.0, "image_cols": None, "last_pos": None, "rows": {}, "rows_pre": {}, "scale": None}


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                        **kwargs):
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)  # (B, H, K, D)
    value = value.repeat_interleave(n_rep, dim=1)  # (B, H, K, D)
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling  # (B, H, Q, K)
    if softcap is not None:  # Gemma 2's attention-logit soft-capping, before the mask as its eager attention does
        logits = torch.tanh(logits / softcap) * softcap
    row = SETTINGS["last_pos"] - (kv_len - q_len)
    if 0 <= row < q_len:
        unedited = logits[:, :, row, :].clone()  # (B, H, K)
        if attention_mask is not None:
            unedited = unedited + attention_mask[:, :, row, :kv_len].float()
        SETTINGS["rows_pre"][module.layer_idx] = torch.softmax(unedited, dim=-1)
        image = SETTINGS["image_cols"][:, :kv_len][:, None, :]  # (B, 1, K)
        logits[:, :, row, :] = torch.where(image, logits[:, :, row, :] * SETTINGS["alpha"], logits[:, :, row, :])
    scale = SETTINGS.get("scale")
    if scale is not None and (scale["layers"] is None or module.layer_idx in scale["layers"]):
        logits = _scale_rows_and_columns(logits, scale, kv_len - q_len)
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


def _scale_rows_and_columns(logits: torch.Tensor, scale: dict, first_pos: int) -> torch.Tensor:
    """logits (B, H, Q, K) raw q·k·scale; query row q sits at absolute position first_pos + q. Rows chosen by
    scale["rows"] (B, S) (positions ≥ S: by scale["decode"]) get their logits times scale["factors"] (B, S) per key
    column (columns ≥ S: times 1)."""
    B, _, Q, K = logits.shape
    rows, factors = scale["rows"], scale["factors"].float()
    S = rows.shape[1]
    chosen = torch.zeros(B, Q, dtype=torch.bool)
    for q in range(Q):
        position = first_pos + q
        chosen[:, q] = rows[:, position] if position < S else scale["decode"]
    columns = torch.ones(B, K)
    columns[:, :min(S, K)] = factors[:, :K]
    multiplied = logits * columns[:, None, None, :]
    return torch.where(chosen[:, None, :, None], multiplied, logits)


def load_reference(path) -> torch.nn.Module:
    AttentionInterface.register(NAME, reference_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation={"": "sdpa", "text_config": NAME, "vision_config": "sdpa"})
    return model.eval()


@torch.no_grad()
def reference_last_logits(model, inputs: dict, position_ids, image_cols, alpha: float) -> torch.Tensor:
    """(B, V) last-position logits of a full eager prefill with the last row's image logits scaled by alpha."""
    SETTINGS.update(alpha=alpha, image_cols=image_cols, last_pos=image_cols.shape[1] - 1, rows={}, rows_pre={},
                    scale=None)
    kwargs = dict(inputs)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return model(**kwargs).logits[:, -1].float()


@torch.no_grad()
def reference_scaled_logits(model, inputs: dict, position_ids, image_cols, *, rows: torch.Tensor,
                            factors: torch.Tensor, decode: bool, layers=None) -> torch.Tensor:
    """(B, S', V) logits of every position of a full eager forward over ``inputs`` (S' columns: the prompt, or the
    prompt and fed continuation tokens), with the chosen rows' logits scaled per key column in ``layers`` (None:
    all). rows, factors: (B, S) over the prompt's S positions; decode: also scale every row at a position ≥ S."""
    width = inputs["input_ids"].shape[1]
    padded = torch.zeros(image_cols.shape[0], width, dtype=torch.bool)  # fed continuation tokens are no image
    padded[:, :image_cols.shape[1]] = image_cols
    SETTINGS.update(alpha=1.0, image_cols=padded, last_pos=image_cols.shape[1] - 1, rows={}, rows_pre={},
                    scale={"rows": rows, "factors": factors, "decode": decode, "layers": layers})
    kwargs = dict(inputs)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    try:
        return model(**kwargs).logits.float()
    finally:
        SETTINGS["scale"] = None


def post_image_selection(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, *,
                         image_factor: float, before_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ClearSight's rows × columns, per batch row, for ``reference_scaled_logits``: rows (B, S) the real tokens after
    the row's last image token; factors (B, S) ``image_factor`` on its image tokens, ``before_factor`` on every column
    before its first image token (padding included: masked anyway), 1 elsewhere."""
    B, S = input_ids.shape
    rows, factors = torch.zeros(B, S, dtype=torch.bool), torch.ones(B, S)
    for b in range(B):
        image = [p for p in range(S) if int(input_ids[b, p]) == image_token_id]
        if not image:
            continue
        factors[b, :image[0]] = before_factor
        factors[b, image] = image_factor
        for p in range(image[-1] + 1, S):
            rows[b, p] = bool(attention_mask[b, p])
    return rows, factors


def append_tokens(inputs: dict, tokens: torch.Tensor, fill: dict[str, int] | None = None) -> dict:
    """``inputs`` with ``tokens`` (B, k) fed after the prompt (mask 1, other per-token inputs ``fill[name]``, else 0:
    as ``generate`` extends them, ``Adapter.appended_token_inputs``), for a full forward that checks decoding steps
    without a cache."""
    ids = inputs["input_ids"]
    out = dict(inputs)
    fill = {"attention_mask": 1, **(fill or {})}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.shape == ids.shape:
            extra = tokens if name == "input_ids" else torch.full_like(tokens, fill.get(name, 0))
            out[name] = torch.cat([value, extra.to(value.dtype)], dim=1)
    return out


def text_only_prompt(vlm, question: str) -> str:
    """The chat prompt's text with the image placeholder cut out (independent of the adapter's token removal)."""
    prompt = vlm.adapter.build_prompt(question)
    # a prompt with the image token and no chat template is laid out by the processor itself (PaliGemma)
    processor_format = vlm.processor.chat_template is None and str(vlm.processor.image_token) in prompt
    placeholder = FIXTURES[vlm.adapter.family].image_placeholder  # what the chat template writes for the image
    if placeholder:
        prompt = prompt.replace(placeholder, "")
    if processor_format:  # the processor's own format (PaliGemma): BOS after the image, "\n" last
        prompt = f"{vlm.processor.tokenizer.bos_token}{prompt}\n"
    return prompt


def text_only_ids(vlm, question: str) -> torch.Tensor:
    """(1, S) the text-only prompt's ids: BOS from the tokenizer, unless the template wrote it (as the processor's
    apply_chat_template decides)."""
    prompt, tokenizer = text_only_prompt(vlm, question), vlm.processor.tokenizer
    wrote_bos = tokenizer.bos_token is not None and prompt.startswith(tokenizer.bos_token)
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=not wrote_bos)["input_ids"]


def text_forward(model):
    """What runs a prompt without an image: the VLM, or its language model where the VLM's ``forward`` requires the
    image (InstructBLIP)."""
    pixels = inspect.signature(type(model).forward).parameters.get("pixel_values")
    return model.language_model if pixels is not None and pixels.default is inspect.Parameter.empty else model
