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
import statistics
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
    parser.add_argument("--rounds", type=int, default=3)
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
        evaluate(dataclasses.replace(base, output_path=f"{tmp}/warm"), model=lambda: vlm)  # warm-up: images, kernels

        def one_at_a_time(config):
            with separate_passes():
                return sweep(config, args.task, None, "adaptvis", GRID, model=lambda: vlm)

        configs = {"one plain evaluation": lambda config: evaluate(config, model=lambda: vlm),
                   "sweep by rows (visfocus sweep)": lambda config: sweep(config, args.task, None, "adaptvis", GRID,
                                                                          model=lambda: vlm),
                   "sweep one trial after another (kept prompts)": one_at_a_time}
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        outs = {}
        for r in range(args.rounds):  # interleaved: each round runs every configuration once
            for i, (name, run) in enumerate(configs.items()):
                start = time.perf_counter()
                outs[name] = run(dataclasses.replace(base, output_path=f"{tmp}/round{r}-{i}"))
                seconds[name].append(time.perf_counter() - start)
                print(f"  round {r + 1} {name}: {seconds[name][-1]:.1f} s", flush=True)

    plain = seconds["one plain evaluation"]
    rows, apart = outs["sweep by rows (visfocus sweep)"], outs["sweep one trial after another (kept prompts)"]
    same = rows["trials"] == apart["trials"] and rows["chosen"] == apart["chosen"]
    print(f"\n12-point AdaptVis sweep (+ baseline) on {args.limit} samples of {args.task}; median of {args.rounds} "
          "interleaved rounds, ratios against the plain evaluation of the same round")
    print(f"{'':<52}{'seconds':>10}{'× plain evaluation':>20}")
    for name, times in seconds.items():
        ratio = statistics.median(t / p for t, p in zip(times, plain))
        print(f"{name:<52}{statistics.median(times):>10.1f}{ratio:>19.2f}×")
    by_rows = statistics.median(a / r for a, r in zip(seconds["sweep one trial after another (kept prompts)"],
                                                      seconds["sweep by rows (visfocus sweep)"]))
    print(f"sweep by rows ÷ one trial after another: {by_rows:.1f}× faster; the same trials and choice: "
          f"{'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
