"""Data-parallel scaling of ``visfocus eval`` on one machine with N ≥ 2 GPUs: the same evaluation with 1 process and
with N processes (torchrun), samples per second and the scaling ratio, and a check that every prediction is identical.

    python benchmarks/scaling.py --model Qwen/Qwen3-VL-2B-Instruct --task scenes_test --limit 800 --processes 2
    python benchmarks/scaling.py --processes 4 --model_args dtype=bfloat16 --batch_size 8

Needs CUDA (each rank takes cuda:<local rank>); on a machine without N GPUs it says so and stops."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_eval(processes: int, args: argparse.Namespace, output: Path) -> float:
    """Seconds of one ``visfocus eval`` with ``processes`` ranks (model loading included, as a user pays it)."""
    eval_args = ["eval", "--tasks", args.task, "--limit", str(args.limit), "--batch_size", str(args.batch_size),
                 "--model_args", ",".join(filter(None, ["device=cuda", args.model_args])), "--output_path",
                 str(output)]
    if args.model:
        eval_args += ["--model", args.model]
    launcher = [sys.executable, "-m", "visfocus"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m",
         "visfocus"]
    started = time.perf_counter()
    subprocess.run([*launcher, *eval_args], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def predictions(output: Path, task: str) -> list[tuple]:
    (samples,) = output.rglob(f"samples_{task}.jsonl")
    return [(r["id"], r["output"], r["correct"]) for r in map(json.loads, samples.read_text().splitlines())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="Hub id or local path (default: the built-in organism)")
    parser.add_argument("--model_args", default="", help="extra KEY=VALUE,... (device=cuda is set)")
    parser.add_argument("--task", default="scenes_test")
    parser.add_argument("--limit", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < args.processes:
        print(f"needs {args.processes} CUDA devices; this machine has {torch.cuda.device_count()}")
        return 2
    with tempfile.TemporaryDirectory(prefix="visfocus-scaling-") as tmp:
        one_s = run_eval(1, args, Path(tmp) / "one")
        many_s = run_eval(args.processes, args, Path(tmp) / "many")
        same = predictions(Path(tmp) / "one", args.task) == predictions(Path(tmp) / "many", args.task)
    print(f"\n{args.task}, {args.limit} samples, batch {args.batch_size}, {torch.cuda.get_device_name(0)}")
    print(f"{'processes':>10}{'seconds':>10}{'samples/s':>12}{'× 1 process':>14}")
    for n, seconds in ((1, one_s), (args.processes, many_s)):
        print(f"{n:>10}{seconds:>10.1f}{args.limit / seconds:>12.2f}{one_s / seconds:>14.2f}")
    print(f"scaling efficiency {one_s / many_s / args.processes:.0%}; predictions identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
