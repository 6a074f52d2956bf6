"""Fault injection for the reliability tests: count the calls a run makes to the primitives of its write path
(``os.write``, ``os.fsync``, ``os.replace``, ``os.unlink`` — everything ``visfocus.durable`` and the run folder use),
and at the k-th one kill the process with SIGKILL (a write cut in half, or before/after the call) or fail it with
``ENOSPC``, as a full disk would.

``python -m visfocus.testing.faults kill K MODE [--rank R] -- ARGS...`` runs ``visfocus ARGS`` with that kill
planted (in rank R only, under torchrun); ``count FILE -- ARGS`` runs it whole and writes the number of calls
to FILE. Both are for tests: they patch ``os`` in the process that runs them."""

from __future__ import annotations

import argparse
import atexit
import errno
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PRIMITIVES = ("write", "fsync", "replace", "unlink")
MODES = ("before", "after")  # a kill before the k-th call, or right after it (a write: after half of its bytes)


def intercept(handler: Callable[..., Any]) -> Callable[[], None]:
    """Route every ``os.<primitive>`` call through ``handler(name, original, *args, **kwargs)``; returns the function
    that puts the originals back."""
    originals = {name: getattr(os, name) for name in PRIMITIVES}
    for name, original in originals.items():
        setattr(os, name, functools.partial(handler, name, original))

    def restore() -> None:
        for name, original in originals.items():
            setattr(os, name, original)

    return restore


class Counter:
    """Counts the write-path calls (``intercept(counter)``)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, name: str, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.calls.append(name)
        return original(*args, **kwargs)


def kill_at(k: int, mode: str) -> Callable[..., Any]:
    """A handler that SIGKILLs this process at the k-th call (1-based): ``before`` it, or ``after`` it — for a
    write, after writing the first half of its bytes, so the file holds a torn line."""
    count = [0]

    def handler(name: str, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] != k:
            return original(*args, **kwargs)
        if mode == "after":
            if name == "write":
                fd, data = args[0], bytes(args[1])
                original(fd, data[: max(1, len(data) // 2)])
            else:
                original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: SIGKILL was sent")

    return handler


def disk_full_at(k: int, names: tuple[str, ...] = ("write", "replace"), code: int = errno.ENOSPC
                 ) -> Callable[..., Any]:
    """A handler that fails the k-th call among ``names`` (1-based) with ``code`` — ENOSPC as a full disk does, or
    EROFS as a folder that turned read-only; the calls before and after it go through."""
    count = [0]

    def handler(name: str, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if name in names:
            count[0] += 1
            if count[0] == k:
                raise OSError(code, os.strerror(code))
        return original(*args, **kwargs)

    return handler


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m visfocus.testing.faults", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    kill = sub.add_parser("kill")
    kill.add_argument("k", type=int)
    kill.add_argument("mode", choices=MODES)
    kill.add_argument("--rank", type=int, default=0)
    count = sub.add_parser("count")
    count.add_argument("file", type=Path)
    args = parser.parse_args(argv[:split])
    rank = int(os.environ.get("RANK", "0"))
    if args.command == "kill" and rank == args.rank:
        intercept(kill_at(args.k, args.mode))
    elif args.command == "count":
        counter = Counter()
        intercept(counter)
        out = args.file.with_name(f"{args.file.name}.rank{rank}")
        atexit.register(lambda: out.write_text(str(len(counter.calls))))

    from visfocus.cli import main as visfocus_main

    return visfocus_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
