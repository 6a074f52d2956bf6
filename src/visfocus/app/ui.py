"""The Gradio page: inputs (image or example, question, options, gold, methods with controls generated from each
method's parameter dataclass), one column per chosen method, the shared view controls, and the ``/compare`` API.

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
from visfocus.interventions.base import ParamSpec, param_specs

DEFAULT_METHODS = ["baseline", "adaptvis"]
MAX_TEXT_CHARS = 2_000  # question, options and gold answer: a question is a sentence, not a document
NO_PROFILE = ("(none)", "")


def profile_control(label: str, profiles: ProfileFolder | None):
    """VEA's layer profile: a dropdown of the operator's profile names; disabled when the app offers none."""
    if profiles is None:
        return gr.Dropdown(choices=[NO_PROFILE], value="", interactive=False,
                           label=f"{label} (none offered: start the app with --profiles DIR)")
    return gr.Dropdown(choices=[NO_PROFILE, *profiles.names()], value="", label=label)


def control(spec: ParamSpec, profiles: ProfileFolder | None = None):
    """A Gradio input for one method parameter, labelled with the paper's name and bounds (a number control also
    refuses values outside them)."""
    bounds = "" if spec.low is None and spec.high is None else \
        f" [{'' if spec.low is None else spec.low}, {'' if spec.high is None else spec.high}]"
    label = spec.label + bounds
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
            "text": "a word or layer indices, e.g. 1;2"}.get(
        spec.kind, "")
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
    lines = [f"### {result.method}\n", f"**answer:** {result.text!r}  \n", f"confidence {result.confidence:.3f}"]
    if result.alpha_used is not None:
        lines.append(f" · α used {result.alpha_used:g}")
    if result.correct is not None:
        lines.append(f"  \n{'✓ right' if result.correct else '✗ wrong'}")
        mark = views.flip("gold", baseline.correct if baseline else None, result.correct)
        if mark and result.method != "baseline":
            lines.append(f" · **{mark}** vs baseline")
    decisions = {k: v for k, v in result.extras.items() if k != "evidence_map"}
    if decisions:
        lines.append(f"  \ndecisions: `{json.dumps(decisions, default=str)[:300]}`")
    cost = result.cost
    lines.append(f"  \ncost: {cost.get('forward_passes')} passes, {cost.get('seconds')} s")
    return "".join(lines)


def evidence_picture(result: Result, image: Image.Image) -> Image.Image | None:
    """VEA's evidence map over the photo beside the highlighted photo its second pass answered on."""
    grid = result.extras.get("evidence_map")
    if grid is None or not result.views:
        return None
    from visfocus.interventions import vea

    grid, view = np.asarray(grid, dtype=np.float64), result.views[0]
    floor = result.params.get("highlight_floor", vea.VEAParams.highlight_floor)
    pixels = vea.upsample_to_pixels(grid, tuple(view["region"]), image.size)  # (H, W)
    left, right = render.overlay(image, grid, view), vea.highlight(image, pixels, floor)
    both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    return both


def heatmap(result: Result, image: Image.Image, layer: int, head: str, head_index: int, cmap: str, opacity: float,
            sinks: int) -> tuple[Image.Image, str]:
    """The overlay of one result at the view settings, and a note of the masked sinks."""
    layer = min(int(layer), result.attention.shape[0] - 1)
    chosen_head = min(max(int(head_index or 0), 0), result.attention.shape[1] - 1)  # a typed index beyond the heads
    row = views.head_row(result.attention, layer, head if head != "head" else chosen_head)
    masked, sink_tokens = views.mask_sinks(row, int(sinks))
    view = result.views[0]
    note = ""
    if len(sink_tokens):
        note = f"masked {len(sink_tokens)} sink token(s) holding {float(row[sink_tokens].sum()):.1%} of the image mass"
    return render.overlay(image, views.view_grid(masked, view), view, cmap, float(opacity)), note


