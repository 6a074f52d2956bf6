"""The MkDocs hook of the site (``mkdocs.yml``: ``hooks``): fills each ``<!-- generated: NAME -->`` line of a page
with the reference text ``docsgen.reference`` builds from visfocus's registries at build time, and turns each
``<!-- gpu: NOTE -->`` marker (``docsgen.blocks``) into a visible note above its block."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `docsgen` itself, when mkdocs loads this file

from docsgen import reference  # noqa: E402

_GENERATED = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.M)
_GPU = re.compile(r"^<!--\s*gpu:\s*(.*?)\s*-->$", re.M)


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = _GENERATED.sub(lambda m: reference.generate(m.group(1)), markdown)
    return _GPU.sub(lambda m: f'!!! warning "Needs a GPU and the real weights: {m.group(1)}"\n', markdown)
