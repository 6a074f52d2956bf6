"""The documentation's commands are real: every code block says whether it runs here, needs a GPU or is only shown;
every ``visfocus`` command in the README and the site parses with the CLI as it is; together they show every
sub-command; and the blocks marked runnable run, in order, page by page, as a reader would run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from docsgen.blocks import blocks, visfocus_commands
from docsgen.run import run_page
from visfocus.cli import build_parser
from visfocus.interventions import METHODS, parse_method_args

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "README.md")
SHOWN = [ROOT / "README.md", *PAGES]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_code_block_of_the_site_is_marked():
    unmarked = [f"{rel(page)}:{b.line}" for page in PAGES for b in blocks(page.read_text()) if b.kind is None]
    assert unmarked == [], "add <!-- runs here -->, <!-- gpu: … --> or <!-- not run: … --> before each"


def test_every_gpu_block_says_what_it_costs():
    vague = [f"{rel(page)}:{b.line}" for page in PAGES for b in blocks(page.read_text())
             if b.kind == "gpu" and not any(unit in b.note for unit in ("GB", "GiB"))]
    assert vague == []


COMMANDS = [(rel(page), argv) for page in SHOWN for b in blocks(page.read_text())
            if b.language == "bash" for argv in visfocus_commands(b.code)]


@pytest.mark.parametrize(("page", "argv"), COMMANDS, ids=[f"{p}: {' '.join(a)[:50]}" for p, a in COMMANDS])
def test_every_shown_command_parses(page, argv, capsys):
    """Parsing only (no model loads): the pages and the CLI cannot drift apart. Method arguments are read as the
    command would read them."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: `visfocus {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
    method = getattr(args, "method", None)
    if method in METHODS and method != "baseline":  # (a page's own method, registered by its file, is not here)
        parse_method_args(method, getattr(args, "method_args", None) or "")


def test_a_drifted_command_is_caught(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(visfocus_commands("visfocus bench --no_such_flag 4")[0])


def test_the_pages_show_every_sub_command():
    from docsgen.reference import sub_commands

    shown = {tuple(argv[:len(words)]) for _, argv in COMMANDS for words, _, _ in sub_commands(build_parser())}
    missing = [" ".join(words) for words, _, _ in sub_commands(build_parser()) if words not in shown]
    assert missing == []


RUNNABLE = [page for page in PAGES if any(b.kind == "runs here" for b in blocks(page.read_text()))]


@pytest.mark.docs_commands
@pytest.mark.parametrize("page", RUNNABLE, ids=rel)
def test_the_runnable_blocks_of_the_page_run(page, tmp_path):
    run_page(page, tmp_path, log=lambda line: None)
