"""Figures: the heat layer lines up with the pixels each image token covers (checked on real COCO photos for a
dynamic-grid Qwen and a centre-cropped LLaVA, down to the rendered figure), every figure renders, and the
``visfocus heatmap`` command writes a PNG or stops with one clear error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from visfocus.analysis import figures
from visfocus.analysis.attention import grid_map
from visfocus.analysis.calibration import reliability
from visfocus.errors import VisfocusError
from visfocus.heatmap import main as heatmap_main
from visfocus.models.layout import ImageView
from visfocus.testing import build_tiny, make_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTOS = DATA / "vsr" / "vsr_rows_with_staged_images.jsonl"
BOXES = DATA / "coco_boxes" / "vsr_pope_coco_yolo_boxes.json"


def _view(rows, cols, region, size):
    return ImageView("image", np.arange(rows * cols), rows, cols, region, size)


def _trace_view(view: ImageView, image_positions: np.ndarray) -> dict:
    """The trace-file form of a view (``visfocus.tracefile.sample_arrays``)."""
    return {"name": view.name, "rows": view.rows, "cols": view.cols, "region": list(view.region),
            "image_size": list(view.image_size), "index": np.searchsorted(image_positions, view.columns).tolist()}


def _centre_pixels(x0, x1, n):
    """Pixels 0..n-1 whose centre lies in [x0, x1)."""
    p = np.arange(n) + 0.5
    return (p >= x0) & (p < x1)


@pytest.mark.parametrize("rows, cols, region, size", [
    (13, 9, (0.0, 0.0, 480.0, 640.0), (480, 640)),  # Qwen: the whole image, non-square grid
    (6, 6, (0.0, 80.0, 480.0, 560.0), (480, 640)),  # LLaVA centre crop: top and bottom bands unseen
    (5, 5, (-80.0, 0.0, 560.0, 640.0), (480, 640)),  # pad to square: region extends beyond the image
    (3, 4, (10.3, 7.7, 90.1, 51.9), (100, 60)),  # fractional region inside the image
])
def test_heat_to_pixels_fills_exactly_each_cell_pixel_box(rows, cols, region, size):
    view = _view(rows, cols, region, size)
    grid = np.random.default_rng(0).random((rows, cols))  # (rows, cols)
    heat = figures.heat_to_pixels(grid, view)  # (H, W)
    w, h = size
    assert heat.shape == (h, w) and heat.dtype == np.float32
    covered = np.zeros((h, w), dtype=bool)
    for cell, (x0, y0, x1, y1) in enumerate(view.boxes()):
        pixels = _centre_pixels(y0, y1, h)[:, None] & _centre_pixels(x0, x1, w)[None, :]  # (H, W)
        np.testing.assert_allclose(heat[pixels], np.float32(grid.flat[cell]))
        covered |= pixels
    assert np.isnan(heat[~covered]).all()  # pixels the model never saw stay empty
    smooth = figures.heat_to_pixels(grid, view, smooth=True)
    assert np.array_equal(np.isnan(smooth), ~covered)
    assert np.nanmin(smooth) >= grid.min() - 1e-6 and np.nanmax(smooth) <= grid.max() + 1e-6
    flat = figures.heat_to_pixels(np.full((rows, cols), 0.25), view, smooth=True)
    np.testing.assert_allclose(flat[covered], 0.25)


def test_heat_to_pixels_rejects_a_grid_of_the_wrong_shape():
    with pytest.raises(VisfocusError, match="3×4"):
        figures.heat_to_pixels(np.zeros((4, 3)), _view(3, 4, (0, 0, 40, 30), (40, 30)))


def _photo_cases():
    """(image, pixel boxes (M, 4), labels) for the staged COCO photos of the VSR rows."""
    rows = [json.loads(line) for line in PHOTOS.read_text(encoding="utf-8").splitlines() if line.strip()]
    boxes = json.loads(BOXES.read_text(encoding="utf-8"))["images"]
    for row in rows:
        path = DATA / row["local_path"]
        if row["image"] not in boxes or not path.is_file():
            continue
        image = Image.open(path).convert("RGB")
        w, h = image.size
        found = [(cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
                 for _, cx, cy, bw, bh in boxes[row["image"]]["boxes_cxcywh_norm"]]
        yield image, np.array(found) * [w, h, w, h], [b[0] for b in boxes[row["image"]]["boxes_cxcywh_norm"]]


def _pick(view: ImageView, photo_boxes: np.ndarray):
    """(box index, cell index) of a box at least 1.5 cells wide and high whose centre lies in a cell (inside the
    region the model sees) off the grid's middle row and column, so that a flip would move it; or None."""
    cells = view.boxes()  # (C, 4)
    cell_w, cell_h = (view.region[2] - view.region[0]) / view.cols, (view.region[3] - view.region[1]) / view.rows
    for b, (x0, y0, x1, y1) in enumerate(photo_boxes):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hit = np.nonzero((cells[:, 0] <= cx) & (cx < cells[:, 2]) & (cells[:, 1] <= cy) & (cy < cells[:, 3]))[0]
        if len(hit) != 1 or x1 - x0 < 1.5 * cell_w or y1 - y0 < 1.5 * cell_h:
            continue
        row, col = divmod(int(hit[0]), view.cols)
        if row != view.rows - 1 - row and col != view.cols - 1 - col:
            return b, int(hit[0])
    return None


