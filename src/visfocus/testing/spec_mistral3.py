"""Tiny Mistral 3 fixture (Pixtral + Mistral, as mistralai/Mistral-Small-3.1-24B-Instruct-2503): patch 14, spatial
merge 2 -> one ``[IMG]`` token per 28 px; images fit in 140 px (1540 in the real checkpoint), then each side goes up
to a multiple of 28 (a 224 × 160 picture: 140 × 100 -> 140 × 112, 4 rows × 5 cols = 20 ``[IMG]`` tokens, each row
closed by ``[IMG_BREAK]``, the last by ``[IMG_END]``). No sliding window, as the real text model.

The real ``PixtralProcessor`` cannot be imported without torchvision: the fixture uses ``PixtralProcessorPil`` (the
same class, see ``visfocus.models.mistral3``) with ``PixtralImageProcessorPil``, and writes ``PixtralProcessor`` on
disk."""

from __future__ import annotations

from typing import Any

import transformers

from visfocus.testing.fixtures import TEXT, VISION, FixtureSpec, _llava_generation_ids, register_fixture

MISTRAL3_PATCH = 14
MISTRAL3_MERGE = 2
MISTRAL3_LONGEST_EDGE = 140  # px; 1540 in the real checkpoint
# The real tokenizer's first 20 control tokens, at their real ids ([IMG] 10, <pad> 11, [IMG_BREAK] 12, [IMG_END] 13).
MISTRAL3_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                     "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                     "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
# As the real chat template (BOS written by the template, a default system prompt, no generation prompt; the real
# default system prompt is long and dated): "<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST][IMG]{text}[/INST]"
_MISTRAL3_TEMPLATE = (
    "{%- set default_system_message = 'You are a helpful assistant.' -%}{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = default_system_message -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{- '[INST]' + message['content'] + '[/INST]' -}}"
    "{%- else -%}{{- '[INST]' -}}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}"
    "{%- elif block['type'] in ['image', 'image_url'] -%}{{- '[IMG]' -}}{%- endif -%}"
    "{%- endfor -%}{{- '[/INST]' -}}{%- endif -%}"
    "{%- elif message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def _mistral3(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and processor of a Mistral 3 fixture."""
    from visfocus.models.mistral3 import PixtralProcessorPil

    vision = transformers.PixtralVisionConfig(
        hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"], num_hidden_layers=VISION["depth"],
        num_attention_heads=VISION["heads"], image_size=MISTRAL3_LONGEST_EDGE, patch_size=MISTRAL3_PATCH,
        hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    text = transformers.MistralConfig(**TEXT, head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"],
                                      vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5,
                                      sliding_window=None,
                                      rope_parameters={"rope_type": "default", "rope_theta": 1_000_000_000.0})
    config = transformers.Mistral3Config(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=MISTRAL3_MERGE, vision_feature_layer=-1, projector_hidden_act="gelu",
        multimodal_projector_bias=False, tie_word_embeddings=False)
    ip = transformers.PixtralImageProcessorPil(
        size={"longest_edge": MISTRAL3_LONGEST_EDGE}, patch_size={"height": MISTRAL3_PATCH, "width": MISTRAL3_PATCH},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    proc = PixtralProcessorPil(ip, tok, patch_size=MISTRAL3_PATCH, spatial_merge_size=MISTRAL3_MERGE,
                               chat_template=tok.chat_template)
    return config, proc


register_fixture(FixtureSpec(
    family="mistral3", model_class="Mistral3ForConditionalGeneration", build=_mistral3,
    chat_template=_MISTRAL3_TEMPLATE, bpe_specials=tuple(MISTRAL3_SPECIALS), added_specials=(),
    tokenizer_kwargs={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                      "extra_special_tokens": [t for t in MISTRAL3_SPECIALS if t.startswith("[")],
                      "add_bos_token": False,  # the chat template writes BOS
                      "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"},
    generation_ids=_llava_generation_ids, real_processor="PixtralProcessor", image_tokens_224x160=4 * 5,
    prompt_marks=("[/SYSTEM_PROMPT][INST][IMG]", "[/INST]"),
    image_placeholder="[IMG]"))
