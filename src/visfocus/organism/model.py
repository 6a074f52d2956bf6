"""The organism's untrained starting point: a small Qwen3-VL (the real transformers classes, so every method and
analysis takes the real code paths) with a byte-level BPE tokenizer trained in code on the scenes' language, Qwen's
special tokens and Qwen3-VL's chat template, and the real Qwen2-VL image processor. Deterministic given the seed."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from visfocus.benchmarks.scenes import (
    COLOURS,
    IMAGE_SIZE,
    QUESTION,
    REFERENCE_COLOURS,
    REFERENCE_SHAPES,
    RELATIONS,
    SHAPES,
)
from visfocus.testing.fixtures import add_video_entry, make_tokenizer

# Text decoder: hidden 128 = 4 heads x head_dim 32, 2 KV heads (GQA as in the real 2B), 4 layers.
TEXT = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 512}
# Vision tower: patch 16, 2x2 merge (a 192 px image is 12 x 12 patches -> 6 x 6 image tokens), DeepStack after
# vision block 0 (its features are added to the first decoder layer's input, as in the real model).
VISION = {"depth": 2, "hidden_size": 96, "intermediate_size": 192, "num_heads": 2, "patch_size": 16,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 128,
          "num_position_embeddings": (IMAGE_SIZE // 16) ** 2, "deepstack_visual_indexes": [0]}
# Initial weight std: 0.08 (about 1/sqrt(hidden)) rather than the real Qwen's 0.02, which at width 128 shrinks every
# residual branch to ~5 % of its input variance; from scratch, 0.08 trained faster in our trials.
INIT_STD = 0.08
MAX_IMAGE_TOKENS = 64  # larger pictures are scaled down to at most 64 image tokens (256 patches)
VOCAB_SIZE = 360


def corpus() -> list[str]:
    """Every question and answer the scenes can produce, plus the chat template's words (for the BPE merges)."""
    things = [f"{colour} {shape}" for colour in sorted(COLOURS) for shape in SHAPES]
    references = [f"{colour} {shape}" for colour in sorted(REFERENCE_COLOURS) for shape in REFERENCE_SHAPES]
    lines = [QUESTION.format(subject=a, reference=b) for a in things for b in references] * 4
    lines += list(RELATIONS) * 50 + ["user", "assistant", "system", "yes", "no", "True", "False"] * 50
    return lines


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    return make_tokenizer("qwen3_vl", corpus=corpus(), vocab_size=VOCAB_SIZE,
                          max_length=TEXT["max_position_embeddings"])


def processor(tok):
    from visfocus.models.processor import FALLBACK_PROCESSORS, NO_VIDEO_PROCESSORS

    unit = (VISION["patch_size"] * VISION["spatial_merge_size"]) ** 2  # pixels per image token
    image_processor = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * unit, "longest_edge": MAX_IMAGE_TOKENS * unit}, patch_size=VISION["patch_size"],
        merge_size=VISION["spatial_merge_size"], temporal_patch_size=VISION["temporal_patch_size"],
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return NO_VIDEO_PROCESSORS[FALLBACK_PROCESSORS["qwen3_vl"]](image_processor, tok, chat_template=tok.chat_template)


def config(tok, init_std: float = INIT_STD) -> transformers.Qwen3VLConfig:
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    half = TEXT["head_dim"] // 2
    text = dict(TEXT, vocab_size=len(tok), bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6, initializer_range=init_std,
                rope_parameters={"rope_type": "default", "rope_theta": 10_000.0,
                                 "mrope_section": [half // 2, half // 4, half // 4], "mrope_interleaved": True})
    vision = dict(VISION, initializer_range=init_std)
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_untrained(out_dir: str | Path, seed: int = 0, init_std: float = INIT_STD) -> Path:
    """Save the randomly initialised organism (model + processor) into ``out_dir``; the same seed gives the same
    bytes."""
    out = Path(out_dir)
    tok = tokenizer()
    proc = processor(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.Qwen3VLForConditionalGeneration(config(tok, init_std)).eval()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.pad_token_id, eos_token_id=[tok.eos_token_id, tok.pad_token_id], pad_token_id=tok.pad_token_id,
        do_sample=False)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    add_video_entry(out, "qwen3_vl", proc.image_processor)
    return out
