"""Tiny SmolVLM fixture (SigLIP + a Llama decoder, as HuggingFaceTB/SmolVLM-256M-Instruct): 64 px tiles (512 in the
real checkpoint), patch 8, pixel shuffle ``scale_factor`` 4 -> 2 × 2 = 4 ``<image>`` tokens per tile; the longest edge
resized to 4 tiles (2048 = 4 × 512 in the real one). A 224 × 160 picture: 3 × 4 tiles + the global image = 52 tokens.

The processor is ``SmolVLMProcessorNoVideo`` (``visfocus.models.smolvlm``): ``SmolVLMProcessor`` built from its parts,
image processor and tokenizer, without the video processor (it needs torchvision) and without ``SmolVLMProcessor``'s
``num2words`` check (a package only its video prompts use); ``SmolVLMProcessor`` is the class written on disk."""

from __future__ import annotations

from typing import Any

import transformers

from visfocus.testing.fixtures import TEXT, VISION, FixtureSpec, register_fixture

SMOLVLM_TILE = 64  # px per tile, the image processor's max_image_size and the vision tower's image_size
SMOLVLM_PATCH = 8
SMOLVLM_SCALE = 4  # pixel shuffle: 8 × 8 patches -> 2 × 2 tokens
SMOLVLM_SEQ = (SMOLVLM_TILE // SMOLVLM_PATCH // SMOLVLM_SCALE) ** 2
SMOLVLM_LONGEST_EDGE = 4 * SMOLVLM_TILE
# SmolLM2's first ids, then the added tokens in the real order (<global-img>, the tile markers, ...)
SMOLVLM_BPE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SMOLVLM_ADDED = ("<global-img>", *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
                 "<fake_token_around_image>", "<image>", "<end_of_utterance>")
# HuggingFaceTB/SmolVLM-256M-Instruct's chat_template.json; with one image and a question:
# "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:"
_SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_TOKENIZER = {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
                     "unk_token": "<|endoftext|>", "extra_special_tokens": list(SMOLVLM_ADDED),
                     "image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                     "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}


def smolvlm_parts(tok: Any) -> tuple[Any, Any, Any]:
    """The vision config, text config and image processor of the tiny SmolVLM (an Idefics3 takes the same)."""
    vision = dict(hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"],
                  num_hidden_layers=VISION["depth"], num_attention_heads=VISION["heads"], image_size=SMOLVLM_TILE,
                  patch_size=SMOLVLM_PATCH)
    text = transformers.LlamaConfig(**TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5,
                                    rope_parameters={"rope_type": "default", "rope_theta": 100_000.0})
    image_processor = {"size": {"longest_edge": SMOLVLM_LONGEST_EDGE},
                       "max_image_size": {"longest_edge": SMOLVLM_TILE}, "image_mean": [0.5, 0.5, 0.5],
                       "image_std": [0.5, 0.5, 0.5]}
    return vision, text, image_processor


def _smolvlm(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and (image-only) processor of a SmolVLM fixture."""
    from visfocus.models.smolvlm import SmolVLMProcessorNoVideo

    vision, text, ip_kwargs = smolvlm_parts(tok)
    config = transformers.SmolVLMConfig(
        vision_config=transformers.SmolVLMVisionConfig(**vision), text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=SMOLVLM_SCALE, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id)
    ip = transformers.SmolVLMImageProcessorPil(**ip_kwargs)
    proc = SmolVLMProcessorNoVideo(ip, tok, image_seq_len=SMOLVLM_SEQ, chat_template=tok.chat_template)
    return config, proc


def _smolvlm_generation_ids(tok: Any) -> dict[str, Any]:
    """Stop on <end_of_utterance> (the tokenizer's eos, which ends every turn of the template) or <|im_end|>."""
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": [tok.eos_token_id, tok.pad_token_id]}


register_fixture(FixtureSpec(
    family="smolvlm", model_class="SmolVLMForConditionalGeneration", build=_smolvlm,
    chat_template=_SMOLVLM_TEMPLATE, bpe_specials=SMOLVLM_BPE_SPECIALS, added_specials=SMOLVLM_ADDED,
    tokenizer_kwargs=SMOLVLM_TOKENIZER, generation_ids=_smolvlm_generation_ids, real_processor="SmolVLMProcessor",
    image_tokens_224x160=(3 * 4 + 1) * SMOLVLM_SEQ, video_processor="SmolVLMVideoProcessor",
    prompt_marks=("<|im_start|>User:<image>", "<end_of_utterance>\nAssistant:")))
