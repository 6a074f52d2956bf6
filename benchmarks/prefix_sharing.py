"""Image-prefix sharing on a POPE-shaped workload: N images, Q yes/no questions per image ("Is there a <object> in the
image?", objects of different token lengths), fed in dataset order (grouped by image) in batches, answered through
``VLM.answer_batch`` with ``share_prefix=False`` (every question prefilled whole) and ``share_prefix=True`` (each
image's prefix prefilled once, kept in ``vlm.prefix_store`` across consecutive calls). Random weights from config:
Qwen3-VL-2B (196 image tokens, ``visfocus.overhead.build_vlm``) or a LLaVA-1.5 shape (CLIP ViT-L/14-336, 576 image
tokens, Vicuna-7B-width decoder). Prints samples/second, peak memory and whether the answers agree, with ratios
against the unshared run of the same method and dtype in this process.

    python benchmarks/prefix_sharing.py                                  # Qwen3-VL-2B, 28 layers, fp32 and bf16
    python benchmarks/prefix_sharing.py --batch_size 6                   # one image's six questions per call
    python benchmarks/prefix_sharing.py --family llava                   # LLaVA-1.5 shape, 8 Vicuna-7B layers
    python benchmarks/prefix_sharing.py --layers 2 --images 2 --questions 3 --dtypes float32 --methods baseline
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time

# COCO objects of different lengths, as POPE asks about them.
OBJECTS = ("dog", "dining table", "person", "traffic light", "car", "cell phone", "umbrella", "fire hydrant", "cup",
           "baseball glove", "chair", "teddy bear", "bird", "potted plant", "bottle", "tennis racket", "oven",
           "motorcycle", "kite", "hair drier")
OPTIONS = ("yes", "no")
QWEN_LAYERS = 28  # Qwen3-VL-2B's decoder depth
# LLaVA-1.5: CLIP ViT-L/14 at 336 px (24 × 24 = 576 image tokens, penultimate layer, CLS dropped), a two-layer GELU
# projector, Vicuna-7B (Llama) decoder: 32 layers of width 4096. The default keeps 8 of them (about the decoder
# parameter count of Qwen3-VL-2B; the full 32 need ~27 GiB in float32); --layers 32 builds the whole depth.
LLAVA_LAYERS, VICUNA_7B_LAYERS = 8, 32
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu")
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def questions_for(image: int, count: int, suffix: str) -> list[str]:
    """POPE-style questions about ``count`` different objects, a different run of objects per image."""
    out = []
    for j in range(count):
        obj = OBJECTS[(image * count + j) % len(OBJECTS)]
        out.append(f"Is there {'an' if obj[0] in 'aeiou' else 'a'} {obj} in the image?{suffix}")
    return out


def build_llava(layers: int, dtype):
    """A ``visfocus.VLM`` with the LLaVA-1.5 shape (random weights): the vision tower and projector of
    llava-1.5-7b, ``layers`` decoder layers of Vicuna-7B width, the visfocus attention function on the decoder (as
    ``visfocus.load`` wires it). Processor made in code: the tiny LLaVA fixture's tokenizer and chat template, the
    real CLIP image processor settings (shortest edge 336, centre crop 336)."""
    import torch
    import transformers

    from visfocus.api import VLM
    from visfocus.models.llava import LlavaAdapter
    from visfocus.steer import register
    from visfocus.testing.fixtures import make_tokenizer

    name = register()
    tok = make_tokenizer("llava", max_length=VICUNA_7B["max_position_embeddings"])
    side, patch = CLIP_L_336["image_size"], CLIP_L_336["patch_size"]
    vision = transformers.CLIPVisionConfig(**CLIP_L_336)
    text = transformers.LlamaConfig(**VICUNA_7B, num_hidden_layers=layers, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text,
                                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                                      image_seq_length=(side // patch) ** 2, vision_feature_select_strategy="default",
                                      vision_feature_layer=-2, projector_hidden_act="gelu", tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = transformers.LlavaProcessor(image_processor, tok, patch_size=patch,
                                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                            chat_template=tok.chat_template)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).to(dtype).eval()
    model.set_attn_implementation({"": "sdpa", "text_config": name, "vision_config": "sdpa"})
    model.generation_config.eos_token_id = None  # random weights: never stop early, every run decodes the same
    model.generation_config.pad_token_id = tok.pad_token_id
    return VLM(model, processor, LlavaAdapter(model, processor))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def resident(device: str) -> int:
    """What the model holds now: allocated CUDA memory on GPU, else the process RSS."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return rss_bytes()


