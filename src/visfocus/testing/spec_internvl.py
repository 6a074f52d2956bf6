"""Tiny InternVL fixture (InternViT + Qwen2, as OpenGVLab/InternVL3-1B-hf): 56 px tiles, patch 14, pixel shuffle 0.5
-> 2 × 2 = 4 ``<IMG_CONTEXT>`` tokens per tile; up to 6 tiles plus the thumbnail (a 224 × 160 picture: 3 × 2 tiles +
thumbnail = 28 tokens)."""

from __future__ import annotations

from typing import Any

import transformers

from visfocus.testing.fixtures import TEXT, VISION, FixtureSpec, _qwen_generation_ids, register_fixture

INTERNVL_TILE = 56  # px per tile (448 in the real checkpoint)
INTERNVL_PATCH = 14
INTERNVL_MAX_TILES = 6  # 12 in the real checkpoint
INTERNVL_SEQ = (INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2  # tokens per tile after the 0.5 pixel shuffle
INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>",
                     "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>"]
# Qwen2 chat style of OpenGVLab/InternVL3-*-hf; the processor expands "<IMG_CONTEXT>" to "<img><IMG_CONTEXT>…</img>":
# "<|im_start|>user\n<IMG_CONTEXT>\n{text}<|im_end|>\n<|im_start|>assistant\n"
_INTERNVL_TEMPLATE = (
    "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<IMG_CONTEXT>\\n' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _internvl(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and (image-only) processor of an InternVL fixture."""
    from visfocus.models.internvl import InternVLProcessorNoVideo

    vision = transformers.InternVLVisionConfig(
        hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"], num_hidden_layers=VISION["depth"],
        num_attention_heads=VISION["heads"], image_size=[INTERNVL_TILE] * 2, patch_size=[INTERNVL_PATCH] * 2,
        norm_type="layer_norm", use_mean_pooling=False)
    text = transformers.Qwen2Config(**TEXT, vocab_size=len(tok), bos_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    config = transformers.InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=INTERNVL_SEQ, downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False)
    ip = transformers.GotOcr2ImageProcessorPil(
        size={"height": INTERNVL_TILE, "width": INTERNVL_TILE}, crop_to_patches=True, min_patches=1,
        max_patches=INTERNVL_MAX_TILES, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    proc = InternVLProcessorNoVideo(ip, tok, image_seq_length=INTERNVL_SEQ, chat_template=tok.chat_template)
    return config, proc


register_fixture(FixtureSpec(
    family="internvl", model_class="InternVLForConditionalGeneration", build=_internvl,
    chat_template=_INTERNVL_TEMPLATE, bpe_specials=(), added_specials=tuple(INTERNVL_SPECIALS),
    tokenizer_kwargs={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                      "extra_special_tokens": INTERNVL_SPECIALS[1:], "start_image_token": "<img>",
                      "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                      "image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    generation_ids=_qwen_generation_ids, real_processor="InternVLProcessor",
    image_tokens_224x160=(3 * 2 + 1) * INTERNVL_SEQ, video_processor="InternVLVideoProcessor",
    prompt_marks=("<|im_start|>user\n<IMG_CONTEXT>\n", "<|im_end|>\n<|im_start|>assistant\n"),
    image_placeholder="<IMG_CONTEXT>\n"))
