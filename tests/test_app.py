"""The app's parts without a server: the cached Explorer on a tiny model, the examples, and the method controls
generated from every registered method's parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import visfocus as vf
from visfocus.app import compute
from visfocus.app.compute import Explorer
from visfocus.app.params import PROFILE_PARAMETER, ProfileFolder
from visfocus.errors import VisfocusError
from visfocus.interventions.base import METHODS, Method, Params, ParamSpec, param, param_specs

QUESTION = "Is the cup on the table? Answer with yes or no."
OPTIONS = ("yes", "no")


@pytest.fixture
def ui():
    pytest.importorskip("gradio")
    from visfocus.app import ui

    return ui


@pytest.fixture
def explorer(tiny_vlms):
    return Explorer(tiny_vlms["qwen3_vl"], max_results=2)


@pytest.fixture
def profiles(tmp_path) -> ProfileFolder:
    """An operator's profile folder with one profile, "mid" (for a 2-layer decoder)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "mid.json").write_text(json.dumps({"layers": [1], "auroc_per_layer": [0.5, 0.9]}))
    return ProfileFolder.open(folder)


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


def test_methods_compared_on_one_question_share_its_prefill(explorer, image):
    explorer.vlm.prefix_store.clear()
    first = explorer.answer(image, QUESTION, "baseline", {}, OPTIONS)
    scaled = explorer.answer(image, QUESTION, "scaling_vis", {"alpha": 2.0}, OPTIONS)
    adaptive = explorer.answer(image, QUESTION, "adaptvis", {}, OPTIONS)
    assert first.cost["prefill_tokens"] > first.cost["shared_prefix_tokens"] > 0
    assert scaled.cost["prefill_tokens"] == adaptive.cost["prefill_tokens"] == 1  # only the last prompt token ran
    alone = explorer.vlm.answer(image, QUESTION, method=vf.method("scaling_vis", alpha=2.0), share_prefix=False,
                                max_new_tokens=explorer.max_new_tokens, options=list(OPTIONS))
    assert scaled.text == alone.text and scaled.confidence == pytest.approx(alone.confidence, abs=1e-5)
    assert explorer.vlm.prefix_store.keep_prompts is False  # only while the Explorer answers


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
    # what the method reported: the same values; a float as the confidence is (the Explorer keeps the prompt's
    # prefill between methods, so its sums may differ in the last bits)
    reported = json.loads(json.dumps(expected.extras, default=_jsonable))
    assert result.extras.keys() == reported.keys()
    for key, value in reported.items():
        if isinstance(value, float):
            assert result.extras[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert result.extras[key] == value, key
    assert set(result.extras) <= set(METHODS[method].extras)  # ... as it declares it
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


def _jsonable(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


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
    if spec.choices or spec.name == PROFILE_PARAMETER:  # a profile is picked by name from the operator's folder
        return gr.Dropdown
    return gr.Number if spec.kind in ("float", "int") else gr.Textbox


def _controls(ui, name: str, profiles: ProfileFolder | None = None) -> list:
    with ui.gr.Blocks():
        return [ui.control(spec, profiles) for spec in param_specs(name)]


def _changed(spec: ParamSpec) -> tuple[object, object]:
    """(a control value other than the default, the typed parameter it must read back as)."""
    if spec.kind == "bool":
        return (not spec.default,) * 2
    if spec.choices:
        return (next(c for c in spec.choices if c != spec.default),) * 2
    if spec.name == PROFILE_PARAMETER:
        return "mid", "mid"  # the ``profiles`` fixture's one profile
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
            assert widget.label.endswith(spec.bounds_text())  # "≥ 0.0", "in (0, 1]", …
        if spec.kind in ("float", "int") and not spec.choices:
            assert widget.precision == (0 if spec.kind == "int" else None)
            assert (widget.minimum, widget.maximum) == (spec.low, spec.high)  # the page refuses values beyond them


@pytest.mark.parametrize("name", sorted(vf.METHODS))
def test_every_method_controls_at_their_defaults_read_back_as_no_parameters(ui, name):
    values = [widget.value for widget in _controls(ui, name)]
    assert ui.read_params(name, values) == {}
    vf.method(name, **ui.read_params(name, values))  # and build the method


@pytest.mark.parametrize("name", sorted(vf.METHODS))
def test_every_method_controls_read_back_exactly_the_changed_typed_parameters(ui, name, profiles):
    specs = param_specs(name)
    for changed in specs:  # one parameter away from its default at a time
        value, typed = _changed(changed)
        values = [value if spec is changed else widget.value
                  for spec, widget in zip(specs, _controls(ui, name, profiles), strict=True)]
        out = ui.read_params(name, values, profiles)
        assert out == {changed.name: typed} and type(out[changed.name]) is type(typed), changed
    values, expected = zip(*(_changed(spec) for spec in specs), strict=True) if specs else ((), ())
    out = ui.read_params(name, list(values), profiles)
    assert out == {spec.name: typed for spec, typed in zip(specs, expected, strict=True)}


def test_read_params_reads_layer_indices_with_commas_or_semicolons_and_empty_as_all(ui):
    assert ui.read_params("scaling_vis", [0.5, "2,3", False]) == {"layers": (2, 3)}
    assert ui.read_params("scaling_vis", [0.5, " 1 ; 0 ", False]) == {"layers": (1, 0)}
    assert ui.read_params("scaling_vis", [0.5, "", False]) == {}
    assert ui.read_params("scaling_vis", [0.5, None, False]) == {}
    assert ui.read_params("scaling_vis", [0.5, "0.25:0.75", False]) == {"layers": "0.25:0.75"}
    with pytest.raises(VisfocusError, match=r"scaling_vis parameter layers must be layer indices .* got 'one'"):
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
        ParamSpec("mode", "str", "soft", choices=("soft", "hard")), ParamSpec("layers", "layers", None, optional=True),
        ParamSpec("sharpen", "bool", False)]
    strength, steps, mode, layers, sharpen = _controls(ui, _Probe.name)
    assert strength.label == "strength (γ) in [0.0, 2.0]" and steps.label == "steps ≥ 1"
    assert mode.value == "soft" and layers.value == "" and sharpen.value is False
    assert ui.read_params(_Probe.name, [1.5, 4.0, "hard", "1", True]) == {
        "strength": 1.5, "steps": 4, "mode": "hard", "layers": (1,), "sharpen": True}
    demo = ui.build(SimpleNamespace(vlm=SimpleNamespace(num_layers=2, num_heads=4), profiles=None), [])
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"probe_method parameters", "strength (γ) in [0.0, 2.0]", "probe_method: attention on the image"} <= labels
    methods = next(block for block in demo.blocks.values() if getattr(block, "label", None) == "methods to compare")
    assert "probe_method" in [value for _, value in methods.choices]


