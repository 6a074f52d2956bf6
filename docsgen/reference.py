"""Reference pages generated from visfocus's own declarations at build time (so they cannot drift)."""

from __future__ import annotations

GENERATORS: dict = {}


def generate(name: str) -> str:
    if name not in GENERATORS:
        raise KeyError(f"no generated reference named {name!r}; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]()
