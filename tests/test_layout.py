"""Adapters: where the image tokens are, their token grids and the pixel box each token covers."""

from __future__ import annotations

import numpy as np
import pytest

from visfocus.models.layout import ImageView, contiguous_segments
from visfocus.testing import FAMILIES

QUESTION = "Where is the cup?"


def test_contiguous_segments_split_runs():
    runs = contiguous_segments(np.array([3, 4, 5, 9, 10, 20]))
    assert [r.tolist() for r in runs] == [[3, 4, 5], [9, 10], [20]]
    assert contiguous_segments(np.array([], dtype=int)) == []


def test_view_boxes_tile_the_region_row_major():
    view = ImageView("image", np.arange(6), rows=2, cols=3, region=(0, 0, 300, 100), image_size=(300, 100))
    boxes = view.boxes()
    assert boxes.shape == (6, 4)
    assert boxes[0].tolist() == [0, 0, 100, 50]
    assert boxes[2].tolist() == [200, 0, 300, 50]  # end of the first row
    assert boxes[5].tolist() == [200, 50, 300, 100]


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_columns_are_the_image_tokens(family, tiny_vlms, image):
    vlm = tiny_vlms[family]
    inputs = vlm.adapter.encode([image], [QUESTION])
    layout = vlm.adapter.layouts(inputs, [image])[0]
    ids = inputs["input_ids"][0].numpy()
    assert np.all(ids[layout.image_positions] == vlm.adapter.image_token_id)
    assert len(layout.image_positions) == int((ids == vlm.adapter.image_token_id).sum())
    assert len(layout.images) == 1
    for view in layout.images[0]:
        assert len(view.columns) == view.rows * view.cols
        assert set(view.columns.tolist()) <= set(layout.image_positions.tolist())


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.startswith("qwen")])
def test_qwen_grid_matches_image_grid_thw_and_covers_the_image(family, tiny_vlms, image):
    vlm = tiny_vlms[family]
    inputs = vlm.adapter.encode([image], [QUESTION])
    _, gh, gw = inputs["image_grid_thw"][0].tolist()
    (view,) = vlm.adapter.layouts(inputs, [image])[0].images[0]
    assert (view.rows, view.cols) == (gh // 2, gw // 2)
    boxes = view.boxes()
    assert boxes[0, :2].tolist() == [0, 0] and boxes[-1, 2:].tolist() == [image.width, image.height]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas.sum() == pytest.approx(image.width * image.height)


def test_llava_grid_is_the_centre_crop(tiny_vlms, image):
    vlm = tiny_vlms["llava"]  # 84 px CLIP: shortest edge to 84, centre crop 84 × 84
    (view,) = vlm.adapter.layouts(vlm.adapter.encode([image], [QUESTION]), [image])[0].images[0]
    assert (view.rows, view.cols) == (6, 6)
    # 224 × 160 image: the crop keeps the central 160 × 160 pixels.
    assert view.region == pytest.approx((32.0, 0.0, 192.0, 160.0))


def test_llava_next_has_a_base_view_and_tiles_without_newlines(tiny_vlms, image):
    vlm = tiny_vlms["llava_next"]
    inputs = vlm.adapter.encode([image], [QUESTION])
    layout = vlm.adapter.layouts(inputs, [image])[0]
    base, tiles = layout.images[0]
    assert (base.name, base.rows, base.cols) == ("base", 4, 4)
    assert (tiles.name, tiles.rows, tiles.cols) == ("tiles", 6, 8)  # 224 × 160 on 2 × 2 tiles of 56 px, unpadded
    newline_tokens = len(layout.image_positions) - base.rows * base.cols - tiles.rows * tiles.cols
    assert newline_tokens == tiles.rows
    assert base.columns.tolist() == layout.image_positions[:16].tolist()


@pytest.mark.parametrize(("size", "grid", "region"), [
    # 224 × 160 on 3 × 4 tiles of 56 px (resized to 224 × 160, pasted 4 px down): 12 × 16 tokens, no whole row of
    # padding to drop, then shrunk (anyres_max_9: 192 > 1.1² × 9 × 16 tokens) to 10 × 13.
    ((224, 160), (10, 13), (0.0, -4.0, 224.0, 164.0)),
    # 160 × 256 on 4 × 3 tiles (resized to 140 × 224, pasted 14 px right): 16 × 12 tokens, one column of padding
    # dropped on each side, not shrunk.
    ((160, 256), (16, 10), (0.0, 0.0, 160.0, 256.0)),
])
def test_llava_onevision_tiles_are_unpadded_shrunk_and_skip_newlines(size, grid, region, tiny_vlms):
    from visfocus.testing import make_image

    vlm, picture = tiny_vlms["llava_onevision"], make_image(*size, seed=3)
    inputs = vlm.adapter.encode([picture], [QUESTION])
    layout = vlm.adapter.layouts(inputs, [picture])[0]
    base, tiles = layout.images[0]
    assert (base.name, base.rows, base.cols, base.region) == ("base", 4, 4, (0.0, 0.0, *map(float, size)))
    assert (tiles.name, (tiles.rows, tiles.cols)) == ("tiles", grid)
    assert tiles.region == pytest.approx(region)
    positions = layout.image_positions
    assert base.columns.tolist() == positions[:16].tolist()
    newlines = positions[16:].reshape(tiles.rows, tiles.cols + 1)[:, -1]  # each grid row ends with its newline
    assert sorted(tiles.columns.tolist() + newlines.tolist()) == positions[16:].tolist()
    boxes = tiles.boxes()  # the grid covers the whole picture, row-major
    assert boxes[0, :2].tolist() == [0, 0] and boxes[-1, 2:].tolist() == list(size)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas.sum() == pytest.approx(size[0] * size[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_does_not_move_layout_columns(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    questions = [QUESTION, "Is the dog on the table or under the table, left of the cat? Answer yes or no."]
    batch = vlm.adapter.layouts(vlm.adapter.encode([image, other_image], questions), [image, other_image])
    for b, (img, q) in enumerate(zip([image, other_image], questions)):
        alone = vlm.adapter.layouts(vlm.adapter.encode([img], [q]), [img])[0]
        assert batch[b].image_positions.tolist() == alone.image_positions.tolist()
        for v_batch, v_alone in zip(batch[b].images[0], alone.images[0]):
            assert (v_batch.rows, v_batch.cols) == (v_alone.rows, v_alone.cols)


@pytest.mark.parametrize(("size", "grid"), [((224, 160), (2, 3)), ((160, 256), (3, 2)), ((56, 56), (1, 1))])
def test_internvl_tiles_row_major_then_the_thumbnail(size, grid, tiny_vlms):
    from visfocus.testing import make_image

    vlm, picture = tiny_vlms["internvl"], make_image(*size, seed=4)
    inputs = vlm.adapter.encode([picture], [QUESTION])
    layout = vlm.adapter.layouts(inputs, [picture])[0]
    views, (rows, cols), (w, h) = layout.images[0], grid, size
    tiles = rows * cols
    assert inputs["pixel_values"].shape[0] == len(views) == tiles + (tiles > 1)  # one view per processed tile
    positions = layout.image_positions
    assert len(positions) == 4 * len(views)  # 56 px tile, patch 14, pixel shuffle 0.5: 2 × 2 tokens
    for k, view in enumerate(views):  # the tokens of one tile after another, in the order of pixel_values
        assert (view.rows, view.cols) == (2, 2)
        assert view.columns.tolist() == positions[4 * k:4 * k + 4].tolist()
    if tiles == 1:
        assert [v.name for v in views] == ["image"] and views[0].region == (0.0, 0.0, float(w), float(h))
        return
    assert [v.name for v in views] == [f"tile_{r}_{c}" for r in range(rows) for c in range(cols)] + ["thumbnail"]
    for k, view in enumerate(views[:-1]):  # row-major tiles of the image stretched to cols × rows tiles
        r, c = divmod(k, cols)
        assert view.region == pytest.approx((c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows))
        boxes = view.boxes()  # 2 × 2 tokens per tile, each a quarter of it
        assert boxes[0].tolist() == pytest.approx([c * w / cols, r * h / rows, (c + 0.5) * w / cols,
                                                   (r + 0.5) * h / rows])
        assert boxes[-1, 2:].tolist() == pytest.approx([(c + 1) * w / cols, (r + 1) * h / rows])
    tile_boxes = np.concatenate([v.boxes() for v in views[:-1]])
    areas = (tile_boxes[:, 2] - tile_boxes[:, 0]) * (tile_boxes[:, 3] - tile_boxes[:, 1])
    assert areas.sum() == pytest.approx(w * h)  # the tiles cover the picture once
    thumbnail = views[-1]
    assert thumbnail.region == (0.0, 0.0, float(w), float(h))
    assert thumbnail.boxes()[-1].tolist() == pytest.approx([w / 2, h / 2, w, h])
