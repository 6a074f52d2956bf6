"""The Gradio page: inputs (image or example, question, options, gold, methods with controls generated from each
method's parameter dataclass), one column per registered method — its answer, the extras it declares, its heatmap,
its first-token top-k and the pictures it declares for the app (``Method.app_outputs``) —, the shared view controls,
and the ``/compare`` API. Every method-specific part of the page is read from the registry (``METHODS``); the
baseline is named only as the reference answer (flips, the first column, the default layer × head view).

The model runs only in ``compare`` (one forward per new (image, question, method, parameters); the ``Explorer``
caches). Every view control redraws from the session's stored results (``gr.State``, private to each browser
session, kept ``session_ttl_s``) and never runs the model. Every parameter a request sets is typed and bounded
(``visfocus.app.params``): numeric controls carry their method's bounds, and the server checks them again; a layer
profile is a name from the operator's folder. Exports go to the app's own folder and expire (``exports``)."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

import visfocus as vf
from visfocus.api import load_image
from visfocus.app import render, views
from visfocus.app.compute import Example, Explorer, Result
from visfocus.app.exports import ExportFolder
from visfocus.app.launch import DEFAULT_EXPORT_TTL_MIN
from visfocus.app.params import PROFILE_PARAMETER, ProfileFolder, read_params, request_json, request_params
from visfocus.errors import VisfocusError
from visfocus.interventions.base import METHODS, ParamSpec, param_specs
from visfocus.listing import extra_items

REFERENCE = "baseline"  # the reference answer: listed first, flips are against it, the first layer × head view
DEFAULT_METHODS = (REFERENCE, "adaptvis")  # chosen when the page opens (those registered)
MAX_TEXT_CHARS = 2_000  # question, options and gold answer: a question is a sentence, not a document
NO_PROFILE = ("(none)", "")


def profile_control(label: str, profiles: ProfileFolder | None):
    """A layer profile: a dropdown of the operator's profile names; disabled when the app offers none."""
    if profiles is None:
        return gr.Dropdown(choices=[NO_PROFILE], value="", interactive=False,
                           label=f"{label} (none offered: start the app with --profiles DIR)")
    return gr.Dropdown(choices=[NO_PROFILE, *profiles.names()], value="", label=label)


def control(spec: ParamSpec, profiles: ProfileFolder | None = None):
    """A Gradio input for one method parameter, labelled with the paper's name and its declared bounds (a number
    control also refuses values outside them; the server refuses an open bound itself)."""
    label = f"{spec.label} {spec.bounds_text()}".rstrip()
    if spec.name == PROFILE_PARAMETER and spec.kind == "str":
        return profile_control(label, profiles)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), label=label)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), value=spec.default, label=label)
    if spec.kind in ("float", "int"):
        return gr.Number(value=spec.default, label=label, precision=0 if spec.kind == "int" else None,
                         minimum=spec.low, maximum=spec.high)
    hint = {"layers": "layer indices, e.g. 1;2;3, or a fraction of the depth, e.g. 0.28:0.45 (empty: all)",
            "text": "a word or layer indices, e.g. 1;2"}.get(spec.kind, "")
    return gr.Textbox(value="" if spec.default is None else str(spec.default), label=label, placeholder=hint)


def compare(explorer: Explorer, image: Image.Image, question: str, options: str, gold: str,
            methods: list[str], params: dict[str, dict[str, Any]], progress=None) -> dict[str, Result]:
    """Each chosen method's result for one input (cached ones come back at once)."""
    if image is None:
        raise VisfocusError("no image: upload one or pick an example")
    if not methods:
        raise VisfocusError("choose at least one method")
    for what, text in (("question", question), ("answer options", options), ("gold answer", gold)):
        if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
            raise VisfocusError(f"the {what} is {len(text)} characters; the app takes at most {MAX_TEXT_CHARS}")
    unknown = sorted(set(methods) - set(vf.METHODS))
    if unknown:
        raise VisfocusError(f"unknown methods {unknown}; registered: {', '.join(sorted(vf.METHODS))}")
    option_words = [o.strip() for o in (options or "").split(",") if o.strip()]
    out = {}
    for i, method in enumerate(methods):
        if progress is not None:
            progress((i, len(methods)), desc=f"answering with {method}")
        out[method] = explorer.answer(image, question, method, params.get(method), option_words,
                                      (gold or "").strip() or None)
    return out


