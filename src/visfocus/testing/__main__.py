"""Build tiny fixtures from the command line: ``python -m visfocus.testing build FAMILY|all DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers.utils import logging as hf_logging

from visfocus.testing.fixtures import FAMILIES, build_tiny


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visfocus.testing", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build one fixture into DIR, or all of them into DIR/FAMILY")
    build.add_argument("family", choices=[*FAMILIES, "all"])
    build.add_argument("dir", type=Path)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--weight_std", type=float, default=0.15)
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    families = FAMILIES if args.family == "all" else (args.family,)
    for family in families:
        out = args.dir / family if args.family == "all" else args.dir
        print(build_tiny(family, out, seed=args.seed, weight_std=args.weight_std))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
