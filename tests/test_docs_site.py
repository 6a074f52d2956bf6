"""The documentation site builds strictly (no broken link, missing reference or warning), its generated reference
covers every public name, sub-command, method, task and family, and it works in a real browser: pages are not blank,
a navigation link reaches its page and the search finds ``answer_batch``."""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import visfocus
from docsgen.reference import sub_commands
from visfocus.benchmarks import TASKS
from visfocus.cli import build_parser
from visfocus.interventions import METHODS
from visfocus.models import ADAPTERS
from visfocus.testing.browser import chromium_path, launch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with ``mkdocs build --strict`` as CI and a user build it."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-6000:]}"
    return out


def page_text(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text(encoding="utf-8")


def anchors(text: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', text))


def test_every_public_name_is_in_the_api_reference(site):
    ids = anchors(page_text(site, "reference/api"))
    missing = [name for name in visfocus.__all__ if f"visfocus.{name}" not in ids]
    assert missing == []


def test_every_sub_command_and_flag_is_in_the_cli_reference(site):
    text = html.unescape(page_text(site, "reference/cli"))
    ids = anchors(text)
    for words, _, parser in sub_commands(build_parser()):
        assert "-".join(words) in ids, f"visfocus {' '.join(words)}"
        section = text.split(f'id="{"-".join(words)}"', 1)[1].split("<h2", 1)[0]
        for action in parser._actions:
            for flag in [] if isinstance(action, argparse._HelpAction) else action.option_strings:
                assert flag in section, f"visfocus {' '.join(words)} {flag}"


@pytest.mark.parametrize(("page", "names"), [("reference/methods", lambda: METHODS),
                                             ("reference/families", lambda: {a.family for a in ADAPTERS.values()}),
                                             ("reference/tasks", lambda: TASKS)],
                         ids=["methods", "families", "tasks"])
def test_the_generated_reference_lists_every_registered_name(site, page, names):
    text = page_text(site, page)
    ids = anchors(text)
    missing = [name for name in names() if name not in ids and f"<code>{name}</code>" not in text]
    assert missing == []


def test_every_method_section_states_its_fidelity(site):
    text = page_text(site, "reference/methods")
    for name in METHODS:
        section = text.split(f'id="{name}"', 1)[1].split("<h2", 1)[0]
        assert "Fidelity" in section, name
        for param in METHODS[name].Params.__dataclass_fields__:
            assert f"<code>{param}</code>" in section, f"{name}.{param}"


def test_the_built_site_has_the_pictures_its_pages_show(site):
    missing = []
    for page in site.rglob("*.html"):
        for src in re.findall(r'<img[^>]+src="([^":]+)"', page.read_text(encoding="utf-8")):
            if not (page.parent / src).resolve().is_file():
                missing.append(f"{page.relative_to(site)}: {src}")
    assert missing == []


# --- in a browser ------------------------------------------------------------------------------------------------
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    if chromium_path() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.mark.parametrize("path", ["", "reference/api/", "tutorials/where-it-looks/"])
def test_pages_open_and_are_not_blank(served, browser_page, path):
    browser_page.goto(f"{served}/{path}")
    heading = browser_page.locator("article h1").first.inner_text()
    assert heading.strip()
    assert len(browser_page.locator("article").inner_text()) > 500
    width = browser_page.evaluate("document.querySelector('article').getBoundingClientRect().width")
    assert width > 300


def test_a_navigation_link_reaches_its_page(served, browser_page):
    browser_page.goto(f"{served}/")
    link = browser_page.locator("nav.md-nav a.md-nav__link[href*='getting-started']").first
    link.click()
    browser_page.wait_for_url("**/getting-started/**")
    assert browser_page.locator("article h1").first.inner_text().strip().rstrip("¶") == "Getting started"


def test_the_search_finds_answer_batch(served, browser_page):
    browser_page.goto(f"{served}/")
    search = browser_page.locator("input.md-search__input")
    search.click()
    search.press_sequentially("answer_batch", delay=20)  # keystrokes: the search runs on key events
    results = browser_page.locator(".md-search-result__item")
    results.first.wait_for(timeout=30_000)
    assert "answer_batch" in browser_page.locator(".md-search-result").inner_text()
    results.first.locator("a").first.click()
    browser_page.wait_for_load_state()
    assert "answer_batch" in browser_page.locator("article").inner_text()


def test_every_method_parameter_says_what_it_means():
    """The method reference reads each parameter's meaning from the comment on its field: none may be missing."""
    from docsgen.reference import field_comments
    from visfocus.interventions.base import param_specs

    missing = [f"{name}.{spec.name}" for name, cls in METHODS.items() for spec in param_specs(name)
               if not field_comments(cls.Params).get(spec.name)]
    assert missing == []


def test_every_results_field_says_what_it_means():
    from docsgen.reference import field_comments
    from visfocus.run import results

    missing = [f"{cls.__name__}.{key}" for cls in (results.Results, results.TaskResult, results.NSamples,
                                                  results.Cost, results.Launch)
               for key, meaning in field_comments(cls).items() if not meaning]
    assert missing == []
