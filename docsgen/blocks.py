"""The code blocks of a documentation page and what the page says about each (pure functions).

Every ``bash`` or ``python`` block of a page under ``docs/`` is preceded, on the line before its fence, by one marker:

- ``<!-- runs here -->``: runs on a CPU in seconds (the built-in organism or a tiny fixture);
  ``tests/test_docs_pages.py`` runs the page's runnable blocks in order, in one fresh folder per page;
- ``<!-- gpu: about 40 min, 16 GB on one GPU -->``: needs a GPU and real weights; the site shows the note above the
  block and the tests only parse its ``visfocus`` commands;
- ``<!-- not run: why -->``: shown only (an install step, a sketch, a command that needs the Hub); parsed, not run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

LANGUAGES = ("bash", "python")
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"<!--\s*(runs here|gpu:|not run:)\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    language: str  # "bash" or "python"
    code: str
    kind: str | None  # "runs here", "gpu", "not run", or None when the line before the fence has no marker
    note: str  # the marker's text after its kind ("about 40 min, 16 GB on one GPU")
    line: int  # 1-based line of the opening fence


def blocks(text: str) -> list[Block]:
    """The page's ``bash`` and ``python`` blocks, each with the marker of the line before its fence."""
    found = []
    for match in _FENCE.finditer(text):
        language = match.group(1)
        if language not in LANGUAGES:
            continue
        line = text.count("\n", 0, match.start()) + 1
        previous = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(previous)
        kind = marker.group(1).rstrip(":") if marker else None
        found.append(Block(language, match.group(2), kind, marker.group(2) if marker else "", line))
    return found


def visfocus_commands(code: str) -> list[list[str]]:
    """Every ``visfocus ...`` command of a bash block, as argv after ``visfocus`` (continuations joined, comments and
    ``&&``-chained steps before it dropped)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
        except ValueError:
            continue
        argv: list[str] = []
        for token in tokens + [";"]:
            if token and set(token) <= set(";&|"):
                if argv and argv[0] == "visfocus":
                    commands.append(argv[1:])
                argv = []
            else:
                argv.append(token)
    return commands
