"""The app's parts without a server: the pure view functions, the overlay picture, the cached Explorer on a tiny model,
the examples, and the method controls generated from every registered method's parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import visfocus as vf
from visfocus.app import compute, render, views
from visfocus.app.compute import Explorer
from visfocus.errors import VisfocusError
from visfocus.interventions.base import METHODS, Method, Params, ParamSpec, param, param_specs
from visfocus.testing import make_image

QUESTION = "Is the cup on the table? Answer with yes or no."
OPTIONS = ("yes", "no")

# (L=2, H=2, N=3): attention of each layer's and head's last prompt row on three image tokens
ATTENTION = np.array([[[0.1, 0.2, 0.3], [0.3, 0.0, 0.5]],
                      [[0.4, 0.1, 0.0], [0.2, 0.2, 0.2]]])
# a 2×3 view whose cells hold the six tokens in reverse order, over x 10..40 and y 0..40 of a 60×40 image
VIEW = {"name": "base", "rows": 2, "cols": 3, "region": [10, 0, 40, 40], "image_size": [60, 40],
        "index": [5, 4, 3, 2, 1, 0]}


@pytest.fixture
def ui():
    pytest.importorskip("gradio")
    from visfocus.app import ui

    return ui


@pytest.fixture
def explorer(tiny_vlms):
    return Explorer(tiny_vlms["qwen3_vl"], max_results=2)


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


# --- compute: the Explorer ---------------------------------------------------------------------------------------
def test_the_same_question_twice_is_answered_once_and_served_from_the_cache(explorer, image):
    first = explorer.answer(image, QUESTION, "adaptvis", {"alpha_low": 0.3}, OPTIONS)
    assert explorer.forward_calls == 1
    again = explorer.answer(image.copy(), QUESTION, "adaptvis", {"alpha_low": 0.3}, list(OPTIONS))
    assert explorer.forward_calls == 1 and again.key == first.key
    assert again.attention is first.attention and again.text == first.text  # the stored result, not a new run
    assert explorer.answer(image, QUESTION, "adaptvis", {"alpha_low": 0.3, "alpha_high": 1.2}, OPTIONS).key == first.key
    assert explorer.forward_calls == 1  # a parameter given at its default is the same call


def test_the_cache_keeps_the_most_recently_used_results_only(explorer, image):
    questions = [f"{QUESTION} ({n})" for n in "abc"]
    explorer.answer(image, questions[0], "baseline")
    explorer.answer(image, questions[1], "baseline")
    explorer.answer(image, questions[0], "baseline")  # a hit: now the most recent
    explorer.answer(image, questions[2], "baseline")  # evicts questions[1], the least recent
    assert explorer.forward_calls == 3 and len(explorer._results) == explorer.max_results == 2
    explorer.answer(image, questions[0], "baseline")
    assert explorer.forward_calls == 3
    explorer.answer(image, questions[1], "baseline")
    assert explorer.forward_calls == 4 and len(explorer._results) == 2


@pytest.mark.parametrize(("method", "params"), [
    *[(name, {}) for name in sorted(vf.METHODS)], ("adaptvis", {"alpha_low": 0.3, "threshold": 0.9}),
    ("scaling_vis", {"alpha": 2.0, "layers": (0,)}),
])
def test_explorer_answers_equal_the_public_api(tiny_vlms, image, method, params):
    vlm = tiny_vlms["qwen3_vl"]
    explorer = Explorer(vlm)
    result = explorer.answer(image, QUESTION, method, params, OPTIONS)
    expected = vlm.answer(image, QUESTION, method=vf.method(method, **params),
                          max_new_tokens=explorer.max_new_tokens, options=list(OPTIONS))
    assert result.text == expected.text
    assert result.first_token == expected.first_token
    assert result.confidence == pytest.approx(expected.confidence, abs=1e-6)
    assert result.alpha_used == expected.alpha_used
    assert result.method == method and result.params == params
    assert result.parsed == compute.parse_answer(expected.text, OPTIONS)
    assert result.correct is None  # no gold given
    assert len(result.top_k) == compute.TOP_K
    assert result.top_k[0][1] == pytest.approx(expected.confidence, abs=1e-6)


@pytest.mark.parametrize(("method", "params", "question", "message"), [
    ("baseline", {}, "  ", "the question is empty"),
    ("baseline", {}, None, "the question is empty"),
    ("no_such_method", {}, QUESTION, "unknown method 'no_such_method'"),
    ("adaptvis", {"alpha_low": -1.0}, QUESTION, "alpha_low"),
    ("scaling_vis", {"alpha": -1.0}, QUESTION, "alpha"),
    ("scaling_vis", {"layers": (0, 99)}, QUESTION, "out of range"),  # the tiny decoder has 2 layers
    ("scaling_vis", {"strength": 1.0}, QUESTION, "has no parameter strength"),
])
def test_bad_input_raises_before_the_model_runs(explorer, image, method, params, question, message):
    with pytest.raises(VisfocusError, match=message):
        explorer.answer(image, question, method, params, OPTIONS)
    assert explorer.forward_calls == 0 and len(explorer._results) == 0


def test_the_gold_label_marks_the_answer_right_or_wrong(explorer, image):
    result = explorer.answer(image, QUESTION, "baseline", options=OPTIONS, gold="yes")
    assert result.correct == (result.parsed == "yes")


def test_a_cached_result_is_judged_against_the_gold_label_of_the_new_request(explorer, image):
    without = explorer.answer(image, QUESTION, "baseline", options=OPTIONS)
    assert without.correct is None
    judged = explorer.answer(image, QUESTION, "baseline", options=OPTIONS, gold="yes")
    assert judged.correct == (judged.parsed == "yes")


def test_a_result_exports_to_json_with_its_attention(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    result = Explorer(vlm).answer(image, QUESTION, "scaling_vis", {"alpha": 2.0}, OPTIONS)
    exported = json.loads(json.dumps(result.export()))
    tokens = sum(len(view["index"]) for view in result.views)
    heads = vlm.model.config.get_text_config().num_attention_heads
    assert tokens == sum(view["rows"] * view["cols"] for view in result.views) > 0
    assert np.asarray(exported["attention"]).shape == (vlm.num_layers, heads, tokens)
    np.testing.assert_allclose(exported["attention"], result.attention)
    assert np.asarray(exported["attention_pre"]).shape == (vlm.num_layers, heads, tokens)  # scaling edits attention
    assert np.asarray(exported["shares"]).shape == (vlm.num_layers, 3)
    assert exported["text"] == result.text and exported["method"] == "scaling_vis"
    assert exported["params"] == {"alpha": 2.0}
    assert exported["top_k"] == [[token, prob] for token, prob in result.top_k]
    assert exported["views"] == result.views


def test_examples_without_a_data_root_are_rendered_scenes_with_gold_labels():
    found = compute.examples()
    assert len(found) == 6
    for example in found:
        assert example.name.startswith("scene ") and example.question
        assert example.gold in example.options and len(example.options) >= 2
        assert isinstance(example.image, Image.Image) and example.image.mode == "RGB"
    assert len({e.name for e in found}) == 6


# --- ui: compare and the controls from the method registry ------------------------------------------------------
@pytest.mark.parametrize(("picture", "methods", "message"), [
    (None, ["baseline"], "no image"),
    ("image", [], "choose at least one method"),
    ("image", ["baseline", "nope"], r"unknown methods \['nope'\]"),
])
def test_compare_rejects_a_missing_image_or_method(ui, explorer, image, picture, methods, message):
    with pytest.raises(VisfocusError, match=message):
        ui.compare(explorer, image if picture else None, QUESTION, "yes, no", "", methods, {})
    assert explorer.forward_calls == 0


def test_compare_answers_each_method_with_its_own_parameters(ui, explorer, image):
    out = ui.compare(explorer, image, QUESTION, " yes ,no, ", "yes", ["baseline", "scaling_vis"],
                     {"scaling_vis": {"alpha": 2.0}})
    assert list(out) == ["baseline", "scaling_vis"]
    assert out["scaling_vis"].params == {"alpha": 2.0} and out["baseline"].params == {}
    assert out["baseline"].correct == (out["baseline"].parsed == "yes")
    assert explorer.forward_calls == 2


def _expected_control(ui, spec: ParamSpec):
    gr = ui.gr
    if spec.kind == "bool":
        return gr.Checkbox
    if spec.choices:
        return gr.Dropdown
    return gr.Number if spec.kind in ("float", "int") else gr.Textbox


def _controls(ui, name: str) -> list:
    with ui.gr.Blocks():
        return [ui.control(spec) for spec in param_specs(name)]


def _changed(spec: ParamSpec) -> tuple[object, object]:
    """(a control value other than the default, the typed parameter it must read back as)."""
    if spec.kind == "bool":
        return (not spec.default,) * 2
    if spec.choices:
        return (next(c for c in spec.choices if c != spec.default),) * 2
    if spec.kind in ("layers", "text"):
        return "0; 1", (0, 1)
    if spec.kind == "str":
        return "some text", "some text"
    base = spec.default if spec.default is not None else (spec.low or 0)
    if spec.kind == "int":
        value = base + 1 if spec.high is None or base + 1 <= spec.high else base - 1
        return float(value), int(value)  # a Number control may send a float
    value = base + 0.25
    if spec.high is not None:
        value = (spec.low + spec.high) / 2 if spec.low is not None else spec.high
        value = value if value != spec.default else (spec.low + value) / 2
    return value, float(value)




@pytest.mark.parametrize("name", sorted(vf.METHODS))
def test_every_method_gets_one_control_per_parameter_of_the_right_kind(ui, name):
    specs = param_specs(name)
    controls = _controls(ui, name)
    assert len(controls) == len(specs)
    for spec, widget in zip(specs, controls, strict=True):
        assert type(widget) is _expected_control(ui, spec), spec
        assert widget.label.startswith(spec.label)
        if spec.paper:
            assert f"({spec.paper})" in widget.label
        if spec.low is not None or spec.high is not None:
            assert widget.label.endswith("]")
        if spec.kind in ("float", "int") and not spec.choices:
            assert widget.precision == (0 if spec.kind == "int" else None)


@pytest.mark.parametrize("name", sorted(vf.METHODS))
def test_every_method_controls_at_their_defaults_read_back_as_no_parameters(ui, name):
    values = [widget.value for widget in _controls(ui, name)]
    assert ui.read_params(name, values) == {}
    vf.method(name, **ui.read_params(name, values))  # and build the method


@pytest.mark.parametrize("name", [name for name in sorted(vf.METHODS)])
def test_every_method_controls_read_back_exactly_the_changed_typed_parameters(ui, name):
    specs = param_specs(name)
    for changed in specs:  # one parameter away from its default at a time
        value, typed = _changed(changed)
        values = [value if spec is changed else widget.value for spec, widget in zip(specs, _controls(ui, name),
                                                                                    strict=True)]
        out = ui.read_params(name, values)
        assert out == {changed.name: typed} and type(out[changed.name]) is type(typed), changed
    values, expected = zip(*(_changed(spec) for spec in specs), strict=True) if specs else ((), ())
    out = ui.read_params(name, list(values))
    assert out == {spec.name: typed for spec, typed in zip(specs, expected, strict=True)}


def test_read_params_reads_layer_indices_with_commas_or_semicolons_and_empty_as_all(ui):
    assert ui.read_params("scaling_vis", [0.5, "2,3", False]) == {"layers": (2, 3)}
    assert ui.read_params("scaling_vis", [0.5, " 1 ; 0 ", False]) == {"layers": (1, 0)}
    assert ui.read_params("scaling_vis", [0.5, "", False]) == {}
    assert ui.read_params("scaling_vis", [0.5, None, False]) == {}
    with pytest.raises(ValueError):
        ui.read_params("scaling_vis", [0.5, "one", False])


@dataclass(frozen=True)
class _ProbeParams(Params):
    strength: float = param(0.5, paper="γ", low=0.0, high=2.0)
    steps: int = param(3, low=1)
    mode: str = param("soft", choices=("soft", "hard"))
    layers: tuple[int, ...] | None = None
    sharpen: bool = False


class _Probe(Method):
    name = "probe_method"
    Params = _ProbeParams


def test_a_newly_registered_method_gets_its_controls_with_no_app_change(ui, monkeypatch):
    monkeypatch.setitem(METHODS, _Probe.name, _Probe)
    assert param_specs(_Probe.name) == [
        ParamSpec("strength", "float", 0.5, "γ", 0.0, 2.0), ParamSpec("steps", "int", 3, None, 1, None),
        ParamSpec("mode", "str", "soft", choices=("soft", "hard")), ParamSpec("layers", "layers", None),
        ParamSpec("sharpen", "bool", False)]
    strength, steps, mode, layers, sharpen = _controls(ui, _Probe.name)
    assert strength.label == "strength (γ) [0.0, 2.0]" and steps.label == "steps [1, ]"
    assert mode.value == "soft" and layers.value == "" and sharpen.value is False
    assert ui.read_params(_Probe.name, [1.5, 4.0, "hard", "1", True]) == {
        "strength": 1.5, "steps": 4, "mode": "hard", "layers": (1,), "sharpen": True}
    demo = ui.build(SimpleNamespace(vlm=SimpleNamespace(num_layers=2)), [])
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"probe_method parameters", "strength (γ) [0.0, 2.0]", "probe_method: attention on the image"} <= labels
    methods = next(block for block in demo.blocks.values() if getattr(block, "label", None) == "methods to compare")
    assert "probe_method" in [value for _, value in methods.choices]
