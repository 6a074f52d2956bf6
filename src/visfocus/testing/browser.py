"""Headless Chromium for the browser tests, the app benchmark and the documentation's pictures: Debian's browser
(``apt-get install chromium``; Playwright's own downloads are not reachable on a closed network), headless and with
no background connections (on a closed network Chromium's own requests are refused)."""

from __future__ import annotations

import shutil

from visfocus.errors import VisfocusError

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """The Chromium on PATH, or None."""
    return shutil.which("chromium")


def launch(playwright):
    """A headless Chromium browser from a ``sync_playwright()`` context; one error when there is none."""
    path = chromium_path()
    if path is None:
        raise VisfocusError("needs Chromium on PATH (Debian: apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
