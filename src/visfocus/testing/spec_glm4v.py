"""Tiny GLM-4.1V fixture (as zai-org/GLM-4.1V-9B-Thinking): patch 14, merge 2 -> one ``<|image|>`` token per 28 × 28
px block of the ``smart_resize``d image (a 224 × 160 picture: 224 × 168 px -> 6 × 8 = 48 tokens). The text decoder
keeps the real checkpoint's RoPE shape: ``partial_rotary_factor`` 0.5 (8 of each head's 16 dims rotate, in
interleaved pairs), M-RoPE sections over those 4 frequencies.

The processor is ``Glm4vProcessor`` built without its video processor (``Glm4vProcessorNoVideo`` in
``visfocus.models.glm4v``: the video processor needs torchvision); the saved ``processor_class`` is the real one."""

from __future__ import annotations

from typing import Any

import transformers

from visfocus.testing.fixtures import TEXT, VISION, FixtureSpec, register_fixture

GLM4V_PATCH, GLM4V_MERGE = 14, 2
GLM4V_MIN_TOKENS, GLM4V_MAX_TOKENS = 4, 128  # image limits in tokens (the real checkpoint: 8 .. 30000)
# The GLM-4 special tokens after the BPE, in the real vocabulary's order (151329 <|endoftext|> .. 151344 <|video|>).
GLM4V_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                  "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                  "<|end_of_video|>", "<|image|>", "<|video|>"]
# GLM-4.1V's chat template (no BOS from the tokenizer: the template writes "[gMASK]<sop>"):
# "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>{text}<|assistant|>\n"
_GLM4V_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '<|system|>\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '<|user|>\\n' }}"
    "{%- else -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def _glm4v(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and (image-only) processor of a GLM-4.1V fixture."""
    from visfocus.models.glm4v import Glm4vProcessorNoVideo

    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
        ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
        ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>")]}
    # head_dim 16, half of it rotary: 4 frequencies split over (t, h, w) as the real [8, 12, 12] of 32
    text = dict(TEXT, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10_000.0,
                                                    "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]})
    vision = {"depth": VISION["depth"], "hidden_size": VISION["hidden"], "intermediate_size": VISION["intermediate"],
              "num_heads": VISION["heads"], "patch_size": GLM4V_PATCH, "spatial_merge_size": GLM4V_MERGE,
              "temporal_patch_size": 2, "image_size": 4 * GLM4V_PATCH, "out_hidden_size": TEXT["hidden_size"]}
    config = transformers.Glm4vConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    # smart_resize counts both temporal copies of a still image, hence the factor 2 (as the real 12544 .. 47040000)
    block = (GLM4V_PATCH * GLM4V_MERGE) ** 2
    size = {"shortest_edge": 2 * GLM4V_MIN_TOKENS * block, "longest_edge": 2 * GLM4V_MAX_TOKENS * block}
    ip = transformers.Glm4vImageProcessorPil(size=size, patch_size=GLM4V_PATCH, merge_size=GLM4V_MERGE,
                                             temporal_patch_size=2)
    return config, Glm4vProcessorNoVideo(ip, tok, chat_template=tok.chat_template)


def _glm4v_generation_ids(tok: Any) -> dict[str, Any]:
    """As the real generation config: stop on <|endoftext|>, <|user|> or <|observation|>."""
    return {"eos_token_id": [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]}


register_fixture(FixtureSpec(
    family="glm4v", model_class="Glm4vForConditionalGeneration", build=_glm4v, chat_template=_GLM4V_TEMPLATE,
    bpe_specials=(), added_specials=tuple(GLM4V_SPECIALS),
    tokenizer_kwargs={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                      "extra_special_tokens": GLM4V_SPECIALS[1:], "image_token": "<|image|>",
                      "video_token": "<|video|>"},
    generation_ids=_glm4v_generation_ids, real_processor="Glm4vProcessor", image_tokens_224x160=48,
    video_processor="Glm4vVideoProcessor",
    prompt_marks=("[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>", "<|assistant|>\n"),
    image_placeholder="<|begin_of_image|><|image|><|end_of_image|>"))
