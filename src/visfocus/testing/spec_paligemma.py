"""Tiny PaliGemma 2 fixture (SigLIP + Gemma 2, as google/paligemma2-3b-pt-224): an 84 px image, patch 14 -> a 6 × 6
grid of ``<image>`` tokens (SigLIP resizes every picture to 84 × 84, aspect not kept), then BOS, the question and
"\\n" (the processor writes all of these; the real checkpoint has no chat template, and neither has this fixture).

Gemma 2 as in the real text config: attention-logit soft-capping, final-logit soft-capping, sliding-window layers
alternating with full ones, the query scale from ``query_pre_attn_scalar`` (= head_dim), tied embeddings. The
soft-capping values (5 / 5) are smaller than the real 50 / 30 so that both bite on this small random model. The
window (128, the real one 4096) is longer than every prompt, as the real 224 px checkpoint's is: transformers lets the
prefix-LM block override the window in a whole prefill but not in a re-run of the last prompt token from a cache, so
a prompt longer than the window (the real 896 px checkpoint's 4096 image tokens) would make prefix reuse inexact."""

from __future__ import annotations

from typing import Any

import transformers

from visfocus.testing.fixtures import TEXT, VISION, FixtureSpec, register_fixture

PALIGEMMA_IMAGE_SIZE = 84  # 224 in the real checkpoint
PALIGEMMA_PATCH = 14
PALIGEMMA_TOKENS = (PALIGEMMA_IMAGE_SIZE // PALIGEMMA_PATCH) ** 2
# The MLP narrower than TEXT's: the processor's 1152 <locXXXX>/<segXXX> tokens make the vocabulary (and the tied
# embedding table) four times the other fixtures', and the fixture must stay under 1 MB.
TEXT_INTERMEDIATE = 64
SLIDING_WINDOW = 128
# The embedding table is also the LM head (tied, as in the real checkpoint) and the fixture keeps embedding tables at
# their initial draw: drawn as wide as the other fixtures' re-drawn LM heads, so the logits are as peaked.
EMBEDDING_STD = 0.15
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0, 1, 2, 3 as in Gemma's tokenizer


def _paligemma(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and processor of a PaliGemma 2 fixture. The processor adds the ``<locXXXX>``/``<segXXX>`` tokens to
    the tokenizer, so it is built first and the vocabulary sized after it."""
    ip = transformers.SiglipImageProcessorPil(
        size={"height": PALIGEMMA_IMAGE_SIZE, "width": PALIGEMMA_IMAGE_SIZE}, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], image_seq_length=PALIGEMMA_TOKENS)
    proc = transformers.PaliGemmaProcessor(ip, tok)
    vision = transformers.SiglipVisionConfig(
        hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"], num_hidden_layers=VISION["depth"],
        num_attention_heads=VISION["heads"], image_size=PALIGEMMA_IMAGE_SIZE, patch_size=PALIGEMMA_PATCH,
        vision_use_head=False)
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = transformers.Gemma2Config(
        **dict(TEXT, intermediate_size=TEXT_INTERMEDIATE), head_dim=head_dim, vocab_size=len(tok),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        query_pre_attn_scalar=head_dim, attn_logit_softcapping=5.0, final_logit_softcapping=5.0,
        sliding_window=SLIDING_WINDOW, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
        initializer_range=EMBEDDING_STD)
    config = transformers.PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=TEXT["hidden_size"], hidden_size=TEXT["hidden_size"], vocab_size=len(tok))
    return config, proc


def _gemma_generation_ids(tok: Any) -> dict[str, Any]:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


register_fixture(FixtureSpec(
    family="paligemma", model_class="PaliGemmaForConditionalGeneration", build=_paligemma, chat_template=None,
    bpe_specials=GEMMA_SPECIALS, added_specials=("<image>",),
    tokenizer_kwargs={"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
                      "extra_special_tokens": ["<image>"], "image_token": "<image>"},
    generation_ids=_gemma_generation_ids, real_processor="PaliGemmaProcessor",
    image_tokens_224x160=PALIGEMMA_TOKENS, prompt_marks=("<image>", "?")))