def build(explorer: Explorer, example_list: list[Example], *, exports: ExportFolder | None = None,
          session_ttl_s: float | None = None, delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The page for ``explorer`` (its ``profiles`` fill VEA's profile list). A session's stored results are kept
    ``session_ttl_s`` seconds after their last change (None: while the session lives); exports go to ``exports``;
    ``delete_cache`` is Gradio's sweep of its served copies, (every, age) in seconds."""
    names = sorted(vf.METHODS, key=lambda n: (n != "baseline", n))
    by_name = {e.name: e for e in example_list}
    layers = explorer.vlm.num_layers
    heads = explorer.vlm.num_heads
    profiles = explorer.profiles
    exports = exports or ExportFolder(DEFAULT_EXPORT_TTL_MIN * 60)
    with gr.Blocks(title="visfocus app", delete_cache=delete_cache) as demo:
        # this session's results: {method: Result}; bounded by the methods, kept session_ttl_s after the last change
        results = gr.State({}, time_to_live=session_ttl_s)
        shown_image = gr.State(None, time_to_live=session_ttl_s)  # the image those results are about
        picked = gr.State(None, time_to_live=session_ttl_s)  # the example the inputs came from, while unchanged
        verdicts = gr.State({}, time_to_live=session_ttl_s)  # example name → the baseline answered it right
        gr.Markdown("# visfocus — compare methods on one image and see where the model looks")
        with gr.Row():
            with gr.Column(scale=1):
                example = gr.Dropdown(choices=list(by_name), value=None, label="example (or upload below)")
                shown = gr.Radio(["all", "baseline right", "baseline wrong", "not run yet"], value="all",
                                 label="examples to list (by this session's baseline answers)")
                image = gr.Image(type="pil", label="image", sources=["upload"], elem_id="vf-image")
                question = gr.Textbox(label="question", elem_id="vf-question")
                options = gr.Textbox(label="answer options (comma-separated, optional)")
                gold = gr.Textbox(label="gold answer (optional: marks right/wrong and flips)")
                chosen = gr.CheckboxGroup(choices=names, value=DEFAULT_METHODS, label="methods to compare")
                controls: list[tuple[str, Any]] = []
                accordions = {}
                for name in names:
                    specs = param_specs(name)
                    if not specs:
                        continue
                    with gr.Accordion(f"{name} parameters", open=False,
                                      visible=name in DEFAULT_METHODS) as accordions[name]:
                        controls += [(name, control(spec, profiles)) for spec in specs]
                run = gr.Button("Compare", variant="primary", elem_id="vf-run")
                message = gr.Markdown(elem_id="vf-message")
            with gr.Column(scale=3):
                with gr.Row():
                    layer = gr.Slider(0, layers - 1, value=layers // 2, step=1, label="layer", elem_id="vf-layer")
                    head = gr.Radio(["mean", "max", "head"], value="mean", label="heads")
                    head_index = gr.Number(value=0, precision=0, minimum=0, maximum=heads - 1,
                                           label=f"head index 0..{heads - 1} (for 'head')")
                with gr.Row():
                    cmap = gr.Dropdown(list(render.COLORMAPS), value="jet", label="colour map")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="opacity")
                    sinks = gr.Slider(0, 10, value=0, step=1, label="mask top-k sink tokens")
                columns, summaries, heats, notes, bar_images, evidence = [], [], [], [], [], []
                with gr.Row():
                    for name in names:
                        with gr.Column(visible=False, min_width=240) as column:
                            summaries.append(gr.Markdown())
                            heats.append(gr.Image(type="pil", label=f"{name}: attention on the image",
                                                  interactive=False, elem_classes=["vf-heatmap"]))
                            notes.append(gr.Markdown())
                            bar_images.append(gr.Image(type="pil", label="first-token top-5", interactive=False))
                            evidence.append(gr.Image(type="pil", label="evidence map and highlighted image",
                                                     interactive=False, visible=name == "vea"))
                        columns.append(column)
                shares = gr.Image(type="pil", label="image / text / special share by layer, all methods",
                                  interactive=False)
                with gr.Row():
                    grid_method = gr.Dropdown(names, value="baseline", label="layer × head view of")
                    cell_note = gr.Markdown("click a cell of a heatmap: which layers and heads attend to it")
                with gr.Row():
                    mass = gr.Image(type="pil", label="layer × head image attention mass", interactive=False)
                    cell = gr.Image(type="pil", label="layer × head attention on the clicked cell", interactive=False)
                with gr.Row():
                    export = gr.Button("Export figures (PNG) and answers + traces (JSON)")
                    files = gr.File(file_count="multiple", label="export")
        with gr.Column(visible=False):  # the /compare API: a file upload, plain text and JSON
            api_image = gr.File(label="image")
            api_question, api_options, api_gold = gr.Textbox(), gr.Textbox(), gr.Textbox()
            api_methods, api_params = gr.Textbox(value='["baseline"]'), gr.Textbox(value="{}")
            api_out = gr.JSON()
            api_button = gr.Button()

        view_inputs = [results, shown_image, layer, head, head_index, cmap, opacity, sinks]

        def show_results(state, picture):
            """What does not depend on the view settings: the columns, summaries, top-k bars, method pictures
            and the shares."""
            baseline = state.get("baseline")
            present = [state.get(name) for name in names]
            return [*[gr.Column(visible=r is not None) for r in present],
                    *[summary_markdown(r, baseline) if r else "" for r in present],
                    *[render.bars(r.top_k, "first token") if r else None for r in present],
                    *[evidence_picture(r, picture) if r else None for r in present],
                    render.shares_by_method({n: r.shares for n, r in state.items()}) if state else None]

        def remember(state, name, seen):
            """The baseline's verdict on an example whose inputs were left as picked."""
            if name in by_name and state.get("baseline") is not None and state["baseline"].correct is not None:
                seen = {**seen, name: bool(state["baseline"].correct)}
            return seen

        def listed(which, seen):
            keep = {"all": lambda n: True, "baseline right": lambda n: seen.get(n) is True,
                    "baseline wrong": lambda n: seen.get(n) is False, "not run yet": lambda n: n not in seen}[which]
            return gr.Dropdown(choices=[n for n in by_name if keep(n)])

        def redraw(state, picture, layer, head, head_index, cmap, opacity, sinks):
            """The heatmaps at the view settings, from the stored traces (no model run)."""
            drawn = [heatmap(state[name], picture, layer, head, head_index, cmap, opacity, sinks)
                     if name in state else (None, "") for name in names]
            return [*[d[0] for d in drawn], *[d[1] for d in drawn]]

        def mass_view(state, method, layer):
            result = state.get(method)
            if result is None:
                return None
            return render.grid_picture(views.layer_head_mass(result.attention), f"{method}: image mass",
                                       marker=None)

        def run_compare(picture, text, option_text, gold_text, methods, *values, progress=gr.Progress()):  # noqa: B008 (Gradio's way)
            params: dict[str, dict[str, Any]] = {}
            try:
                for method in methods:
                    own = [value for (name, _), value in zip(controls, values, strict=True) if name == method]
                    params[method] = read_params(method, own, profiles) if own else {}
                state = compare(explorer, picture, text, option_text, gold_text, methods, params, progress)
            except (VisfocusError, ValueError, TypeError) as err:
                return {message: f"**error:** {err}"}
            return {results: state, shown_image: picture, message: f"{len(state)} method(s) answered"}

        def on_click(state, picture, method, layer, head, head_index, evt: gr.SelectData):
            result = state.get(method) or next(iter(state.values()), None)
            if result is None or evt.index is None:
                return None, "run a comparison first"
            x, y = evt.index[0], evt.index[1]
            hit = views.pixel_cell(result.views[0], x, y)
            if hit is None:
                return None, "that point is outside the image grid"
            token = views.cell_token(result.views[0], *hit)
            per = views.token_by_layer_head(result.attention, token)
            best = np.unravel_index(int(np.argmax(per)), per.shape)
            picture_cell = render.grid_picture(per, f"{result.method}: cell {hit} (token {token})",
                                               marker=(int(best[0]), int(best[1])))
            return picture_cell, f"cell {hit} = image token {token}; most attention: layer {best[0]}, head {best[1]}"

        def export_files(state, picture, layer, head, head_index, cmap, opacity, sinks):
            if not state:
                return None
            folder = exports.new()  # older exports are deleted first
            paths = []
            for name, result in state.items():
                picture_heat, _ = heatmap(result, picture, layer, head, head_index, cmap, opacity, sinks)
                picture_heat.save(folder / f"heatmap_{name}_layer{int(layer)}.png")
                render.bars(result.top_k, "first token").save(folder / f"topk_{name}.png")
                paths += [folder / f"heatmap_{name}_layer{int(layer)}.png", folder / f"topk_{name}.png"]
            render.shares_by_method({n: r.shares for n, r in state.items()}).save(folder / "shares.png")
            (folder / "results.json").write_text(json.dumps({n: r.export() for n, r in state.items()}))
            return [str(p) for p in paths] + [str(folder / "shares.png"), str(folder / "results.json")]

        def api_compare(path, text, option_text, gold_text, methods_json, params_json):
            try:
                picture = load_image(path) if path else None
                methods = request_json(methods_json, "methods", "[]")
                if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                    raise VisfocusError(f"methods must be a JSON list of method names, e.g. [\"baseline\"], got "
                                        f"{(methods_json or '')[:80]!r}")
                params = request_params(request_json(params_json, "params", "{}"), profiles)
                state = compare(explorer, picture, text, option_text, gold_text, methods, params)
            except (VisfocusError, TypeError, ValueError) as err:
                raise gr.Error(str(err)) from err
            return {name: result.summary() for name, result in state.items()}, state, picture

        example.input(lambda name: (by_name[name].image, by_name[name].question, ", ".join(by_name[name].options),
                                    by_name[name].gold or "", name) if name in by_name else (None, "", "", "", None),
                      example, [image, question, options, gold, picked], api_name=False)
        for edited in (image, question, options, gold):  # the inputs are no longer the example's
            edited.input(lambda: None, None, picked, api_name=False)
        shown.change(listed, [shown, verdicts], example, api_name=False)
        chosen.change(lambda methods: [gr.Accordion(visible=name in methods) for name in accordions],
                      chosen, list(accordions.values()))
        run.click(run_compare, [image, question, options, gold, chosen, *[c for _, c in controls]],
                  [results, shown_image, message], concurrency_limit=1, api_name=False).then(
            show_results, [results, shown_image], [*columns, *summaries, *bar_images, *evidence, shares],
            api_name=False).then(
            remember, [results, picked, verdicts], verdicts, api_name=False).then(
            redraw, view_inputs, [*heats, *notes], api_name=False).then(
            mass_view, [results, grid_method, layer], mass, api_name=False)
        for widget in (layer, head, head_index, cmap, opacity, sinks):
            widget.change(redraw, view_inputs, [*heats, *notes], show_progress="hidden", api_name=False)
        # /redraw: the views of this session's last comparison at other settings (no model run)
        redraw_api = gr.Button(visible=False)
        redraw_api.click(redraw, view_inputs, [*heats, *notes], api_name="redraw")
        grid_method.change(mass_view, [results, grid_method, layer], mass, api_name=False)
        for name, picture in zip(names, heats, strict=True):
            picture.select(on_click, [results, shown_image, gr.State(name), layer, head, head_index],
                           [cell, cell_note], api_name=False)
        export.click(export_files, view_inputs, files, api_name=False)
        api_button.click(api_compare, [api_image, api_question, api_options, api_gold, api_methods, api_params],
                         [api_out, results, shown_image], api_name="compare", concurrency_limit=1)
    return demo
