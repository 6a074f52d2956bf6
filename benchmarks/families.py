"""Per-family overhead: for each chosen family, a mid-size random model built from the family's real config, model and
processor classes (the tiny fixture's, with a mid-size text decoder and a vision tower sized for a few hundred image
tokens), one picture and a ~40-token question answered through ``VLM.answer`` in one process, interleaved
repetitions. Prints median seconds per answer for plain SDPA (transformers' own path), the visfocus attention function
with no edit, a trace, ScalingVis and AdaptVis, each as a ratio to plain SDPA measured in the same run.

    python benchmarks/families.py                                  # internvl (tiles) and gemma3 (non-causal mask)
    python benchmarks/families.py --families paligemma --layers 4 --reps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

import torch

ROWS = ("plain_sdpa", "visfocus_no_edit", "trace", "scaling_vis", "adaptvis")
# The bounds on the ratio to plain SDPA (per answer).
BOUNDS = {"visfocus_no_edit": 1.05, "trace": 1.05, "scaling_vis": 1.05, "adaptvis": 1.10}
QUESTION = "Where is the red square in relation to the blue circle? Answer with left, right, above or below."


def _text(config, hidden: int, layers: int, heads: int, kv_heads: int) -> None:
    """Make the text decoder mid-size in place (head_dim 128, intermediate 4 × hidden)."""
    text = config.get_text_config()
    vision = getattr(config, "vision_config", None)
    for name in ("out_hidden_size", "projection_dim", "hidden_size"):  # a vision output sized for the decoder
        if vision is not None and getattr(vision, name, None) == text.hidden_size:
            setattr(vision, name, hidden)
    old_head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    text.hidden_size, text.num_hidden_layers = hidden, layers
    text.num_attention_heads, text.num_key_value_heads = heads, kv_heads
    text.head_dim, text.intermediate_size = hidden // heads, 4 * hidden
    rope = getattr(text, "rope_parameters", None) or {}
    if rope.get("mrope_section"):  # M-RoPE sections cover the rotary half of a head: grow them with it
        rope["mrope_section"] = [v * text.head_dim // old_head_dim for v in rope["mrope_section"]]
    if getattr(text, "layer_types", None) is not None:  # sliding / full pattern over the new depth
        pattern = list(text.layer_types)
        text.layer_types = [pattern[i % len(pattern)] for i in range(layers)]


def _internvl(config, processor) -> None:
    """224 px tiles, patch 14, pixel shuffle 0.5: 64 tokens per tile; up to 6 tiles and the thumbnail."""
    config.vision_config.image_size = [224, 224]
    config.image_seq_length = processor.image_seq_length = 64
    processor.image_processor.size = {"height": 224, "width": 224}


def _gemma3(config, processor) -> None:
    """224 px SigLIP view, 16 × 16 = 256 tokens (the real checkpoint: 896 px pooled to 256 tokens); the real 4B's
    sliding window (1024) and layer pattern (five sliding-window layers, then a global one)."""
    text = config.get_text_config()
    text.sliding_window = 1024
    text.layer_types = [("full_attention" if i % 6 == 5 else "sliding_attention")
                        for i in range(text.num_hidden_layers)]
    text.query_pre_attn_scalar = text.head_dim
    config.vision_config.image_size = 224
    config.vision_config.patch_size = 14
    config.mm_tokens_per_image = processor.image_seq_length = 256
    processor.image_processor.size = {"height": 224, "width": 224}
    soft = processor.tokenizer.image_token  # the expansion Gemma3Processor builds in its __init__, for 256
    processor.full_image_sequence = processor.full_image_sequence.replace(
        soft * processor.full_image_sequence.count(soft), soft * 256)


def _paligemma(config, processor) -> None:
    """224 px SigLIP view, patch 14: 256 image tokens (paligemma2-3b-pt-224)."""
    config.vision_config.image_size = 224
    config.vision_config.patch_size = 14
    config.text_config.num_image_tokens = config.vision_config.num_image_tokens = 256
    processor.image_seq_length = 256
    processor.image_processor.size = {"height": 224, "width": 224}


MIDSIZE: dict[str, Callable] = {"internvl": _internvl, "gemma3": _gemma3, "paligemma": _paligemma}
PLAIN: dict[str, str] = {}  # family -> the text attention of its plain row where that is not SDPA


def build_vlm(family: str, layers: int, dtype: torch.dtype):
    """The family's tiny fixture with a mid-size text decoder (and, for the families in ``MIDSIZE``, a vision side
    sized for a few hundred image tokens), random weights; the text attention starts as plain SDPA, or eager where
    the model refuses SDPA (Gemma 2's soft-capped attention: then "plain" is transformers' eager path)."""
    import transformers

    from visfocus.api import VLM
    from visfocus.models import adapter_for
    from visfocus.models.processor import load_processor
    from visfocus.steer import register
    from visfocus.testing import tiny_model_dir
    from visfocus.testing.fixtures import FIXTURES

    register()
    path = tiny_model_dir(family)
    processor = load_processor(str(path))
    config = transformers.AutoConfig.from_pretrained(path)
    _text(config, hidden=1536, layers=layers, heads=12, kv_heads=2)
    if family in MIDSIZE:
        MIDSIZE[family](config, processor)
    torch.manual_seed(0)
    model = getattr(transformers, FIXTURES[family].model_class)(config).to(dtype).eval()
    try:
        model.set_attn_implementation({"": "sdpa", "text_config": "sdpa", "vision_config": "sdpa"})
    except ValueError:  # the text decoder refuses SDPA: its plain path is eager
        PLAIN[family] = "eager"
    model.generation_config.eos_token_id = None  # random weights: every run decodes the same number of tokens
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return VLM(model, processor, adapter_for(config.model_type)(model, processor))


def main(argv: list[str] | None = None) -> int:
    from visfocus.overhead import configs, measure, report
    from visfocus.testing import make_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="internvl,gemma3",
                        help="comma-separated registered families, or 'all' (mid-size vision for: "
                             f"{', '.join(MIDSIZE)}; the others keep their fixture's small vision side)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=1)
    args = parser.parse_args(argv)
    from visfocus.testing import FAMILIES

    families = list(FAMILIES) if args.families == "all" else [f.strip() for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.exit(2, f"families.py: error: unknown families {unknown}; registered: {', '.join(FAMILIES)}\n")
    rows = {name: config for name, config in configs().items() if name in ROWS}
    image = make_image(448, 336, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32; {args.reps} interleaved reps")
    failed = []
    for family in families:
        vlm = build_vlm(family, args.layers, torch.float32)
        table = dict(rows, plain_sdpa=dataclasses.replace(rows["plain_sdpa"], attention=PLAIN.get(family, "sdpa")))
        ids = vlm.adapter.encode([image], [QUESTION])["input_ids"]
        print(f"\n[{family}] mid-size random model: {args.layers} decoder layers, hidden 1536, "
              f"{sum(p.numel() for p in vlm.model.parameters()) / 1e6:.0f} M parameters; prompt {ids.shape[1]} "
              f"tokens ({int((ids == vlm.adapter.image_token_id).sum())} image)"
              + ("; the model refuses SDPA, so plain_sdpa is transformers' eager path" if family in PLAIN else ""))
        results = measure(vlm, image, QUESTION, table, args.reps, args.new_tokens, "cpu")
        report(f"{family}: seconds per answer ({args.new_tokens} new token(s))", results)
        base = results["plain_sdpa"]["median_s"]
        # every family: the unedited engine within 5 % of the plain path; the edit bounds where the prompt has a
        # realistic image (MIDSIZE), not a fixture's few dozen image tokens
        checked = dict(BOUNDS) if family in MIDSIZE else {"visfocus_no_edit": BOUNDS["visfocus_no_edit"]}
        if vlm.adapter.prefix_lm and checked.pop("adaptvis", None):
            print(f"note: {family} is a prefix-LM: an edit of the last prompt row reaches the rows before it, so "
                  "AdaptVis's edited pass is a second whole prefill (about 2×), not a re-run of the last token")
        for row, bound in checked.items():
            ratio = results[row]["median_s"] / base
            if ratio > bound:
                failed.append(f"{family} {row} {ratio:.3f} > {bound}")
        del vlm
    print("\nwithin the bounds (" + ", ".join(f"{r} ≤ {b}×" for r, b in BOUNDS.items())
          + f"; the edit rows for {', '.join(f for f in families if f in MIDSIZE) or 'none of these'}): "
          + ("yes" if not failed else "NO: " + "; ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # sampled RSS shows each run's own peak
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.exit(main())
