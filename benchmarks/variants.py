"""Variants as columns, per answer: the plain answer, AdaptVis in one forward (its unedited row and both branches as
variant columns of the prompt's forward) and AdaptVis in separate passes (an unedited prefill, then the last prompt
token again), all from shared image prefixes, on a POPE-shaped workload (N images × Q questions, dataset order,
batch 1). Also k ScalingVis points answered side by side from one forward (``VLM.answer_variants``: a sweep's
trials of one sample), against the plain answer. Random weights from config: the Qwen3-VL-2B architecture with
``--layers`` decoder layers, or a mid-size one (``--hidden 1024``). Rounds interleave the configurations; the median
round's seconds per answer and peak memory above the model are reported, with ratios to the plain answer measured in
the same round. Answers are checked equal to the separate passes (same text, max |Δ first-token logit|).

    python benchmarks/variants.py                            # mid-size: 8 layers of width 1024
    python benchmarks/variants.py --hidden 2048              # the 2B architecture, 8 of its 28 layers
    python benchmarks/variants.py --max_new_tokens 4 --points 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from prefix_sharing import OPTIONS, questions_for  # noqa: E402  (the POPE-shaped questions)


def build(hidden: int, layers: int):
    """The 2B architecture (``visfocus.overhead.build_vlm``) with the text decoder's width set to ``hidden``."""
    import torch

    from visfocus import overhead

    if hidden != overhead.TEXT_2B["hidden_size"]:
        heads = hidden // 128
        overhead.TEXT_2B = {**overhead.TEXT_2B, "hidden_size": hidden, "intermediate_size": 3 * hidden,
                            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2)}
        overhead.VISION_2B = {**overhead.VISION_2B, "out_hidden_size": hidden}
    return overhead.build_vlm(layers, torch.float32)


def answer_all(vlm, samples, method, args, methods=None) -> tuple[float, int, list, float]:
    """Every sample in order (batch 1, shared prefixes): seconds, peak extra bytes, the answers, and the seconds of
    the questions after each image's first (their image prefix already stored: the issue's "consecutive
    questions")."""
    from visfocus.overhead import PeakMemory

    vlm.prefix_store.clear()
    answers, consecutive = [], 0.0
    with PeakMemory("cpu") as memory:
        start = time.perf_counter()
        for n, (image, question) in enumerate(samples):
            began = time.perf_counter()
            if methods is not None:  # several methods side by side: a sweep's trials
                answers.append(vlm.answer_variants([image], [question], methods, max_new_tokens=args.max_new_tokens,
                                                   options=[OPTIONS])[0][0])
            else:
                answers += vlm.answer_batch([image], [question], method, max_new_tokens=args.max_new_tokens,
                                            options=[OPTIONS])
            if n % args.questions:
                consecutive += time.perf_counter() - began
        seconds = time.perf_counter() - start
    vlm.prefix_store.clear()
    return seconds, memory.peak_bytes, answers, consecutive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="text decoder width (2048: the 2B architecture)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--questions", type=int, default=6, help="questions per image")
    parser.add_argument("--max_new_tokens", type=int, default=1)
    parser.add_argument("--points", type=int, default=3, help="ScalingVis points side by side (k)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    import visfocus as vf
    from visfocus.steer.variants import separate_passes
    from visfocus.testing import make_image

    print(f"variants as columns; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.machine()} · "
          f"{os.cpu_count()} CPUs · torch {torch.__version__} with {torch.get_num_threads()} threads")
    started = time.perf_counter()
    vlm = build(args.hidden, args.layers)
    params = sum(p.numel() for p in vlm.model.parameters()) / 1e9
    samples = [(make_image(448, 448, seed=i), q) for i in range(args.images)
               for q in questions_for(i, args.questions, " Answer yes or no.")]
    print(f"model: Qwen3-VL-2B architecture, text width {args.hidden}, {args.layers} decoder layers, random weights, "
          f"{params:.2f} B parameters, float32 (built in {time.perf_counter() - started:.0f} s); "
          f"{len(samples)} samples ({args.images} images × {args.questions} questions), batch 1, shared prefixes, "
          f"max_new_tokens {args.max_new_tokens}", flush=True)

    adaptvis = vf.method("adaptvis", threshold=0.5)
    points = [vf.method("scaling_vis", alpha=a) for a in (0.5, 0.8, 1.2, 1.5, 2.0, 3.0)[:args.points]]
    configs = {"plain": lambda: answer_all(vlm, samples, None, args),
               "adaptvis, one forward": lambda: answer_all(vlm, samples, adaptvis, args),
               "adaptvis, separate passes": lambda: _separate(vlm, samples, adaptvis, args, separate_passes),
               f"{args.points} scaling_vis points side by side": lambda: answer_all(vlm, samples, None, args, points)}
    for run in configs.values():  # warm-up
        run()
    model_mib = resident_mib()
    rounds: dict[str, list] = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, run in configs.items():
            rounds[name].append(run())
            print(f"  round {r + 1} {name}: {rounds[name][-1][0]:.2f} s", flush=True)

    def median(name: str, index: int) -> float:
        return statistics.median(result[index] for result in rounds[name])

    plain_s, plain_mem = median("plain", 0), median("plain", 1)
    print(f"\nper answer (median of {args.rounds} rounds); ratios against the plain answer of the same rounds. "
          f"'all': every answer, each image's first question building its prefix; 'consecutive': the questions after "
          f"each image's first (prefix stored). Peak memory: the process's resident memory above the model "
          f"({model_mib:.0f} MiB), and in all")
    print(f"{'configuration':<36}{'s/answer':>10}{'× plain':>9}{'consecutive ×':>15}"
          f"{'peak extra MiB':>16}{'× plain':>9}{'peak MiB':>10}{'× plain':>9}")
    for name in configs:
        seconds, memory = median(name, 0), median(name, 1)
        ratios = [result[0] / plain[0] for result, plain in zip(rounds[name], rounds["plain"])]
        later = [result[3] / plain[3] for result, plain in zip(rounds[name], rounds["plain"])]
        total, plain_total = model_mib + memory / 2**20, model_mib + plain_mem / 2**20
        print(f"{name:<36}{seconds / len(samples):>10.3f}{statistics.median(ratios):>9.3f}"
              f"{statistics.median(later):>15.3f}{memory / 2**20:>16.1f}"
              f"{memory / plain_mem if plain_mem > 0 else float('nan'):>9.2f}{total:>10.0f}{total / plain_total:>9.3f}")
    one, apart = rounds["adaptvis, one forward"][-1][2], rounds["adaptvis, separate passes"][-1][2]
    same = all(a.text == b.text and a.extras["branch"] == b.extras["branch"] for a, b in zip(one, apart))
    delta = max(float((a.first_token_logits - b.first_token_logits).abs().max()) for a, b in zip(one, apart))
    print(f"AdaptVis one forward vs separate passes: same answers and branches: {'yes' if same else 'NO'}; "
          f"max |Δ first-token logit| {delta:.2e}; plain {plain_s:.1f} s per round")
    return 0 if same else 1


def resident_mib() -> float:
    """The process's resident memory now (the model, once warmed up), MiB."""
    import gc

    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _separate(vlm, samples, method, args, separate_passes):
    with separate_passes():
        return answer_all(vlm, samples, method, args)


if __name__ == "__main__":
    # Large CPU allocations map and unmap pages directly, so sampled RSS shows each run's own peak.
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.exit(main())