# --- ui: what a method declares for the app (its extras and pictures) ---------------------------------------------
class _Drawing(Method):
    name = "probe_drawing"
    extras = {"alpha_used": "the α applied", "branch": "smooth or sharpen", "heat": "a (rows, cols) grid"}
    app_outputs = {"heat": "probe heat over the image"}


def _result(method: str, extras: dict, views: list | None = None) -> compute.Result:
    return compute.Result(key="k", method=method, params={}, text="left", first_token="left", confidence=0.5,
                          top_k=[("left", 0.5)], cost={"forward_passes": 1, "seconds": 0.1}, extras=extras,
                          parsed=None, correct=None, attention=np.zeros((1, 1, 4), np.float32), views=views or [])


def test_the_result_card_shows_each_declared_extra_by_its_key_and_no_picture_as_text(ui, monkeypatch):
    monkeypatch.setitem(METHODS, _Drawing.name, _Drawing)
    grid = [[0.0, 1.0], [2.0, 3.0]]
    card = ui.summary_markdown(_result(_Drawing.name, {"branch": "smooth", "alpha_used": 0.5, "heat": grid}), None)
    assert "`alpha_used` 0.5 · `branch` smooth" in card  # in declaration order, labelled by key
    assert "heat" not in card and "3.0" not in card  # the app draws it instead
    plain = ui.summary_markdown(_result("baseline", {}), None)
    assert "`" not in plain and "α" not in plain  # the baseline reports nothing


def test_a_declared_app_output_is_drawn_over_the_photo_on_the_view_of_its_shape(ui, monkeypatch, image):
    monkeypatch.setitem(METHODS, _Drawing.name, _Drawing)
    width, height = image.size
    grid = [[0.0, 1.0], [2.0, 3.0]]
    left_half = {"name": "base", "rows": 2, "cols": 2, "region": [0, 0, width // 2, height],
                 "image_size": [width, height], "index": [0, 1, 2, 3]}
    on_view = ui.output_picture(_result(_Drawing.name, {"heat": grid}, [left_half]), "heat", image)
    whole = ui.output_picture(_result(_Drawing.name, {"heat": grid}), "heat", image)  # no view of that shape
    assert on_view.size == whole.size == (width + ui.render.BAR_WIDTH, height)
    photo, drawn = np.asarray(image.convert("RGB")), np.asarray(on_view)[:, :width]
    np.testing.assert_array_equal(drawn[:, width // 2 + 1:], photo[:, width // 2 + 1:])  # outside the view: the photo
    assert not np.array_equal(np.asarray(whole)[:, :width], drawn)
    assert ui.output_picture(_result(_Drawing.name, {}), "heat", image) is None  # not reported: no picture
    assert ui.output_picture(None, "heat", image) is None


def test_every_declared_app_output_gets_its_picture_in_its_methods_column(ui, monkeypatch):
    monkeypatch.setitem(METHODS, _Drawing.name, _Drawing)
    demo = ui.build(SimpleNamespace(vlm=SimpleNamespace(num_layers=2, num_heads=4), profiles=None), [])
    labels = [getattr(block, "label", None) for block in demo.blocks.values()]
    declared = [f"{name}: {caption}" for name, cls in sorted(METHODS.items()) for caption in cls.app_outputs.values()]
    assert "probe_drawing: probe heat over the image" in declared
    assert all(labels.count(label) == 1 for label in declared)


@pytest.mark.parametrize("name", [name for name in sorted(vf.METHODS) if vf.METHODS[name].app_outputs])
def test_every_method_with_app_outputs_reports_them_and_the_app_draws_them(ui, explorer, image, name):
    result = explorer.answer(image, QUESTION, name, {}, OPTIONS)
    for key in vf.METHODS[name].app_outputs:
        picture = ui.output_picture(result, key, image)
        assert picture is not None and picture.size == (image.width + ui.render.BAR_WIDTH, image.height), key