def run_once(vlm, samples, method, args, share: bool) -> dict:
    """Every sample in dataset order, ``args.batch_size`` at a time; wall time, peak memory and the answers."""
    import torch

    from visfocus.overhead import PeakMemory

    vlm.prefix_store.clear()
    answers = []
    with PeakMemory(args.device) as mem:
        start = time.perf_counter()
        for i in range(0, len(samples), args.batch_size):
            chunk = samples[i:i + args.batch_size]
            answers += vlm.answer_batch([s[0] for s in chunk], [s[1] for s in chunk], method,
                                        max_new_tokens=args.max_new_tokens, options=[OPTIONS] * len(chunk),
                                        share_prefix=share)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    vlm.prefix_store.clear()
    return {"seconds": seconds, "rate": len(samples) / seconds, "peak_abs": mem.base + mem.peak_bytes,
            "answers": answers, "shared_tokens": sum(a.cost["shared_prefix_tokens"] for a in answers) / len(answers)}


def compare(plain: list, shared: list) -> dict:
    """Rows whose first token or text differ, rows whose AdaptVis α differs, max |Δ first-token logit|."""
    differ = sum(a.first_token != b.first_token or a.text != b.text for a, b in zip(plain, shared))
    alpha = sum(a.extras.get("alpha_used") != b.extras.get("alpha_used") for a, b in zip(plain, shared))
    delta = max(float((a.first_token_logits - b.first_token_logits).abs().max()) for a, b in zip(plain, shared))
    return {"differ": differ, "alpha_differ": alpha, "max_delta": delta}


def describe(vlm, family: str, layers: int, samples) -> str:
    params = sum(p.numel() for p in vlm.model.parameters()) / 1e9
    if family == "qwen":
        arch = f"Qwen3-VL-2B architecture, {layers} of {QWEN_LAYERS} decoder layers"
    else:
        arch = (f"LLaVA-1.5 shape: CLIP ViT-L/14-336 + projector, decoder of Vicuna-7B width (hidden 4096, 32 heads, "
                f"vocab 32064) with {layers} of its {VICUNA_7B_LAYERS} layers")
    reduced = " (reduced)" if layers != (QWEN_LAYERS if family == "qwen" else VICUNA_7B_LAYERS) else ""
    encoded = [vlm.adapter.encode([image], [question])["input_ids"] for image, question in samples]
    lengths = [ids.shape[1] for ids in encoded]
    image_tokens = int((encoded[0] == vlm.adapter.image_token_id).sum())
    return (f"{arch}{reduced}, random weights, {params:.2f} B parameters; prompts {min(lengths)}–{max(lengths)} "
            f"tokens ({image_tokens} image)")


def mib(n: float) -> float:
    return n / 2**20


