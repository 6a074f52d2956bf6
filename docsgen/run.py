"""Run a documentation page's runnable blocks (``<!-- runs here -->``, see ``docsgen.blocks``) in order, in one fresh
folder that holds links to the repository's ``src``, ``docs``, ``benchmarks`` and ``tests`` (so a page may name
``src/visfocus/organism/weights`` or ``docs/assets/scene.png`` as a user in a clone would).

    python -m docsgen.run docs/tutorials/where-it-looks.md [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docsgen.blocks import blocks

REPO = Path(__file__).resolve().parents[1]
LINKED = ("src", "docs", "benchmarks", "tests")


class BlockFailed(RuntimeError):
    pass


def run_page(page: Path, folder: Path, timeout: float = 300.0, log=print) -> list[float]:
    """Run the runnable blocks of ``page`` in ``folder``; the seconds each took. Raises ``BlockFailed`` with the
    block's output when one exits non-zero."""
    for name in LINKED:
        if not (folder / name).exists():
            (folder / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bin_dir = str(Path(sys.executable).parent)  # the interpreter's venv: its `visfocus` and `python`
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    seconds = []
    for block in blocks(page.read_text(encoding="utf-8")):
        if block.kind != "runs here":
            continue
        argv = ["bash", "-euo", "pipefail", "-c", block.code] if block.language == "bash" else \
            [sys.executable, "-c", block.code]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        seconds.append(time.perf_counter() - start)
        log(f"{page.name}:{block.line}: {seconds[-1]:.1f} s, exit {done.returncode}")
        if done.returncode != 0:
            raise BlockFailed(f"{page}:{block.line}: the {block.language} block exited {done.returncode}\n"
                              f"--- block\n{block.code}--- stdout\n{done.stdout[-4000:]}\n"
                              f"--- stderr\n{done.stderr[-4000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            run_page(args.page.resolve(), args.keep)
        else:
            with tempfile.TemporaryDirectory() as folder:
                run_page(args.page.resolve(), Path(folder))
    except BlockFailed as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
