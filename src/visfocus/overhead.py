"""Overhead benchmark: the real Qwen3-VL-2B-Instruct architecture (public config values, random weights), one 448×448
image (196 image tokens) and a ~40-token question, answered through ``VLM.answer`` in one process with interleaved
repetitions. Prints median seconds per answer and peak extra memory for plain SDPA, the visfocus function without an
edit, trace capture, every registered method (its ``benchmark_points``), and eager attention, each as a ratio to
plain SDPA; then a long-sequence memory comparison, eager vs visfocus (with the methods that edit attention).
Run: ``python benchmarks/overhead.py`` or ``visfocus bench`` (``--layers 4`` for a quick run)."""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

# Public Qwen3-VL-2B-Instruct dimensions (see docs/pitfalls.md); token ids as in its tokenizer.
TEXT_2B = dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
               intermediate_size=6144, vocab_size=151936, tie_word_embeddings=True, rope_theta=5e6,
               max_position_embeddings=32768, rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20],
                                                            "mrope_interleaved": True})
VISION_2B = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                 spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
                 deepstack_visual_indexes=[5, 11, 17], num_position_embeddings=2304)
QUESTION = "Where is the red square in relation to the blue circle? Answer with left, right, above or below."
OPTIONS = ("left", "right", "above", "below")


def build_vlm(layers: int, dtype: torch.dtype):
    """A ``visfocus.VLM`` with the 2B architecture (random weights) and the tiny Qwen3-VL fixture's processor (its
    token ids are wired into the config; the image processor is allowed the 196-token grid of a 448×448 image)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from visfocus.api import VLM
    from visfocus.models.processor import load_processor
    from visfocus.models.qwen import Qwen3VLAdapter
    from visfocus.steer import register
    from visfocus.testing import tiny_model_dir

    register()
    processor = load_processor(str(tiny_model_dir("qwen3_vl")))
    processor.image_processor.size = {"shortest_edge": 64 * 32 * 32, "longest_edge": 256 * 32 * 32}
    tok = processor.tokenizer
    ids = {key: tok.convert_tokens_to_ids(t) for key, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen3VLConfig(text_config={**TEXT_2B, "num_hidden_layers": layers}, vision_config=VISION_2B,
                           tie_word_embeddings=True, **ids)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).to(dtype).eval()
    model.set_attn_implementation({"": "sdpa", "text_config": "visfocus", "vision_config": "sdpa"})
    model.generation_config.eos_token_id = None  # random weights: never stop early, every run decodes the same
    model.generation_config.pad_token_id = tok.pad_token_id
    return VLM(model, processor, Qwen3VLAdapter(model, processor))


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


# The rows that are not a method, name → (text attention implementation, record a trace); every registered method
# but the baseline (the plain rows) adds its ``benchmark_points`` between "trace" and "eager" (``configs``).
PLAIN_ROWS: dict[str, tuple[str, bool]] = {
    "plain_sdpa": ("sdpa", False),
    "visfocus_no_edit": ("visfocus", False),
    "trace": ("visfocus", True),
}
EAGER_ROWS: dict[str, tuple[str, bool]] = {"eager": ("eager", False)}
# the rows the long-sequence memory comparison always has; method rows join it when the method edits attention
LONG_ROWS = ("plain_sdpa", "trace", "eager")


@dataclass(frozen=True)
class Config:
    """One benchmark row: the text attention implementation, the method (registered name and parameters; None: no
    method) and whether a trace is recorded."""

    attention: str
    method: tuple[str, dict[str, Any]] | None = None
    trace: bool = False


def configs() -> dict[str, Config]:
    """Every row of the benchmark: the plain rows, then each registered method's ``benchmark_points`` (the baseline
    is the plain rows), then eager attention. A label used twice is an error in the methods' declarations."""
    from visfocus.interventions import METHODS

    out = {name: Config(impl, None, trace) for name, (impl, trace) in PLAIN_ROWS.items()}
    for name in sorted(METHODS):
        if name == "baseline":
            continue
        for label, params in METHODS[name].benchmark_points().items():
            if label in out or label in EAGER_ROWS:
                raise RuntimeError(f"benchmark row {label!r} of method '{name}' is already a row of the overhead "
                                   "benchmark; give its bench_points another label")
            out[label] = Config("visfocus", (name, dict(params)))
    out.update({name: Config(impl, None, trace) for name, (impl, trace) in EAGER_ROWS.items()})
    return out


def long_configs(chosen: list[str], table: dict[str, Config]) -> list[str]:
    """The chosen rows the long-sequence memory comparison runs: the plain ones and every method that acts on the
    attention (``Method.sites``), whose cost grows with the sequence."""
    from visfocus.interventions import METHODS

    return [c for c in chosen if c in LONG_ROWS or (table[c].method is not None
                                                    and "attention" in METHODS[table[c].method[0]].sites)]