def report(rows: list[dict], args) -> None:
    print(f"\nsamples/s and peak memory (MiB): 'extra' = peak above the model's resident memory (RSS on CPU, "
          f"allocated on GPU) measured after building it; batch_size {args.batch_size}, max_new_tokens "
          f"{args.max_new_tokens}; ratios are with ÷ without (share_prefix=True ÷ False)")
    head = (f"{'method':<10}{'dtype':<10}{'s/s without':>12}{'s/s with':>10}{'×':>7}{'extra w/o':>11}{'extra with':>11}"
            f"{'×':>7}{'peak w/o':>10}{'peak with':>10}{'×':>7}  {'identical':<10}{'max|Δlogit|':>12}")
    print(head)
    for r in rows:
        p, s, c = r["plain"], r["shared"], r["compare"]
        ex_p, ex_s = mib(p["peak_abs"] - r["model"]), mib(s["peak_abs"] - r["model"])
        same = "yes" if c["differ"] == 0 else f"no ({c['differ']})"
        print(f"{r['method']:<10}{r['dtype']:<10}{p['rate']:>12.3f}{s['rate']:>10.3f}{s['rate'] / p['rate']:>7.2f}"
              f"{ex_p:>11.1f}{ex_s:>11.1f}{(ex_s / ex_p if ex_p > 0 else float('nan')):>7.2f}"
              f"{mib(p['peak_abs']):>10.0f}{mib(s['peak_abs']):>10.0f}{s['peak_abs'] / p['peak_abs']:>7.3f}"
              f"  {same:<10}{c['max_delta']:>12.2e}")
    for r in rows:
        if r["compare"]["alpha_differ"]:
            print(f"note: {r['method']} {r['dtype']}: AdaptVis chose another α on {r['compare']['alpha_differ']} "
                  f"sample(s) with shared prefixes")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("qwen", "llava"), default="qwen",
                        help="qwen: Qwen3-VL-2B (196 image tokens); llava: LLaVA-1.5 shape (576 image tokens)")
    parser.add_argument("--layers", type=int, help=f"decoder layers (default: qwen {QWEN_LAYERS}, the full depth; "
                                                    f"llava {LLAVA_LAYERS} of Vicuna-7B's {VICUNA_7B_LAYERS})")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--questions", type=int, default=6, help="questions per image")
    parser.add_argument("--batch_size", type=int, default=1, help="samples per answer_batch call (visfocus eval: 1)")
    parser.add_argument("--max_new_tokens", type=int, default=1, help="POPE answers are one word")
    parser.add_argument("--methods", default="baseline,adaptvis", help="comma-separated: baseline, adaptvis, ...")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--oneword", action="store_true",
                        help="append LLaVA's POPE suffix ' Answer the question using a single word or phrase.'")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if args.layers is None:
        args.layers = QWEN_LAYERS if args.family == "qwen" else LLAVA_LAYERS
    for name in ("layers", "images", "questions", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1")
    if not args.methods or not args.dtypes or any(d not in ("float32", "bfloat16") for d in args.dtypes):
        parser.error("--methods and --dtypes must not be empty; dtypes are float32, bfloat16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    import visfocus as vf
    from visfocus.benchmarks.pope import ONE_WORD_SUFFIX
    from visfocus.overhead import build_vlm
    from visfocus.testing import make_image

    unknown = [m for m in args.methods if m != "baseline" and m not in vf.METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; available: baseline, {', '.join(vf.METHODS)}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Qwen: 448 × 448 gives a 28 × 28 patch grid, 14 × 14 = 196 tokens after the 2 × 2 merge (as visfocus.overhead).
    # LLaVA: the CLIP processor resizes and centre-crops any image to 336 × 336 (576 tokens); a COCO-like 640 × 480.
    width, height = (448, 448) if args.family == "qwen" else (640, 480)
    suffix = ONE_WORD_SUFFIX if args.oneword else ""
    images = [make_image(width, height, seed=i + 1) for i in range(args.images)]
    samples = [(image, q) for i, image in enumerate(images) for q in questions_for(i, args.questions, suffix)]
    warm_image = make_image(width, height, seed=0)

    print(f"prefix sharing, POPE-shaped workload; {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"with {torch.get_num_threads()} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print(f"workload: {args.images} images × {args.questions} questions = {len(samples)} samples in dataset order, "
          f"batch_size {args.batch_size}, max_new_tokens {args.max_new_tokens}, options yes/no; methods "
          f"{', '.join(args.methods)}; dtypes {', '.join(args.dtypes)}", flush=True)
    if args.device == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        print("note: MALLOC_MMAP_THRESHOLD_ unset: CPU peak memory may be understated (run this file as a script)")

    rows = []
    for dtype_name in args.dtypes:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
        started = time.perf_counter()
        vlm = (build_vlm if args.family == "qwen" else build_llava)(args.layers, dtype)
        vlm.model.to(args.device)
        model_bytes = resident(args.device)
        print(f"\n[{dtype_name}] {describe(vlm, args.family, args.layers, samples)}; built in "
              f"{time.perf_counter() - started:.0f} s, resident {mib(model_bytes):.0f} MiB", flush=True)
        for name in args.methods:
            method = None if name == "baseline" else vf.method(name)
            for share in (False, True):  # warm-up, not timed
                vlm.answer(warm_image, questions_for(args.images, 1, suffix)[0], method,
                           max_new_tokens=args.max_new_tokens, options=OPTIONS, share_prefix=share)
            result = {"method": name, "dtype": dtype_name, "model": model_bytes}
            for share in (False, True):
                run = run_once(vlm, samples, method, args, share)
                result["shared" if share else "plain"] = run
                print(f"  {name:<9} {dtype_name:<9} share_prefix={share!s:<5}: {len(samples)} samples in "
                      f"{run['seconds']:.1f} s = {run['rate']:.3f} samples/s; peak {mib(run['peak_abs']):.0f} MiB "
                      f"(+{mib(run['peak_abs'] - model_bytes):.1f} over the model); shared prefix "
                      f"{run['shared_tokens']:.0f} tokens/answer", flush=True)
            result["compare"] = compare(result["plain"]["answers"], result["shared"]["answers"])
            for key in ("plain", "shared"):
                del result[key]["answers"]
            rows.append(result)
        del vlm
        gc.collect()
    report(rows, args)
    return 0


if __name__ == "__main__":
    # Large CPU allocations map and unmap pages directly, so sampled RSS shows each run's own peak.
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.exit(main())