def summary_markdown(result: Result, baseline: Result | None) -> str:
    """The result card: answer, confidence, the extras the method declares (each by its key; the ones the app draws
    are pictures instead), right or wrong and the flip against the baseline, and the cost."""
    lines = [f"### {result.method}\n", f"**answer:** {result.text!r}  \n", f"confidence {result.confidence:.3f}"]
    reported = extra_items(result.method, result.extras)
    if reported:
        lines.append("  \n" + " · ".join(f"`{key}` {value}" for key, value in reported))
    if result.correct is not None:
        lines.append(f"  \n{'✓ right' if result.correct else '✗ wrong'}")
        mark = views.flip("gold", baseline.correct if baseline else None, result.correct)
        if mark and result.method != REFERENCE:
            lines.append(f" · **{mark}** vs {REFERENCE}")
    cost = result.cost
    lines.append(f"  \ncost: {cost.get('forward_passes')} passes, {cost.get('seconds')} s")
    return "".join(lines)


def output_picture(result: Result | None, key: str, image: Image.Image | None) -> Image.Image | None:
    """One picture a method declares for the app (``Method.app_outputs``): the (rows, cols) grid it reported as extra
    ``key``, coloured over the photo on the image view of that shape (else over the whole photo); None when the
    result has no such grid."""
    grid = None if result is None or image is None else result.extras.get(key)
    if grid is None:
        return None
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        return None
    view = next((v for v in result.views if (int(v["rows"]), int(v["cols"])) == grid.shape), None)
    if view is None:
        width, height = image.size
        view = {"rows": grid.shape[0], "cols": grid.shape[1], "region": [0, 0, width, height],
                "image_size": [width, height]}
    return render.overlay(image, grid, view)


def heatmap(result: Result, image: Image.Image, layer: int, head: str, head_index: int, cmap: str, opacity: float,
            sinks: int) -> tuple[Image.Image, str]:
    """The overlay of one result at the view settings, and a note of the masked sinks; no picture and the reason
    where the image tokens have no spatial grid."""
    if result.no_grid:
        return None, result.no_grid
    layer = min(int(layer), result.attention.shape[0] - 1)
    chosen_head = min(max(int(head_index or 0), 0), result.attention.shape[1] - 1)  # a typed index beyond the heads
    row = views.head_row(result.attention, layer, head if head != "head" else chosen_head)
    masked, sink_tokens = views.mask_sinks(row, int(sinks))
    view = result.views[0]
    note = ""
    if len(sink_tokens):
        note = f"masked {len(sink_tokens)} sink token(s) holding {float(row[sink_tokens].sum()):.1%} of the image mass"
    return render.overlay(image, views.view_grid(masked, view), view, cmap, float(opacity)), note


def method_names() -> list[str]:
    """The registered methods, the reference first."""
    return sorted(METHODS, key=lambda n: (n != REFERENCE, n))