def run_config(vlm, image, question: str, config: Config, new_tokens: int) -> None:
    import visfocus as vf

    vlm.model.set_attn_implementation({"": "sdpa", "text_config": config.attention, "vision_config": "sdpa"})
    m = vf.method(config.method[0], **config.method[1]) if config.method else None
    # every answer prefilled whole: the cost of one answer, not of one sharing a stored prefix (prefix_sharing.py)
    vlm.answer(image, question, method=m, max_new_tokens=new_tokens, trace=config.trace, options=OPTIONS,
               share_prefix=False)


def measure(vlm, image, question: str, table: dict[str, Config], reps: int, new_tokens: int,
            device: str) -> dict[str, dict]:
    """Median seconds and peak extra memory of each row of ``table`` (name → Config), interleaved."""
    configs = list(table)
    times = {c: [] for c in configs}
    peaks = {c: 0 for c in configs}
    for c in configs:  # warm-up, not timed
        run_config(vlm, image, question, table[c], new_tokens)
    for rep in range(reps):
        for c in (configs if rep % 2 == 0 else configs[::-1]):  # interleave, alternating order
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                run_config(vlm, image, question, table[c], new_tokens)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``visfocus bench`` and ``python benchmarks/overhead.py``."""
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (28 = the real 2B model)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--configs", help="comma-separated rows (default: all): plain_sdpa, visfocus_no_edit, "
                        "trace, eager and every registered method's benchmark points (visfocus list methods)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=1, help="tokens generated per answer")
    parser.add_argument("--long_tokens", type=int, default=4096, help="prompt length of the memory test (0: skip)")
    parser.add_argument("--long_layers", type=int, default=2, help="decoder layers for the long-sequence comparison")
    parser.add_argument("--device", help="default: cuda when available, else cpu")


def run(args: argparse.Namespace) -> int:
    """Measure and print; every setting is checked before a model is built."""
    from visfocus.errors import VisfocusError
    from visfocus.testing import make_image

    table = configs()
    configs_given = [c.strip() for c in (args.configs or ",".join(table)).split(",") if c.strip()]
    unknown = [c for c in configs_given if c not in table]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if unknown or any(d not in ("float32", "bfloat16") for d in dtypes):
        raise VisfocusError(f"unknown configs {unknown} or dtypes {dtypes}: configs are {', '.join(table)}; "
                            f"dtypes float32, bfloat16")
    for name in ("layers", "reps", "new_tokens", "long_layers"):
        if getattr(args, name) < 1:
            raise VisfocusError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.long_tokens < 0:
        raise VisfocusError(f"--long_tokens must be ≥ 0, got {args.long_tokens}")
    chosen = ["plain_sdpa", *[c for c in configs_given if c != "plain_sdpa"]]  # the unit of every ratio
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _cpu_allocator_hint()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    image = make_image(448, 448, seed=0)
    for name in dtypes:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
        vlm = build_vlm(args.layers, dtype)
        vlm.model.to(args.device)
        prompt = vlm.adapter.encode([image], [QUESTION])["input_ids"]
        print(f"\n[{name}] Qwen3-VL-2B architecture, {args.layers} decoder layers"
              f"{' (reduced: --layers)' if args.layers != 28 else ''}, "
              f"{sum(p.numel() for p in vlm.model.parameters()) / 1e9:.2f} B parameters; prompt {prompt.shape[1]} "
              f"tokens ({int((prompt == vlm.adapter.image_token_id).sum())} image); {args.reps} interleaved reps")
        report(f"{name}: seconds per answer ({args.new_tokens} new token(s)) and peak extra memory",
               measure(vlm, image, QUESTION, {c: table[c] for c in chosen}, args.reps, args.new_tokens,
                       args.device))
        del vlm
    if args.long_tokens:
        vlm = build_vlm(args.long_layers, torch.float32)
        vlm.model.to(args.device)
        words = ("left right above below cup table dog cat " * (args.long_tokens // 8)).split()
        question = QUESTION
        while vlm.adapter.encode([image], [question])["input_ids"].shape[1] < args.long_tokens:
            question = " ".join(words[: len(question.split()) + 256]) + " " + QUESTION
        n = vlm.adapter.encode([image], [question])["input_ids"].shape[1]
        print(f"\n[long] {n} tokens, {args.long_layers} decoder layers, float32")
        report("long sequence: peak extra memory (attention memory is per layer, so fewer layers suffice)",
               measure(vlm, image, question, {c: table[c] for c in long_configs(chosen, table)}, 1, 1, args.device))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/overhead.py [flags]`` (``visfocus bench`` is the same through the CLI)."""
    from visfocus.errors import VisfocusError

    parser = argparse.ArgumentParser(prog="visfocus bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except VisfocusError as err:
        parser.exit(2, f"visfocus: error: {err}\n")
