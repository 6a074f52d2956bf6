"""The app in a real browser: upload, ask, compare, see non-blank heatmaps, and move the layer slider to redraw."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visfocus as vf
from visfocus.errors import VisfocusError
from visfocus.testing.app_server import log_tail, running_app
from visfocus.testing.browser import chromium_path, launch

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
if chromium_path() is None:
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)", allow_module_level=True)

START_TIMEOUT_S = 180
PAGE_TIMEOUT_MS = 90_000
# The first heatmap image on the page once it has a source and is decoded (``old``: a source it must differ from).
HEATMAP_READY = """(old) => { const img = document.querySelector('.vf-heatmap img');
    return !!img && !!img.src && img.src !== old && img.complete && img.naturalWidth > 0; }"""
HEATMAPS_SHOWN = """(n) => [...document.querySelectorAll('.vf-heatmap img')]
    .filter(img => img.src && img.complete && img.naturalWidth > 0).length >= n"""


@dataclass
class App:
    url: str
    log_path: Path

    def log(self) -> str:
        return log_tail(self.log_path)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    try:
        with running_app(log_path, startup_s=START_TIMEOUT_S) as url:
            yield App(url, log_path)
    except VisfocusError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def app_log_on_failure(server: App):
    """On any failure inside, print the app's log (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        print(f"--- app log ({server.url}) ---\n{server.log()}")
        raise


def pixels(element) -> np.ndarray:
    """The element as rendered on the page, (H, W, 3) integers."""
    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).astype(np.int32)


def distinct_colours(picture: np.ndarray) -> int:
    return len(np.unique(picture.reshape(-1, 3), axis=0))


def test_upload_compare_shows_heatmaps_and_the_layer_slider_redraws_them(app, browser, tmp_path):
    scene = list(vf.task("scenes_test"))[0]
    upload = tmp_path / "scene.png"
    scene.image.save(upload)
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    with app_log_on_failure(app):
        page.goto(app.url, wait_until="domcontentloaded")
        page.wait_for_selector("#vf-run", state="visible")

        page.locator("#vf-image input[type=file]").set_input_files(str(upload))
        page.wait_for_selector("#vf-image img", state="visible")  # the upload reached the server and shows
        page.locator("#vf-question textarea").fill(scene.question)
        page.locator("#vf-run").click()

        # the default methods, baseline and adaptvis: one heatmap each
        page.wait_for_function(HEATMAPS_SHOWN, arg=2)
        assert "2 method(s) answered" in page.locator("#vf-message").inner_text()
        heatmap = page.locator(".vf-heatmap img").first
        before_src = heatmap.get_attribute("src")
        before = pixels(heatmap)
        # a colour-mapped overlay with its colour bar, not an empty or flat picture (the scene itself is a few
        # flat colours)
        assert before.shape[0] > 50 and before.shape[1] > 50
        assert before.std() > 10
        assert distinct_colours(before) > 200
        assert distinct_colours(before) > 2 * distinct_colours(np.asarray(scene.image.convert("RGB")))

        slider = page.locator("#vf-layer input[type=range]")
        number = page.locator("#vf-layer input[type=number]")
        layer = int(slider.input_value())
        key, expected = ("ArrowLeft", layer - 1) if layer > int(slider.get_attribute("min")) else \
            ("ArrowRight", layer + 1)
        slider.focus()
        page.keyboard.press(key)
        assert int(slider.input_value()) == expected
        page.wait_for_function(f"() => document.querySelector('#vf-layer input[type=number]').value === "
                               f"'{expected}'")
        assert int(number.input_value()) == expected

        page.wait_for_function(HEATMAP_READY, arg=before_src)  # redrawn: a new picture in the same place
        after = pixels(heatmap)
        assert after.shape == before.shape
        assert after.std() > 10
        assert np.abs(after - before).mean() > 1.0  # another layer's attention: visibly different pixels
        assert "2 method(s) answered" in page.locator("#vf-message").inner_text()  # the view changed, the answers stand

        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    page.close()
    assert (tmp_path / "app.png").is_file()
    with Image.open(tmp_path / "app.png") as shot:
        assert shot.width == 1500 and shot.height >= 1100
