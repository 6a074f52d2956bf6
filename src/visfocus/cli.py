"""Command line: ``visfocus eval | list | bench``. Argument handling only; the work lives in the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from visfocus.errors import VisfocusError


def _eval(args: argparse.Namespace) -> int:
    import visfocus as vf
    from visfocus.methods import parse_method_args
    from visfocus.smoke import SMOKE_NOTE, smoke_model_path, smoke_samples

    if args.model is None:
        print(f"[visfocus] {SMOKE_NOTE}", file=sys.stderr)
        model_path = smoke_model_path()
    else:
        model_path = args.model
    method = None
    if args.method and args.method != "baseline":
        method = vf.method(args.method, **parse_method_args(args.method, args.method_args))
    if args.limit is not None and args.limit < 1:
        raise VisfocusError(f"--limit must be ≥ 1, got {args.limit}")
    if args.batch_size < 1:
        raise VisfocusError(f"--batch_size must be ≥ 1, got {args.batch_size}")
    vlm = vf.load(model_path, dtype=args.dtype, device=args.device)
    samples = smoke_samples(args.limit)
    out_file = None
    if args.output_path:
        Path(args.output_path).mkdir(parents=True, exist_ok=True)
        out_file = open(Path(args.output_path) / "samples_smoke.jsonl", "a", encoding="utf-8")
    try:
        for i in range(0, len(samples), args.batch_size):
            chunk = samples[i : i + args.batch_size]
            answers = vlm.answer_batch([s[1] for s in chunk], [s[2] for s in chunk], method,
                                       max_new_tokens=args.max_new_tokens)
            for (sample_id, _, question), ans in zip(chunk, answers):
                row = {"id": sample_id, "question": question, "output": ans.text, "confidence": ans.confidence,
                       "alpha_used": ans.alpha_used, "cost": ans.cost}
                print(json.dumps(row))
                if out_file:
                    out_file.write(json.dumps(row) + "\n")
                    out_file.flush()
            print(f"[visfocus] {min(i + args.batch_size, len(samples))}/{len(samples)} samples", file=sys.stderr)
    finally:
        if out_file:
            out_file.close()
    return 0


def _list(args: argparse.Namespace) -> int:
    import visfocus as vf
    from visfocus.models import ADAPTERS

    print("methods:")
    for name, params in vf.methods().items():
        print(f"  {name}" + (f"  ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else ""))
    print("model families: " + ", ".join(sorted({cls.family for cls in ADAPTERS.values()})))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from visfocus.bench import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visfocus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="answer questions with a model, optionally under a method")
    ev.add_argument("--model", default=None, help="Hub id or local path (default: the built-in smoke model)")
    ev.add_argument("--method", default=None, help="a registered method (visfocus list)")
    ev.add_argument("--method_args", default="", help="KEY=VALUE,... for the method, e.g. alpha=0.5")
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--batch_size", type=int, default=2)
    ev.add_argument("--max_new_tokens", type=int, default=8)
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--output_path", default=None, help="folder for samples_*.jsonl")
    ev.set_defaults(func=_eval)

    ls = sub.add_parser("list", help="registered methods and model families")
    ls.set_defaults(func=_list)

    bench = sub.add_parser("bench", help="overhead benchmark (see benchmarks/overhead.py --help)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VisfocusError as err:
        print(f"visfocus: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