class Page:
    """The page of one ``Explorer``: its components (made by the layout methods, inside ``gr.Blocks``) and the event
    handlers, which read and write only the session's ``gr.State``s."""

    def __init__(self, explorer: Explorer, example_list: list[Example], exports: ExportFolder,
                 session_ttl_s: float | None) -> None:
        self.explorer, self.exports, self.ttl = explorer, exports, session_ttl_s
        self.profiles: ProfileFolder | None = explorer.profiles
        self.names = method_names()
        self.by_name = {e.name: e for e in example_list}
        self.controls: list[tuple[str, Any]] = []  # (method, control), in param_specs order per method
        self.accordions: dict[str, Any] = {}
        self.pictures: list[tuple[str, str, Any]] = []  # (method, extra key, image): the declared app outputs

    # --- layout ----------------------------------------------------------------------------------------------------
    def layout(self) -> None:
        # this session's results: {method: Result}; bounded by the methods, kept ttl after the last change
        self.results = gr.State({}, time_to_live=self.ttl)
        self.shown_image = gr.State(None, time_to_live=self.ttl)  # the image those results are about
        self.picked = gr.State(None, time_to_live=self.ttl)  # the example the inputs came from, while unchanged
        self.verdicts = gr.State({}, time_to_live=self.ttl)  # example name → the reference answered it right
        gr.Markdown("# visfocus — compare methods on one image and see where the model looks")
        with gr.Row():
            with gr.Column(scale=1):
                self.input_column()
            with gr.Column(scale=3):
                self.view_controls()
                self.method_columns()
                self.analysis()
        self.api_inputs()

    def input_column(self) -> None:
        self.example = gr.Dropdown(choices=list(self.by_name), value=None, label="example (or upload below)")
        self.example_filter = gr.Radio(["all", "baseline right", "baseline wrong", "not run yet"], value="all",
                                label="examples to list (by this session's baseline answers)")
        self.image = gr.Image(type="pil", label="image", sources=["upload"], elem_id="vf-image")
        self.question = gr.Textbox(label="question", elem_id="vf-question")
        self.options = gr.Textbox(label="answer options (comma-separated, optional)")
        self.gold = gr.Textbox(label="gold answer (optional: marks right/wrong and flips)")
        chosen = [name for name in DEFAULT_METHODS if name in METHODS]
        self.chosen = gr.CheckboxGroup(choices=self.names, value=chosen, label="methods to compare")
        for name in self.names:
            specs = param_specs(name)
            if specs:
                with gr.Accordion(f"{name} parameters", open=False, visible=name in chosen) as self.accordions[name]:
                    self.controls += [(name, control(spec, self.profiles)) for spec in specs]
        self.run = gr.Button("Compare", variant="primary", elem_id="vf-run")
        self.message = gr.Markdown(elem_id="vf-message")

    def view_controls(self) -> None:
        layers, heads = self.explorer.vlm.num_layers, self.explorer.vlm.num_heads
        with gr.Row():
            self.layer = gr.Slider(0, layers - 1, value=layers // 2, step=1, label="layer", elem_id="vf-layer")
            self.head = gr.Radio(["mean", "max", "head"], value="mean", label="heads")
            self.head_index = gr.Number(value=0, precision=0, minimum=0, maximum=heads - 1,
                                        label=f"head index 0..{heads - 1} (for 'head')")
        with gr.Row():
            self.cmap = gr.Dropdown(list(render.COLORMAPS), value="jet", label="colour map")
            self.opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="opacity")
            self.sinks = gr.Slider(0, 10, value=0, step=1, label="mask top-k sink tokens")
        self.view_inputs = [self.results, self.shown_image, self.layer, self.head, self.head_index, self.cmap,
                            self.opacity, self.sinks]

    def method_columns(self) -> None:
        """One column per method, shown once it has answered: card, heatmap, top-k and its declared pictures."""
        self.columns, self.summaries, self.heats, self.notes, self.bar_images = [], [], [], [], []
        with gr.Row():
            for name in self.names:
                with gr.Column(visible=False, min_width=240) as column:
                    self.summaries.append(gr.Markdown())
                    self.heats.append(gr.Image(type="pil", label=f"{name}: attention on the image", interactive=False,
                                               elem_classes=["vf-heatmap"]))
                    self.notes.append(gr.Markdown())
                    self.bar_images.append(gr.Image(type="pil", label="first-token top-5", interactive=False))
                    self.pictures += [(name, key, gr.Image(type="pil", label=f"{name}: {caption}", interactive=False))
                                      for key, caption in METHODS[name].app_outputs.items()]
                self.columns.append(column)

    def analysis(self) -> None:
        self.shares = gr.Image(type="pil", label="image / text / special share by layer, all methods",
                               interactive=False)
        with gr.Row():
            self.grid_method = gr.Dropdown(self.names, value=self.names[0], label="layer × head view of")
            self.cell_note = gr.Markdown("click a cell of a heatmap: which layers and heads attend to it")
        with gr.Row():
            self.mass = gr.Image(type="pil", label="layer × head image attention mass", interactive=False)
            self.cell = gr.Image(type="pil", label="layer × head attention on the clicked cell", interactive=False)
        with gr.Row():
            self.export = gr.Button("Export figures (PNG) and answers + traces (JSON)")
            self.files = gr.File(file_count="multiple", label="export")

    def api_inputs(self) -> None:
        with gr.Column(visible=False):  # the /compare API: a file upload, plain text and JSON
            self.api_image = gr.File(label="image")
            self.api_question, self.api_options, self.api_gold = gr.Textbox(), gr.Textbox(), gr.Textbox()
            self.api_methods, self.api_params = gr.Textbox(value=json.dumps([REFERENCE])), gr.Textbox(value="{}")
            self.api_out = gr.JSON()
            self.api_button = gr.Button()

    # --- handlers ----------------------------------------------------------------------------------------------------
    def show_results(self, state, picture):
        """What does not depend on the view settings: the columns, cards, top-k bars, the methods' declared pictures
        and the shares."""
        present = [state.get(name) for name in self.names]
        reference = state.get(REFERENCE)
        return [*[gr.Column(visible=r is not None) for r in present],
                *[summary_markdown(r, reference) if r else "" for r in present],
                *[render.bars(r.top_k, "first token") if r else None for r in present],
                *[output_picture(state.get(name), key, picture) for name, key, _ in self.pictures],
                render.shares_by_method({n: r.shares for n, r in state.items()}) if state else None]

    def remember(self, state, name, seen):
        """The reference's verdict on an example whose inputs were left as picked."""
        reference = state.get(REFERENCE)
        if name in self.by_name and reference is not None and reference.correct is not None:
            seen = {**seen, name: bool(reference.correct)}
        return seen

    def listed(self, which, seen):
        keep = {"all": lambda n: True, "baseline right": lambda n: seen.get(n) is True,
                "baseline wrong": lambda n: seen.get(n) is False, "not run yet": lambda n: n not in seen}[which]
        return gr.Dropdown(choices=[n for n in self.by_name if keep(n)])

    def pick(self, name):
        """An example's inputs, and the example they came from."""
        if name not in self.by_name:
            return None, "", "", "", None
        example = self.by_name[name]
        return example.image, example.question, ", ".join(example.options), example.gold or "", name

    def redraw(self, state, picture, layer, head, head_index, cmap, opacity, sinks):
        """The heatmaps at the view settings, from the stored traces (no model run)."""
        drawn = [heatmap(state[name], picture, layer, head, head_index, cmap, opacity, sinks)
                 if name in state else (None, "") for name in self.names]
        return [*[d[0] for d in drawn], *[d[1] for d in drawn]]

    def mass_view(self, state, method, layer):
        result = state.get(method)
        if result is None:
            return None
        return render.grid_picture(views.layer_head_mass(result.attention), f"{method}: image mass", marker=None)

    def run_compare(self, picture, text, option_text, gold_text, methods, *values, progress=gr.Progress()):  # noqa: B008 (Gradio's way)
        params: dict[str, dict[str, Any]] = {}
        try:
            for method in methods:
                own = [value for (name, _), value in zip(self.controls, values, strict=True) if name == method]
                params[method] = read_params(method, own, self.profiles) if own else {}
            state = compare(self.explorer, picture, text, option_text, gold_text, methods, params, progress)
        except (VisfocusError, ValueError, TypeError) as err:
            return {self.message: f"**error:** {err}"}
        return {self.results: state, self.shown_image: picture, self.message: f"{len(state)} method(s) answered"}

    def on_click(self, state, picture, method, layer, head, head_index, evt: gr.SelectData):
        result = state.get(method) or next(iter(state.values()), None)
        if result is None or evt.index is None:
            return None, "run a comparison first"
        if result.no_grid:
            return None, result.no_grid
        hit = views.pixel_cell(result.views[0], evt.index[0], evt.index[1])
        if hit is None:
            return None, "that point is outside the image grid"
        token = views.cell_token(result.views[0], *hit)
        per = views.token_by_layer_head(result.attention, token)
        best = np.unravel_index(int(np.argmax(per)), per.shape)
        picture_cell = render.grid_picture(per, f"{result.method}: cell {hit} (token {token})",
                                           marker=(int(best[0]), int(best[1])))
        return picture_cell, f"cell {hit} = image token {token}; most attention: layer {best[0]}, head {best[1]}"

    def export_files(self, state, picture, layer, head, head_index, cmap, opacity, sinks):
        if not state:
            return None
        folder = self.exports.new()  # older exports are deleted first
        paths = []
        for name, result in state.items():
            picture_heat, _ = heatmap(result, picture, layer, head, head_index, cmap, opacity, sinks)
            if picture_heat is not None:  # None: no grid to draw on
                picture_heat.save(folder / f"heatmap_{name}_layer{int(layer)}.png")
                paths.append(folder / f"heatmap_{name}_layer{int(layer)}.png")
            render.bars(result.top_k, "first token").save(folder / f"topk_{name}.png")
            paths.append(folder / f"topk_{name}.png")
        render.shares_by_method({n: r.shares for n, r in state.items()}).save(folder / "shares.png")
        (folder / "results.json").write_text(json.dumps({n: r.export() for n, r in state.items()}))
        return [str(p) for p in paths] + [str(folder / "shares.png"), str(folder / "results.json")]

    def api_compare(self, path, text, option_text, gold_text, methods_json, params_json):
        try:
            picture = load_image(path) if path else None
            methods = request_json(methods_json, "methods", "[]")
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise VisfocusError(f"methods must be a JSON list of method names, e.g. [\"{REFERENCE}\"], got "
                                    f"{(methods_json or '')[:80]!r}")
            params = request_params(request_json(params_json, "params", "{}"), self.profiles)
            state = compare(self.explorer, picture, text, option_text, gold_text, methods, params)
        except (VisfocusError, TypeError, ValueError) as err:
            raise gr.Error(str(err)) from err
        return {name: result.summary() for name, result in state.items()}, state, picture

    # --- events ------------------------------------------------------------------------------------------------------
    def wire_inputs(self) -> None:
        self.example.input(self.pick, self.example, [self.image, self.question, self.options, self.gold, self.picked],
                           api_name=False)
        for edited in (self.image, self.question, self.options, self.gold):  # the inputs are no longer the example's
            edited.input(lambda: None, None, self.picked, api_name=False)
        self.example_filter.change(self.listed, [self.example_filter, self.verdicts], self.example, api_name=False)
        self.chosen.change(lambda methods: [gr.Accordion(visible=name in methods) for name in self.accordions],
                           self.chosen, list(self.accordions.values()))
        pictures = [image for _, _, image in self.pictures]
        self.run.click(self.run_compare, [self.image, self.question, self.options, self.gold, self.chosen,
                                          *[c for _, c in self.controls]],
                       [self.results, self.shown_image, self.message], concurrency_limit=1, api_name=False).then(
            self.show_results, [self.results, self.shown_image],
            [*self.columns, *self.summaries, *self.bar_images, *pictures, self.shares], api_name=False).then(
            self.remember, [self.results, self.picked, self.verdicts], self.verdicts, api_name=False).then(
            self.redraw, self.view_inputs, [*self.heats, *self.notes], api_name=False).then(
            self.mass_view, [self.results, self.grid_method, self.layer], self.mass, api_name=False)

    def wire_views(self) -> None:
        drawn = [*self.heats, *self.notes]
        for widget in (self.layer, self.head, self.head_index, self.cmap, self.opacity, self.sinks):
            widget.change(self.redraw, self.view_inputs, drawn, show_progress="hidden", api_name=False)
        # /redraw: the views of this session's last comparison at other settings (no model run)
        redraw_api = gr.Button(visible=False)
        redraw_api.click(self.redraw, self.view_inputs, drawn, api_name="redraw")
        self.grid_method.change(self.mass_view, [self.results, self.grid_method, self.layer], self.mass,
                                api_name=False)
        for name, picture in zip(self.names, self.heats, strict=True):
            picture.select(self.on_click, [self.results, self.shown_image, gr.State(name), self.layer, self.head,
                                           self.head_index], [self.cell, self.cell_note], api_name=False)
        self.export.click(self.export_files, self.view_inputs, self.files, api_name=False)
        self.api_button.click(self.api_compare, [self.api_image, self.api_question, self.api_options, self.api_gold,
                                                 self.api_methods, self.api_params],
                              [self.api_out, self.results, self.shown_image], api_name="compare",
                              concurrency_limit=1)


def build(explorer: Explorer, example_list: list[Example], *, exports: ExportFolder | None = None,
          session_ttl_s: float | None = None, delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The page for ``explorer`` (its ``profiles`` fill the profile lists). A session's stored results are kept
    ``session_ttl_s`` seconds after their last change (None: while the session lives); exports go to ``exports``;
    ``delete_cache`` is Gradio's sweep of its served copies, (every, age) in seconds."""
    page = Page(explorer, example_list, exports or ExportFolder(DEFAULT_EXPORT_TTL_MIN * 60), session_ttl_s)
    with gr.Blocks(title="visfocus app", delete_cache=delete_cache) as demo:
        page.layout()
        page.wire_inputs()
        page.wire_views()
    return demo
