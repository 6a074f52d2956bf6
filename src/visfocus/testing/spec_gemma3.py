"""Tiny Gemma 3 fixture (SigLIP + Gemma 3 text decoder, as google/gemma-3-4b-it): 168 px images, patch 14 -> 12 × 12
patches, average-pooled to ``mm_tokens_per_image`` = 36 ``<image_soft_token>`` tokens (a 6 × 6 grid; 896 px, 64 × 64
patches and 256 tokens in the real checkpoint). The decoder has one sliding-window layer and one global layer
(``layer_types``), a window of ``GEMMA3_SLIDING_WINDOW`` columns, and ``query_pre_attn_scalar`` unlike head_dim, so the
attention scale is not head_dim ** −0.5. The chat template starts with ``<bos>``, as the real one, and the tokenizer
adds a BOS of its own (``add_bos_token``), as the real one: a prompt must be tokenized without special tokens, as
``apply_chat_template`` does."""

from __future__ import annotations

from typing import Any

import transformers

from visfocus.testing.fixtures import TEXT, VISION, FixtureSpec, register_fixture

GEMMA3_IMAGE = 168  # px (896 in the real checkpoint)
GEMMA3_PATCH = 14
GEMMA3_TOKENS = 36  # mm_tokens_per_image: the 12 × 12 patches pooled 2 × 2 (256 in the real checkpoint)
# Columns a sliding-window layer sees (itself included; 1024 in the real checkpoint): more than the shared tests'
# prompts (so their prefix sharing stays exact) and fewer than a long question's prompt (the window then binds).
GEMMA3_SLIDING_WINDOW = 80
GEMMA3_BPE_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3 as in Gemma
GEMMA3_SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
# The chat template of google/gemma-3-4b-it (system text folded into the first user turn; "assistant" is "model");
# the processor expands "<start_of_image>" to "\n\n<start_of_image><image_soft_token>…<end_of_image>\n\n":
# "<bos><start_of_turn>user\n<start_of_image>{text}<end_of_turn>\n<start_of_turn>model\n"
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def _gemma3(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and processor of a Gemma 3 fixture."""
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_index", "<image_soft_token>"), ("boi_token_index", "<start_of_image>"),
        ("eoi_token_index", "<end_of_image>")]}
    vision = transformers.SiglipVisionConfig(hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"],
                                             num_hidden_layers=VISION["depth"], num_attention_heads=VISION["heads"],
                                             image_size=GEMMA3_IMAGE, patch_size=GEMMA3_PATCH,
                                             vision_use_head=False)
    text = transformers.Gemma3TextConfig(
        **TEXT, head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"], query_pre_attn_scalar=32,
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6, sliding_window=GEMMA3_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"], hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}},
        final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=False)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=GEMMA3_TOKENS,
                                       tie_word_embeddings=False, **ids)
    ip = transformers.Gemma3ImageProcessorPil(size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE},
                                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                              do_pan_and_scan=None)
    proc = transformers.Gemma3Processor(ip, tok, chat_template=tok.chat_template, image_seq_length=GEMMA3_TOKENS)
    return config, proc


def _gemma3_generation_ids(tok: Any) -> dict[str, Any]:
    """As google/gemma-3-4b-it's generation config: stop on <eos> or <end_of_turn>."""
    return {"bos_token_id": tok.bos_token_id,
            "eos_token_id": [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]}


register_fixture(FixtureSpec(
    family="gemma3", model_class="Gemma3ForConditionalGeneration", build=_gemma3, chat_template=_GEMMA3_TEMPLATE,
    bpe_specials=GEMMA3_BPE_SPECIALS, added_specials=GEMMA3_SPECIALS,
    tokenizer_kwargs={"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                      "add_bos_token": True, "add_eos_token": False,
                      "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                               "image_token": "<image_soft_token>"}},
    generation_ids=_gemma3_generation_ids, real_processor="Gemma3Processor", image_tokens_224x160=GEMMA3_TOKENS,
    prompt_marks=("<bos><start_of_turn>user\n<start_of_image>", "<end_of_turn>\n<start_of_turn>model\n"),
    image_placeholder="<start_of_image>"))
