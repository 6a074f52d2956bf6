"""Tiny Aya Vision fixture (SigLIP + Cohere2, as CohereLabs/aya-vision-8b): 56 px tiles, patch 14, pixel shuffle 2
-> 2 × 2 = 4 ``<|IMG_PATCH|>`` tokens per tile; up to 6 tiles plus the global thumbnail (a 224 × 160 picture: 3 × 2
tiles + thumbnail = 28 tokens). The processor writes ``<|START_OF_IMG|>``, ``TILE_1``… before each tile's tokens,
``TILE_GLOBAL`` before the thumbnail's and ``<|END_OF_IMG|>``; the tile markers are plain text here (several BPE
tokens each), the adapter splits by any non-image token. The decoder has a sliding-window layer (RoPE) then a
full-attention layer (no RoPE), a window of ``AYA_SLIDING_WINDOW`` columns that ordinary prompts fit in and long ones
exceed, and ``logit_scale`` 0.5 (Cohere2's default is 0.0625: kept larger so that edits still move the logits)."""

from __future__ import annotations

from typing import Any

import transformers

from visfocus.testing.fixtures import TEXT, VISION, FixtureSpec, register_fixture

AYA_TILE = 56  # px per tile (the processor's default img_size is 364)
AYA_PATCH = 14
AYA_DOWNSAMPLE = 2  # pixel shuffle: 2 × 2 patches -> one token
AYA_MAX_TILES = 6
AYA_SEQ = (AYA_TILE // (AYA_PATCH * AYA_DOWNSAMPLE)) ** 2  # tokens per tile
AYA_SLIDING_WINDOW = 128  # columns (Cohere2's default is 4096)
AYA_LOGIT_SCALE = 0.5
# Cohere's ids 0..7, trained in first as in the real tokenizer; the turn and image tokens follow the BPE
COHERE_SPECIALS = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>", "<EOP_TOKEN>"]
AYA_ADDED = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
             "<|SYSTEM_TOKEN|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]
# The Cohere chat style of aya-vision-8b; the processor expands "<image>" to "<|START_OF_IMG|>…<|END_OF_IMG|>":
# "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>{text}<|END_OF_TURN_TOKEN|>"
# "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
_AYA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set role = {'system': 'SYSTEM', 'user': 'USER', 'assistant': 'CHATBOT'}[message['role']] -%}"
    "{{ '<|START_OF_TURN_TOKEN|><|' + role + '_TOKEN|>' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|END_OF_TURN_TOKEN|>' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{%- endif -%}"
)


def _aya_vision(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and processor of an Aya Vision fixture."""
    vision = transformers.SiglipVisionConfig(
        hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"], num_hidden_layers=VISION["depth"],
        num_attention_heads=VISION["heads"], image_size=AYA_TILE, patch_size=AYA_PATCH, vision_use_head=False)
    text = transformers.Cohere2Config(
        **TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, layer_norm_eps=1e-5, logit_scale=AYA_LOGIT_SCALE,
        sliding_window=AYA_SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 50_000.0}, tie_word_embeddings=False)
    config = transformers.AyaVisionConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=AYA_DOWNSAMPLE, vision_feature_select_strategy="full", vision_feature_layer=-1,
        tie_word_embeddings=False)
    ip = transformers.GotOcr2ImageProcessorPil(
        size={"height": AYA_TILE, "width": AYA_TILE}, crop_to_patches=True, min_patches=1, max_patches=AYA_MAX_TILES,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc = transformers.AyaVisionProcessor(ip, tok, patch_size=AYA_PATCH, img_size=AYA_TILE,
                                           downsample_factor=AYA_DOWNSAMPLE, chat_template=tok.chat_template)
    return config, proc


def _generation_ids(tok: Any) -> dict[str, Any]:
    """As aya-vision-8b's generation config: stop at the end of the turn."""
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


register_fixture(FixtureSpec(
    family="aya_vision", model_class="AyaVisionForConditionalGeneration", build=_aya_vision,
    chat_template=_AYA_TEMPLATE, bpe_specials=tuple(COHERE_SPECIALS), added_specials=tuple(AYA_ADDED),
    tokenizer_kwargs={"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "unk_token": "<UNK>",
                      "pad_token": "<PAD>", "extra_special_tokens": AYA_ADDED, "image_token": "<|IMG_PATCH|>",
                      "add_bos_token": True},
    generation_ids=_generation_ids, real_processor="AyaVisionProcessor",
    image_tokens_224x160=(3 * 2 + 1) * AYA_SEQ,
    prompt_marks=("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>",
                  "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")))
