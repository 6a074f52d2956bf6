"""Side streams as rows (``visfocus.steer.rows``) on a POPE-shaped workload: seconds per answer of PAI (γ 1.1), M3ID
and VCD with their side stream decoded as rows of the main batch (one forward per token) and apart (its own
forwards, the fallback), against a plain answer measured in the same process, on the same samples, right before.
Random weights: the Qwen3-VL-2B architecture with fewer decoder layers (``visfocus.overhead.build_vlm``), float32.

    python benchmarks/stream_rows.py                                   # 8 layers, 2 images × 3 questions
    python benchmarks/stream_rows.py --layers 2 --images 1 --questions 2 --tokens 1,4

Each setting (shared image prefix or whole prompt, answer length) runs plain, then every method with rows, then
apart; the answers of rows and apart must agree (same text, first-token logits within the printed difference)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

METHODS = {"pai": {"gamma": 1.1}, "m3id": {}, "vcd": {}}
OBJECTS = ("dog", "dining table", "person", "traffic light", "car", "cell phone", "umbrella", "cup")


def samples_for(images: int, questions: int):
    from visfocus.testing import make_image

    out = []
    for i in range(images):
        image = make_image(448, 448, seed=i + 1)
        for j in range(questions):
            obj = OBJECTS[(i * questions + j) % len(OBJECTS)]
            out.append((image, f"Is there {'an' if obj[0] in 'aeiou' else 'a'} {obj} in the image?"))
    return out


def run(vlm, samples, method, tokens: int, share: bool, rows: bool) -> tuple[float, list]:
    """Seconds per answer (one sample per call, in order) and the answers."""
    vlm.adapter.side_stream_rows = rows  # what Batch.build hands the runner
    vlm.prefix_store.clear()
    answers = []
    start = time.perf_counter()
    for image, question in samples:
        answers += vlm.answer_batch([image], [question], method, max_new_tokens=tokens, share_prefix=share)
    seconds = (time.perf_counter() - start) / len(samples)
    vlm.prefix_store.clear()
    return seconds, answers


def agree(a: list, b: list) -> tuple[bool, float]:
    same = all(x.text == y.text for x, y in zip(a, b))
    delta = max(float((x.first_token_logits - y.first_token_logits).abs().max()) for x, y in zip(a, b))
    return same, delta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--tokens", default="1,16", help="answer lengths with a shared prefix, comma-separated")
    parser.add_argument("--whole_tokens", default="16", help="answer lengths with the whole prompt, comma-separated")
    parser.add_argument("--settings", default="shared,whole", help="shared (image prefix) and/or whole (prompt)")
    args = parser.parse_args(argv)
    import torch

    import visfocus as vf
    from visfocus.overhead import build_vlm

    torch.manual_seed(0)
    print(f"side streams as rows; {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpu")
    started = time.perf_counter()
    vlm = build_vlm(args.layers, torch.float32)
    samples = samples_for(args.images, args.questions)
    print(f"Qwen3-VL-2B architecture, {args.layers} decoder layers, random weights, float32; built in "
          f"{time.perf_counter() - started:.0f} s; {len(samples)} samples ({args.images} images × {args.questions} "
          f"questions), one per call; methods {', '.join(f'{m} {p}' for m, p in METHODS.items())}", flush=True)
    warm = samples_for(1, 1)
    for share in (False, True):  # warm-up, not timed
        run(vlm, warm, None, 2, share, True)
    rows_out = []
    for setting in args.settings.split(","):
        share = setting == "shared"
        for tokens in (int(t) for t in (args.tokens if share else args.whole_tokens).split(",")):
            plain, _ = run(vlm, samples, None, tokens, share, True)
            print(f"[{setting} prefix, {tokens} token(s)] plain: {plain:.3f} s/answer", flush=True)
            for name, params in METHODS.items():
                method = vf.method(name, **params)
                with_rows, answers_rows = run(vlm, samples, method, tokens, share, True)
                apart, answers_apart = run(vlm, samples, method, tokens, share, False)
                same, delta = agree(answers_rows, answers_apart)
                rows_out.append((setting, tokens, name, plain, with_rows, apart, same, delta))
                print(f"  {name:<5} rows {with_rows:.3f} s ({with_rows / plain:.2f}× plain)  apart {apart:.3f} s "
                      f"({apart / plain:.2f}× plain)  same text: {same}  max|Δ first logit| {delta:.1e}", flush=True)
    print("\nsetting  tokens  method  plain s  rows s  ×plain  apart s  ×plain  rows÷apart  same  max|Δlogit|")
    for setting, tokens, name, plain, with_rows, apart, same, delta in rows_out:
        print(f"{setting:<8} {tokens:>6}  {name:<6} {plain:>7.3f} {with_rows:>7.3f} {with_rows / plain:>7.2f} "
              f"{apart:>8.3f} {apart / plain:>7.2f} {with_rows / apart:>10.2f}  {'yes' if same else 'NO':<5} "
              f"{delta:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
