"""The app's pure parts: view functions over stored trace arrays (head choice, sinks, grid cells, tokens,
pixels, layer × head grids, cache keys) and the overlay picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visfocus.app import render, views
from visfocus.errors import VisfocusError
from visfocus.testing import make_image

# (L=2, H=2, N=3): attention of each layer's and head's last prompt row on three image tokens
ATTENTION = np.array([[[0.1, 0.2, 0.3], [0.3, 0.0, 0.5]],
                      [[0.4, 0.1, 0.0], [0.2, 0.2, 0.2]]])
# a 2×3 view whose cells hold the six tokens in reverse order, over x 10..40 and y 0..40 of a 60×40 image
VIEW = {"name": "base", "rows": 2, "cols": 3, "region": [10, 0, 40, 40], "image_size": [60, 40],
        "index": [5, 4, 3, 2, 1, 0]}



# --- views: image hash and cache key ------------------------------------------------------------------------------
def test_image_hash_is_stable_and_depends_only_on_the_pixels(tmp_path):
    image = make_image(40, 30, seed=1)
    image.save(tmp_path / "copy.png")
    with Image.open(tmp_path / "copy.png") as reloaded:
        assert views.image_hash(reloaded) == views.image_hash(image) == views.image_hash(image.copy())
    changed = image.copy()
    changed.putpixel((0, 0), (0, 0, 0) if image.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
    assert views.image_hash(changed) != views.image_hash(image)
    same_bytes_other_size = Image.frombytes("RGB", (30, 40), image.tobytes())
    assert views.image_hash(same_bytes_other_size) != views.image_hash(image)
    assert len(views.image_hash(image)) == 40  # sha1 hex


def test_cache_key_ignores_parameter_order_and_changes_with_every_part():
    base = ("digest", "q?", ["left", "right"], "adaptvis", {"alpha_low": 0.3, "threshold": 0.2})
    key = views.cache_key(*base)
    assert views.cache_key("digest", "q?", ["left", "right"], "adaptvis", {"threshold": 0.2, "alpha_low": 0.3}) == key
    changed = [("other", *base[1:]), (base[0], "q!", *base[2:]), (*base[:2], ["left"], *base[3:]),
               (*base[:3], "scaling_vis", base[4]), (*base[:4], {"alpha_low": 0.4, "threshold": 0.2}),
               (*base[:4], {"alpha_low": 0.3})]
    keys = {views.cache_key(*args) for args in changed}
    assert len(keys) == len(changed) and key not in keys
    assert views.cache_key("d", "q", None, "baseline", {}) == views.cache_key("d", "q", [], "baseline", {})


# --- views: attention rows and sinks ----------------------------------------------------------------------------
def test_head_row_takes_the_head_mean_max_or_one_head():
    np.testing.assert_allclose(views.head_row(ATTENTION, 0, "mean"), [0.2, 0.1, 0.4])
    np.testing.assert_allclose(views.head_row(ATTENTION, 0, "max"), [0.3, 0.2, 0.5])
    np.testing.assert_allclose(views.head_row(ATTENTION, 1, 0), [0.4, 0.1, 0.0])
    np.testing.assert_allclose(views.head_row(ATTENTION, 1, 1), [0.2, 0.2, 0.2])


@pytest.mark.parametrize(("attention", "layer", "head", "message"), [
    (ATTENTION, 2, "mean", "layer 2 out of range 0..1"),
    (ATTENTION, -1, "mean", "layer -1 out of range"),
    (ATTENTION, 0, 2, "head 2 out of range 0..1"),
    (ATTENTION, 0, -1, "head -1 out of range"),
    (ATTENTION[0], 0, "mean", r"must be \(layers, heads, tokens\)"),
])
def test_head_row_rejects_a_layer_or_head_out_of_range(attention, layer, head, message):
    with pytest.raises(VisfocusError, match=message):
        views.head_row(attention, layer, head)


def test_mask_sinks_masks_exactly_the_top_k_and_lists_them_by_decreasing_attention():
    row = np.array([0.1, 0.5, 0.05, 0.3, 0.2])
    masked, sinks = views.mask_sinks(row, 2)
    assert sinks.tolist() == [1, 3]
    assert np.isnan(masked).tolist() == [False, True, False, True, False]
    np.testing.assert_array_equal(masked[[0, 2, 4]], [0.1, 0.05, 0.2])
    np.testing.assert_array_equal(row, [0.1, 0.5, 0.05, 0.3, 0.2])  # the input is left alone
    everything, order = views.mask_sinks(row, 9)
    assert order.tolist() == [1, 3, 4, 0, 2] and np.isnan(everything).all()


def test_mask_sinks_with_k_zero_changes_nothing():
    row = np.array([0.1, 0.5, 0.05])
    masked, sinks = views.mask_sinks(row, 0)
    np.testing.assert_array_equal(masked, row)
    assert sinks.size == 0 and masked is not row


# --- views: grid cells, tokens and pixels -----------------------------------------------------------------------
def test_view_grid_places_each_token_in_its_cell_by_the_view_index():
    row = np.array([10.0, 11, 12, 13, 14, 15])
    np.testing.assert_array_equal(views.view_grid(row, VIEW), [[15, 14, 13], [12, 11, 10]])


def test_cell_token_and_token_cell_are_inverse():
    for r in range(2):
        for c in range(3):
            token = views.cell_token(VIEW, r, c)
            assert token == VIEW["index"][r * 3 + c]
            assert views.token_cell(VIEW, token) == (r, c)
    assert views.cell_token(VIEW, 1, 0) == 2


def test_token_cell_is_none_for_a_token_the_view_does_not_hold():
    assert views.token_cell(VIEW, 6) is None


@pytest.mark.parametrize(("row", "col"), [(2, 0), (0, 3), (-1, 0)])
def test_cell_token_rejects_a_cell_outside_the_grid(row, col):
    with pytest.raises(VisfocusError, match="outside the 2×3 grid"):
        views.cell_token(VIEW, row, col)


@pytest.mark.parametrize(("x", "y", "cell"), [
    (10, 0, (0, 0)), (19.9, 19.9, (0, 0)), (20, 20, (1, 1)), (39.9, 39.9, (1, 2)), (35, 5, (0, 2)),
    (9.9, 5, None), (40, 5, None), (55, 30, None), (15, 40, None), (15, -1, None),  # outside the cropped region
])
def test_pixel_cell_maps_image_pixels_into_the_view_region_only(x, y, cell):
    assert views.pixel_cell(VIEW, x, y) == cell


# --- views: layer × head grids, top-k, flips --------------------------------------------------------------------
def test_layer_head_mass_sums_each_layer_and_head_over_the_image_tokens():
    np.testing.assert_allclose(views.layer_head_mass(ATTENTION), [[0.6, 0.8], [0.5, 0.6]])


def test_token_by_layer_head_gives_every_layer_and_head_on_one_token():
    np.testing.assert_allclose(views.token_by_layer_head(ATTENTION, 2), [[0.3, 0.5], [0.0, 0.2]])
    np.testing.assert_allclose(views.token_by_layer_head(ATTENTION, 0), [[0.1, 0.3], [0.4, 0.2]])
    for token in (3, -1):
        with pytest.raises(VisfocusError, match="out of range 0..2"):
            views.token_by_layer_head(ATTENTION, token)


def test_top_k_lists_the_most_probable_tokens_first_and_keeps_ties_in_order():
    assert views.top_k([0.1, 0.5, 0.2, 0.2], ["a", "b", "c", "d"], k=3) == [("b", 0.5), ("c", 0.2), ("d", 0.2)]
    assert views.top_k([0.3, 0.7], ["x", "y"], k=5) == [("y", 0.7), ("x", 0.3)]


@pytest.mark.parametrize(("gold", "baseline_correct", "correct", "mark"), [
    ("left", False, True, "fixed"), ("left", True, False, "broken"), ("left", True, True, ""),
    ("left", False, False, ""), (None, False, True, ""), ("left", None, True, ""), ("left", False, None, ""),
])
def test_flip_marks_a_changed_verdict_against_the_baseline(gold, baseline_correct, correct, mark):
    assert views.flip(gold, baseline_correct, correct) == mark


# --- render ------------------------------------------------------------------------------------------------------
def test_overlay_keeps_the_photo_where_nothing_is_drawn_and_colours_the_rest():
    photo = make_image(60, 40, seed=3)
    grid = np.array([[0.1, np.nan, 0.3], [0.4, 0.5, 0.6]])  # the cell (0, 1) is a masked sink
    picture = render.overlay(photo, grid, VIEW, "jet", 0.5)
    assert picture.size == (60 + render.BAR_WIDTH, 40)
    drawn = np.asarray(picture)[:, :60].astype(int)  # (40, 60, 3)
    original = np.asarray(photo).astype(int)
    kept = np.zeros((40, 60), dtype=bool)
    kept[:, :10] = kept[:, 40:] = True  # outside the view's region
    kept[:20, 20:30] = True  # the nan cell
    np.testing.assert_array_equal(drawn[kept], original[kept])
    assert (drawn[~kept] != original[~kept]).any(axis=-1).all()


def test_overlay_of_another_layer_is_another_picture():
    photo = make_image(60, 40, seed=3)
    attention = np.stack([np.linspace(0, 1, 12).reshape(2, 6), np.linspace(1, 0, 12).reshape(2, 6)])  # (2, 2, 6)
    layer0, layer1 = (render.overlay(photo, views.view_grid(views.head_row(attention, layer), VIEW), VIEW)
                      for layer in (0, 1))
    assert np.asarray(layer0).shape == np.asarray(layer1).shape
    assert not np.array_equal(np.asarray(layer0), np.asarray(layer1))
