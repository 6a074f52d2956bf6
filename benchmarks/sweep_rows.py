"""A sweep by rows against one plain evaluation: AdaptVis's 12-point grid (α_low 0.5|0.8 × α_high 1.2|1.5|2.0 ×
threshold 0.3|0.5; with the thresholds given, no dev-confidence run) on the first N samples of a dev task, run by
``visfocus sweep`` (dev only) with every grid point and the baseline of a batch answered from one forward (variant
columns) and their decoding as rows of one generate; then the same sweep one trial after another
(``variants.separate_passes``: each point re-runs the last prompt token on the kept prompt) and one plain evaluation,
all with the model loaded once, in one process. Both sweeps must give the same trials; the script checks it.

    python benchmarks/sweep_rows.py                              # the model organism
    python benchmarks/sweep_rows.py --model mid                  # Qwen3-VL-2B architecture, width 1024, 8 layers
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.dirname(__file__))

GRID = {"alpha_low": [0.5, 0.8], "alpha_high": [1.2, 1.5, 2.0], "threshold": [0.3, 0.5]}


def build(args: argparse.Namespace, folder: str):
    """The model, its checkpoint folder and a description."""
    import visfocus as vf

    if args.model == "organism":
        from visfocus.organism import organism_path

        return vf.load(str(organism_path())), str(organism_path()), "the model organism (Qwen3-VL-shaped, trained)"
    from variants import build as build_qwen

    vlm = build_qwen(args.hidden, args.layers)
    vlm.model.save_pretrained(folder)
    vlm.processor.save_pretrained(folder)
    return vlm, folder, (f"the Qwen3-VL-2B architecture, text width {args.hidden}, {args.layers} decoder layers, "
                         "random weights, float32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["organism", "mid"], default="organism")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--task", default="scenes_dev")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=2, help="a one-word answer and its end token")
    args = parser.parse_args(argv)

    import torch

    from visfocus.evaluate import RunConfig, evaluate
    from visfocus.steer.variants import separate_passes
    from visfocus.sweep import grid_points, sweep

    print(f"sweep by rows; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.machine()} · {os.cpu_count()} CPUs · "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="visfocus-sweep-rows-") as tmp:
        vlm, path, described = build(args, f"{tmp}/model")
        base = RunConfig(model=path, tasks=[args.task], limit=args.limit, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens)
        print(f"model: {described}; task {args.task}, first {args.limit} samples, batch {args.batch_size}, "
              f"max_new_tokens {args.max_new_tokens}; grid: {len(grid_points(GRID))} points + the baseline",
              flush=True)
        evaluate(dataclasses.replace(base, output_path=f"{tmp}/warm", limit=2), model=lambda: vlm)  # warm-up

        def timed(name: str, run):
            start = time.perf_counter()
            out = run(dataclasses.replace(base, output_path=f"{tmp}/{name}"))
            seconds = time.perf_counter() - start
            print(f"  {name}: {seconds:.1f} s", flush=True)
            return seconds, out

        plain_s, _ = timed("plain", lambda config: evaluate(config, model=lambda: vlm))
        rows_s, rows = timed("rows", lambda config: sweep(config, args.task, None, "adaptvis", GRID,
                                                          model=lambda: vlm))

        def one_at_a_time(config):
            with separate_passes():
                return sweep(config, args.task, None, "adaptvis", GRID, model=lambda: vlm)

        apart_s, apart = timed("apart", one_at_a_time)
        plain_again_s, _ = timed("plain-again", lambda config: evaluate(config, model=lambda: vlm))

    plain_mean = (plain_s + plain_again_s) / 2
    same = rows["trials"] == apart["trials"] and rows["chosen"] == apart["chosen"]
    print(f"\n12-point AdaptVis sweep (+ baseline) on {args.limit} samples of {args.task}; one plain evaluation "
          f"{plain_s:.1f} s before and {plain_again_s:.1f} s after the sweeps (mean {plain_mean:.1f} s)")
    print(f"{'':<52}{'seconds':>10}{'× plain evaluation':>20}")
    for name, seconds in (("one plain evaluation", plain_mean), ("sweep by rows (visfocus sweep)", rows_s),
                          ("sweep one trial after another (kept prompts)", apart_s)):
        print(f"{name:<52}{seconds:>10.1f}{seconds / plain_mean:>19.2f}×")
    print(f"sweep by rows ÷ one trial after another: {apart_s / rows_s:.1f}× faster; the same trials and choice: "
          f"{'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
