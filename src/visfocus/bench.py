"""Overhead benchmark: the real Qwen3-VL-2B-Instruct architecture (public config values, random weights), one image
of 196 image tokens plus ~40 text tokens, timed in one process with interleaved repetitions. Prints median seconds
per answer and peak extra memory for plain SDPA, the visfocus function without an edit, ScalingVis, trace capture
and eager attention, each as a ratio to plain SDPA; then a long-sequence memory comparison, eager vs visfocus.
Run: ``python benchmarks/overhead.py`` or ``visfocus bench`` (``--layers 4`` for a quick run)."""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

# Public Qwen3-VL-2B-Instruct dimensions (see PITFALLS.md); token ids as in its tokenizer.
TEXT_2B = dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
               intermediate_size=6144, vocab_size=151936, tie_word_embeddings=True, rope_theta=5e6,
               max_position_embeddings=32768, rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20],
                                                            "mrope_interleaved": True})
VISION_2B = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                 spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
                 deepstack_visual_indexes=[5, 11, 17], num_position_embeddings=2304)
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655


def build_model(layers: int, dtype: torch.dtype):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from visfocus.steer import register

    register()
    config = Qwen3VLConfig(text_config={**TEXT_2B, "num_hidden_layers": layers}, vision_config=VISION_2B,
                           image_token_id=IMAGE_PAD, vision_start_token_id=VISION_START,
                           vision_end_token_id=VISION_END, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early, every run decodes the same
    model.generation_config.pad_token_id = 0
    return model


def build_inputs(grid: int = 28, text_before: int = 14, text_after: int = 26, seed: int = 0) -> dict:
    """One image of (grid/2)² tokens between ~text_before and ~text_after random text tokens."""
    g = torch.Generator().manual_seed(seed)
    n_image = (grid // 2) ** 2
    ids = torch.cat([torch.randint(1000, 100000, (text_before,), generator=g), torch.tensor([VISION_START]),
                     torch.full((n_image,), IMAGE_PAD), torch.tensor([VISION_END]),
                     torch.randint(1000, 100000, (text_after,), generator=g)])[None]  # (1, S)
    patch_dim = 3 * 2 * 16 * 16
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == IMAGE_PAD).int(),
            "pixel_values": torch.randn(grid * grid, patch_dim, generator=g),
            "image_grid_thw": torch.tensor([[1, grid, grid]])}


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator stats on GPU, else RSS sampled every millisecond (large CPU
    allocations go back to the OS on free: see ``_cpu_allocator_hint``)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self._rss()
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.base
            return
        self.stop.set()
        self.thread.join()
        self.peak_bytes = max(self.peak, self._rss()) - self.base


def _cpu_allocator_hint() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        print("note: set MALLOC_MMAP_THRESHOLD_=65536 for exact CPU peak memory (benchmarks/overhead.py does)")


def run_config(model, inputs: dict, name: str, new_tokens: int) -> None:
    from visfocus.steer import Runner, ScaleLogits

    impl = "eager" if name == "eager" else ("sdpa" if name == "plain_sdpa" else "visfocus")
    model.set_attn_implementation({"": "sdpa", "text_config": impl, "vision_config": "sdpa"})
    image_cols = inputs["input_ids"] == IMAGE_PAD  # (1, S)
    runner = Runner(model, inputs, image_cols, drop_on_continue=("pixel_values", "image_grid_thw"),
                    prefill_position_ids=None, record_trace=(name == "trace"))
    edits = (ScaleLogits(alpha=0.5),) if name == "scaling_vis" else ()
    runner.generate(edits, max_new_tokens=new_tokens)
    if name == "trace":
        runner.recorder.finish(image_cols, inputs["attention_mask"], [])


CONFIGS = ("plain_sdpa", "visfocus_no_edit", "scaling_vis", "trace", "eager")


def measure(model, inputs: dict, configs, reps: int, new_tokens: int, device: str) -> dict[str, dict]:
    times = {c: [] for c in configs}
    peaks = {c: 0 for c in configs}
    for c in configs:  # warm-up, not timed
        run_config(model, inputs, c, new_tokens)
    for rep in range(reps):
        for c in (configs if rep % 2 == 0 else configs[::-1]):  # interleave, alternating order
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                run_config(model, inputs, c, new_tokens)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[c].append(time.perf_counter() - start)
            peaks[c] = max(peaks[c], mem.peak_bytes)
        print(f"  rep {rep + 1}/{reps} done", flush=True)
    return {c: {"median_s": statistics.median(times[c]), "peak_mb": peaks[c] / 2**20} for c in configs}


def report(title: str, results: dict[str, dict]) -> None:
    base = results["plain_sdpa"]
    print(f"\n{title}")
    print(f"{'config':<18}{'median s':>10}{'× plain':>9}{'peak MiB':>11}{'× plain':>9}")
    for c, r in results.items():
        mem_ratio = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
        print(f"{c:<18}{r['median_s']:>10.3f}{r['median_s'] / base['median_s']:>9.3f}{r['peak_mb']:>11.1f}"
              f"{mem_ratio:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visfocus bench", description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (28 = the real 2B model)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=1, help="tokens generated per answer")
    parser.add_argument("--long_tokens", type=int, default=4096, help="prompt length of the memory test (0: skip)")
    parser.add_argument("--long_layers", type=int, default=2, help="decoder layers for the long-sequence comparison")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.reps < 1:
        parser.error("--layers and --reps must be ≥ 1")
    _cpu_allocator_hint()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    inputs = {k: v.to(args.device) for k, v in build_inputs().items()}
    print(f"prompt: {inputs['input_ids'].shape[1]} tokens, {int((inputs['input_ids'] == IMAGE_PAD).sum())} image")
    for name in args.dtypes.split(","):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
        model = build_model(args.layers, dtype).to(args.device)
        feed = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
        print(f"\n[{name}] Qwen3-VL-2B architecture, {args.layers} decoder layers, "
              f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters; {args.reps} interleaved reps")
        report(f"{name}: seconds per answer ({args.new_tokens} new token(s)) and peak extra memory",
               measure(model, feed, CONFIGS, args.reps, args.new_tokens, args.device))
        del model
    if args.long_tokens:
        model = build_model(args.long_layers, torch.float32).to(args.device)
        text_after = max(26, args.long_tokens - 15 - 196 - 2)
        long_inputs = {k: v.to(args.device) for k, v in build_inputs(text_after=text_after).items()}
        print(f"\n[long] {long_inputs['input_ids'].shape[1]} tokens, {args.long_layers} decoder layers, float32")
        report("long sequence: peak extra memory (attention memory is per layer, so fewer layers suffice)",
               measure(model, long_inputs, ("plain_sdpa", "scaling_vis", "trace", "eager"), 1, 1, args.device))
    return 0