def _inside(point, box, margin=0.0):
    x, y = point
    return box[0] - margin <= x <= box[2] + margin and box[1] - margin <= y <= box[3] + margin


@pytest.mark.skipif(not (PHOTOS.is_file() and BOXES.is_file()), reason="staged COCO photos and boxes not present")
@pytest.mark.parametrize("family", ["qwen3_vl", "llava"])
def test_heatmap_lines_up_with_the_object_on_real_photos(tiny_vlms, family):
    vlm = tiny_vlms[family]
    for case in _photo_cases():
        image, photo_boxes, labels = case
        layout = vlm.adapter.layouts(vlm.adapter.encode([image], ["Where is it?"]), [image])[0]
        view = layout.images[0][0]
        if family == "qwen3_vl" and image.size[0] == image.size[1]:
            continue  # the point of the Qwen case is a non-square image and grid
        picked = _pick(view, photo_boxes)
        if picked is not None:
            break
    else:
        pytest.skip("no staged photo with a usable box")
    box_i, cell = picked
    box, cell_box = photo_boxes[box_i], view.boxes()[cell]
    trace_view = _trace_view(view, layout.image_positions)
    attention = np.zeros(len(layout.image_positions))  # (N,) all of it on the token covering the box centre
    attention[trace_view["index"][cell]] = 1.0
    grid = grid_map(attention, trace_view)  # (rows, cols)
    heat = figures.heat_to_pixels(grid, trace_view)  # (H, W)
    assert heat.shape == (image.size[1], image.size[0])
    ys, xs = np.nonzero(heat == 1.0)
    centroid = (xs.mean() + 0.5, ys.mean() + 0.5)
    assert _inside(centroid, box) and _inside(centroid, cell_box)
    argmax = np.unravel_index(np.nanargmax(heat), heat.shape)  # (y, x)
    assert _inside((argmax[1] + 0.5, argmax[0] + 0.5), cell_box)
    n_hot = _centre_pixels(cell_box[0], cell_box[2], image.size[0]).sum() * \
        _centre_pixels(cell_box[1], cell_box[3], image.size[1]).sum()
    assert len(xs) == n_hot  # exactly the cell's pixels, nothing else
    smooth = figures.heat_to_pixels(grid, trace_view, smooth=True)
    peak = np.unravel_index(np.nanargmax(smooth), smooth.shape)
    assert _inside((peak[1] + 0.5, peak[0] + 0.5), cell_box)

    # The drawn figure: the hottest colour sits where the cell is, in the figure's own pixel coordinates.
    record_box = {"label": labels[box_i], "xyxy": (box / np.tile(image.size, 2)).tolist(), "normalized": True}
    fig = figures.heatmap_figure(image, grid, trace_view, boxes=[record_box], title="t", alpha=1.0)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)  # (FH, FW, 3)
    ax = fig.axes[0]
    hot = np.abs(rgba - np.array(colormaps[figures.CMAP](1.0)[:3]) * 255).max(-1) <= 8  # (FH, FW)
    axes_box = ax.get_window_extent()
    fh = rgba.shape[0]
    hot[:, : int(axes_box.x0)] = hot[:, int(np.ceil(axes_box.x1)):] = False  # only the image axes, not the colour bar
    fy, fx = np.nonzero(hot)
    (dx0, dy0), (dx1, dy1) = ax.transData.transform([cell_box[:2], cell_box[2:]])  # display: y up
    expected = (min(dx0, dx1), fh - max(dy0, dy1), max(dx0, dx1), fh - min(dy0, dy1))
    assert len(fx) > 20
    assert np.mean([_inside(p, expected, margin=2) for p in zip(fx + 0.5, fy + 0.5, strict=True)]) > 0.97
    drawn_aspect = axes_box.width / axes_box.height
    assert drawn_aspect == pytest.approx(image.size[0] / image.size[1], rel=0.03)

    png = figures.figure_to_png_bytes(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as rendered:
        assert (rendered.width > rendered.height) == (image.size[0] > image.size[1])
        assert np.asarray(rendered.convert("L")).std() > 10  # not blank


def test_every_figure_renders_on_small_inputs(tmp_path):
    rng = np.random.default_rng(0)
    image = make_image(64, 48, seed=3)
    view = _view(3, 4, (0.0, 0.0, 64.0, 48.0), (64, 48))
    attention = rng.random((6, 2, 12))  # (L, H, N)
    trace_view = {"rows": 3, "cols": 4, "region": [0, 0, 64, 48], "image_size": [64, 48],
                  "index": rng.permutation(12).tolist()}
    shares = rng.dirichlet(np.ones(3), size=6)  # (L, 3)
    bins = reliability(rng.random(50).tolist(), (rng.random(50) > 0.5).tolist(), n_bins=5)["bins"]
    made = [
        figures.heatmap_figure(image, rng.random((3, 4)), view, boxes=np.array([[5, 5, 30, 20]]), title="x"),
        figures.heatmap_figure(image, rng.random((3, 4)), trace_view, smooth=True,
                               boxes=[{"label": "cup", "xyxy": [0.1, 0.1, 0.5, 0.6], "normalized": True}]),
        figures.layer_heatmaps_figure(image, attention, trace_view, [0, 5], title="two layers"),
        figures.layer_heatmaps_figure(image, attention.mean(1), view),  # default: the middle layer
        figures.share_by_layer_figure(shares, shares * 0.1),
        figures.share_by_layer_figure(shares),
        figures.depth_strip_figure(attention.mean(1)),
        figures.depth_strip_figure(attention),
        figures.reliability_figure(bins),
        figures.line_figure({"entropy": rng.random(6)}, "layer", "entropy"),
    ]
    for fig in made:
        assert isinstance(fig, Figure)
        assert figures.figure_to_png_bytes(fig)[:4] == b"\x89PNG"
    assert made[3].axes[0].get_title() == "layer 3"
    assert len([ax for ax in made[2].axes if ax.get_title().startswith("layer")]) == 2
    path = figures.save(made[0], tmp_path / "sub" / "fig.png")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(VisfocusError, match="out of range"):
        figures.layer_heatmaps_figure(image, attention, trace_view, [6])
    with pytest.raises(VisfocusError, match="index"):
        figures.layer_heatmaps_figure(image, rng.random((6, 20)), view)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny("qwen3_vl", tmp_path_factory.mktemp("heatmap") / "qwen3_vl")


def test_heatmap_command_writes_a_png(tiny_qwen, tmp_path, capsys):
    picture = tmp_path / "picture.png"
    make_image(96, 64, seed=4).save(picture)
    base = ["--model", str(tiny_qwen), "--image", str(picture), "--question", "Where is the red box?",
            "--max_new_tokens", "2"]
    one, two = tmp_path / "one.png", tmp_path / "out" / "two.png"
    assert heatmap_main([*base, "--out", str(one)]) == 0
    assert capsys.readouterr().out.strip() == str(one)
    assert heatmap_main([*base, "--method", "scaling_vis", "--method_args", "alpha=0.5", "--layers", "0,1",
                         "--out", str(two)]) == 0
    with Image.open(one) as a, Image.open(two) as b:
        assert a.format == b.format == "PNG"
        assert b.width > 1.5 * a.width  # two layer panels side by side
        assert np.asarray(a.convert("L")).std() > 10


def test_heatmap_command_stops_with_one_clear_error(tiny_qwen, tmp_path):
    picture = tmp_path / "picture.png"
    make_image(96, 64, seed=4).save(picture)
    base = ["--model", str(tiny_qwen), "--question", "Where?", "--out", str(tmp_path / "x.png")]
    with pytest.raises(VisfocusError, match="image file not found") as missing:
        heatmap_main([*base, "--image", str(tmp_path / "nope.jpg")])
    with pytest.raises(VisfocusError, match=r"layer 7 out of range: the model has 2 layers") as beyond:
        heatmap_main([*base, "--image", str(picture), "--layers", "1,7"])
    with pytest.raises(VisfocusError, match="--layers must be") as unreadable:
        heatmap_main([*base, "--image", str(picture), "--layers", "middle"])
    for err in (missing, beyond, unreadable):
        assert "\n" not in str(err.value)
    assert not (tmp_path / "x.png").exists()


def test_a_long_heatmap_title_is_wrapped_to_the_figure_width_and_kept_whole():
    image = make_image(64, 48, seed=3)
    view = _view(3, 4, (0.0, 0.0, 64.0, 48.0), (64, 48))
    question = "Where is the orange square in relation to the brown box? Answer with left, right, on or under."
    fig = figures.layer_heatmaps_figure(image, np.random.default_rng(0).random((4, 12)), view,
                                        title=question + "\n→ 'right' (confidence 1.00)")
    lines = fig._suptitle.get_text().split("\n")
    width_chars = int(fig.get_figwidth() * 11)
    assert len(lines) >= 3 and all(len(line) <= width_chars for line in lines)
    assert " ".join(lines[:-1]) == question  # nothing cut, only wrapped
