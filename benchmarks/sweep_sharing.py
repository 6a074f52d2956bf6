"""Sweep time with shared prefills ÷ without: AdaptVis's default grid (2 × 3 × (10 + 5 quantile) thresholds = 90
points, plus the baseline run that sets the quantiles) on the first N samples of a dev task, run by ``sweep`` once
with prefix sharing (every grid point of a sample starts from its one unedited prefill and re-runs only the last
prompt token) and once without (every point prefills every sample, as per-trial runs do). Both sweeps must choose the
same point with the same dev metrics; the script checks it.

    python benchmarks/sweep_sharing.py                                   # the organism, 40 scenes_dev samples
    python benchmarks/sweep_sharing.py --model 2b --layers 4 --reference_points 9
    python benchmarks/sweep_sharing.py --model 2b --layers 28 --limit 40 --reference_points 3

Two references run the baseline and k grid points (``--reference_points``, taken evenly from the grid; 0: all)
without sharing: as separate evaluations that each load the model (how ``visfocus sweep`` ran its trials before), and
sample-major with the model loaded once. Each reports its time per run and that time × (points + 1): every run
without sharing costs the same (the same samples, the same prefills).
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

import torch


def build(args: argparse.Namespace, folder: str):
    """The model, its checkpoint folder (a trial run as before loads it from there) and a description."""
    import visfocus as vf

    if args.model == "organism":
        from visfocus.organism import organism_path

        return vf.load(str(organism_path())), str(organism_path()), "the model organism (6 MB Qwen3-VL-shaped)"
    from visfocus.overhead import build_vlm

    vlm = build_vlm(args.layers, getattr(torch, args.dtype))
    vlm.model.save_pretrained(folder)
    vlm.processor.save_pretrained(folder)
    return vlm, folder, f"the Qwen3-VL-2B architecture, {args.layers} decoder layers, random weights"


def adaptvis_grid(base, dev_task: str, vlm) -> dict:
    """The default grid with the dev set's confidence quantiles, exactly as ``sweep`` extends it."""
    from visfocus.evaluate import evaluate
    from visfocus.interventions import METHODS
    from visfocus.sweep import dev_confidences

    baseline = evaluate(dataclasses.replace(base, tasks=[dev_task]), model=lambda: vlm)
    grid = {k: list(v) for k, v in METHODS["adaptvis"].search_grid.items()}
    return METHODS["adaptvis"].grid_with_dev_confidences(grid, dev_confidences(baseline, dev_task))


def timed_sweep(base, dev_task: str, grid: dict, vlm) -> tuple[float, dict]:
    from visfocus.sweep import sweep

    started = time.perf_counter()
    out = sweep(base, dev_task, None, "adaptvis", grid, model=lambda: vlm)
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["organism", "2b"], default="organism")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the 2B architecture")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--task", default="scenes_dev")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=2, help="a one-word answer and its end token")
    parser.add_argument("--reference_points", type=int, default=0,
                        help="grid points of the sweep without sharing (0: all)")
    args = parser.parse_args(argv)

    from visfocus.evaluate import RunConfig, evaluate, evaluate_many
    from visfocus.steer.variants import separate_passes
    from visfocus.sweep import grid_points

    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · "
          f"{os.cpu_count()} CPUs · torch {torch.__version__} with {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="visfocus-sweep-bench-") as tmp:
        vlm, path, described = build(args, f"{tmp}/model")
        model_args = {"dtype": args.dtype} if args.model == "2b" else {}
        print(f"model: {described}, {args.dtype if args.model == '2b' else 'float32'}; task {args.task}, first "
              f"{args.limit} samples, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}", flush=True)
        base = RunConfig(model=path, model_args=model_args, tasks=[args.task], limit=args.limit,
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        grid = adaptvis_grid(dataclasses.replace(base, output_path=f"{tmp}/grid"), args.task, vlm)
        points = grid_points(grid)
        n_runs = len(points) + 1  # every point and the baseline
        print(f"grid: {len(points)} points", flush=True)

        shared_s, shared = timed_sweep(dataclasses.replace(base, output_path=f"{tmp}/shared"), args.task, grid, vlm)
        print(f"with shared prefills: {shared_s:.1f} s for the baseline and {len(points)} points", flush=True)

        k = min(args.reference_points or len(points), len(points))
        chosen = [points[round(i * (len(points) - 1) / max(k - 1, 1))] for i in range(k)]
        whole = dataclasses.replace(base, share_prefix=False)
        runs = [whole] + [dataclasses.replace(whole, method="adaptvis", method_args=point) for point in chosen]
        # as visfocus sweep ran before: one evaluation per point, each loading the model, every sample prefilled
        started = time.perf_counter()
        separate = [evaluate(dataclasses.replace(run, output_path=f"{tmp}/separate")) for run in runs]
        separate_per_run = (time.perf_counter() - started) / len(runs)
        print(f"separate runs (model loaded per run): {separate_per_run:.2f} s per run", flush=True)
        # the model loaded once, no shared prefill, every run on its own forwards (no variant columns across runs)
        started = time.perf_counter()
        with separate_passes():
            evaluate_many([dataclasses.replace(run, output_path=f"{tmp}/once") for run in runs], model=lambda: vlm)
        once_per_run = (time.perf_counter() - started) / len(runs)
        print(f"model loaded once, no shared prefill: {once_per_run:.2f} s per run", flush=True)

    by_args = {str(t["args"]): t["metrics"] for t in shared["trials"]}
    metric = shared["metric"]
    same = all(by_args[str(point)] == {metric: out["tasks"][args.task]["metrics"][metric]}
               for point, out in zip(chosen, separate[1:]))
    measured = "" if k == len(points) else f"   (per run: measured on the baseline and {k} of {len(points)} points)"
    print(f"\nAdaptVis grid of {len(points)} points + the baseline on {args.limit} samples of {args.task}{measured}")
    print(f"{'':<44}{'seconds':>10}{'per run':>10}{'÷ shared':>10}")
    for name, per_run in (("separate runs, model loaded per run", separate_per_run),
                          ("one model, every sample prefilled per run", once_per_run),
                          ("one model, shared prefills (visfocus sweep)", shared_s / n_runs)):
        print(f"{name:<44}{per_run * n_runs:>10.1f}{per_run:>10.2f}{per_run * n_runs / shared_s:>9.1f}×")
    print(f"the same dev metric for every point run both ways: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
