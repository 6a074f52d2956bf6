"""``visfocus report RUN_DIR [--vs BASELINE_RUN]``: one self-contained HTML file (figures embedded as PNG) per run:
metrics, per-relation table, per-layer attention shares and entropy, box-overlap AUROC by layer, calibration, and a
gallery of examples — by default the flips against the baseline (fixed and broken), both heatmaps side by side."""

from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from visfocus.errors import VisfocusError
from visfocus.organism import model_name

SECTIONS = ("Metrics", "Per relation", "Attention by layer", "Box overlap by layer", "Calibration", "Examples")


def _img(fig) -> str:
    from visfocus.analysis.figures import figure_to_png_bytes

    return f'<img src="data:image/png;base64,{base64.b64encode(figure_to_png_bytes(fig)).decode()}">'


def _table(rows: list[list[Any]], head: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>"


def _flat_metrics(metrics: dict, prefix: str = "") -> list[list[Any]]:
    rows = []
    for key, value in metrics.items():
        if key == "per_relation":
            continue
        if isinstance(value, dict):
            rows += _flat_metrics(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)):
            rows.append([prefix + key, value])
    return rows


def _load(run_dir: Path) -> tuple[dict, dict[str, dict[str, dict]]]:
    from visfocus.compare import load_run

    return load_run(run_dir)


def _traces(run_dir: Path, name: str) -> dict | None:
    from visfocus.tracefile import load_traces

    try:
        return load_traces(run_dir, name)
    except VisfocusError:
        return None


def _records(results: dict, name: str) -> dict[str, Any]:
    """The task's records by id (for boxes and images); empty when the task cannot be rebuilt here."""
    from visfocus.benchmarks import task

    config = results.get("config", {})
    try:
        return {r.id: r for r in task(name, config.get("data_root"), config.get("prompt_style"))}
    except VisfocusError:
        return {}


def _image(record) -> Any:
    from visfocus.api import load_image

    if record is None:
        return None
    try:
        return record.image if record.image is not None else load_image(record.image_path)
    except VisfocusError:
        return None


def task_section(name: str, run_dir: Path, results: dict, samples: dict[str, dict], baseline: tuple | None,
                 max_examples: int) -> str:
    from visfocus.analysis import attention, boxes, calibration, figures

    out = [f"<h2>{html.escape(name)}</h2>"]
    metrics = results["tasks"][name]["metrics"]
    out.append("<h3>Metrics</h3>" + _table(_flat_metrics(metrics), ["metric", "value"]))
    per_rel = calibration.per_relation_confidence(list(samples.values()))
    out.append("<h3>Per relation</h3>" + (_table(
        [[rel, v["n"], v["accuracy"], v["mean_confidence"] if v["mean_confidence"] is not None else "—"]
         for rel, v in per_rel.items()], ["relation", "n", "accuracy", "mean confidence"]) if per_rel else
        "<p>No relations in this task.</p>"))
    traces = _traces(run_dir, name)
    records = _records(results, name)
    box_map = {sid: list(r.boxes) for sid, r in records.items() if r.boxes}
    out.append("<h3>Attention by layer</h3>")
    if traces:
        shares = attention.share_by_layer(traces, samples)
        out.append(_img(figures.share_by_layer_figure(shares["all"]["mean"], shares["all"]["std"])))
        groups = {f"image share, {g} ({shares[g]['n']})": shares[g]["mean"][:, 0]
                  for g in ("correct", "incorrect") if shares.get(g, {}).get("n")}
        if groups:
            out.append(_img(figures.line_figure(groups, "layer", "image share: correct vs incorrect answers")))
        entropy = np.mean([attention.entropy_by_layer(t["attention"]) for t in traces.values()], axis=0)
        out.append(_img(figures.line_figure({"entropy (nats)": entropy}, "layer", "image-attention entropy")))
        base_traces = _traces(baseline[2], name) if baseline is not None else None
        if base_traces:
            shift = attention.compare_runs(base_traces, traces)
            out.append(f"<p>this run − baseline, per layer, over {shift['n']} shared samples:</p>")
            out.append(_img(figures.line_figure({"image share": shift["image_share"], "entropy": shift["entropy"]},
                                                "layer", "shift against the baseline")))
    else:
        out.append("<p>No traces: run <code>visfocus eval ... --trace</code>.</p>")
    out.append("<h3>Box overlap by layer</h3>")
    no_grid = next((t["no_grid"] for t in (traces or {}).values() if t.get("no_grid")), None)
    if no_grid:  # query tokens: no token covers a pixel box
        out.append(f"<p>No box overlap: {html.escape(no_grid)}.</p>")
    elif traces and box_map:
        overlap = boxes.overlap_auroc_by_layer(traces, samples, box_map)
        hits = boxes.pointing_game_by_layer(traces, box_map)
        out.append(_img(figures.line_figure(
            {"overlap AUROC (correctness)": overlap["auroc"], "pointing-game hit rate": hits["hit_rate"]},
            "layer", f"box overlap ({overlap['n']} samples with boxes)")))
    else:
        out.append("<p>No boxes or no traces for this task.</p>")
    conf = [(r["confidence"], bool(r["correct"])) for r in samples.values() if r.get("confidence") is not None]
    out.append("<h3>Calibration</h3>")
    if conf:
        rel = calibration.reliability([c for c, _ in conf], [k for _, k in conf])
        auroc = calibration.confidence_auroc([c for c, _ in conf], [k for _, k in conf])
        out.append(_img(figures.reliability_figure(rel["bins"]))
                   + f"<p>ECE {rel['ece']:.4f}; AUROC of confidence {auroc:.4f}</p>")
    out.append("<h3>Examples</h3>" + _gallery(name, samples, traces, records, baseline, max_examples))
    return "\n".join(out)


def _gallery(name: str, samples: dict, traces: dict | None, records: dict, baseline: tuple | None,
             max_examples: int) -> str:
    from visfocus.analysis import attention, figures

    if baseline is not None:
        base_samples = baseline[1].get(name, {})
        shared = [sid for sid in samples if sid in base_samples]
        picks = ([(sid, "fixed") for sid in shared if samples[sid]["correct"] and not base_samples[sid]["correct"]]
                 + [(sid, "broken") for sid in shared if not samples[sid]["correct"] and base_samples[sid]["correct"]])
        base_traces = _traces(baseline[2], name)
    else:
        picks = [(sid, "incorrect") for sid in samples if not samples[sid]["correct"]]
        base_samples, base_traces = {}, None
    if not picks:
        return "<p>No examples to show (no flips against the baseline).</p>" if baseline else "<p>No errors.</p>"
    cards = []
    for sid, kind in picks[:max_examples]:
        row, record = samples[sid], records.get(sid)
        panels = []
        image = _image(record)
        for label, tr, rows in (("run", traces, samples), ("baseline", base_traces, base_samples)):
            if image is None or not tr or sid not in tr:
                continue
            if tr[sid].get("no_grid"):  # query tokens: no heatmap to draw, say why
                panels.append(f"<p>{html.escape(label)}: no heatmap ({html.escape(tr[sid]['no_grid'])})</p>")
                continue
            if not tr[sid]["views"]:
                continue
            entry, view = tr[sid], tr[sid]["views"][0]
            layer = entry["attention"].shape[0] // 2  # the middle layer, where grounding is (docs/methods.md §10.4)
            grid = attention.grid_map(attention.head_mean(entry["attention"])[layer], view)
            title = f"{label}: {rows[sid]['output']!r} (conf {rows[sid]['confidence']:.2f}), layer {layer}"
            panels.append(_img(figures.heatmap_figure(image, grid, view, boxes=list(record.boxes), title=title)))
            if label == "run":
                panels.append(_img(figures.depth_strip_figure(entry["attention"], title="attention over depth")))
        cards.append(f"<div class='card'><p><b>{kind}</b> #{html.escape(sid)}: {html.escape(row['question'])} — gold "
                     f"<b>{html.escape(str(row['gold']))}</b></p>{''.join(panels) or '<p>(no image or trace)</p>'}"
                     "</div>")
    return "\n".join(cards)


def build_report(run_dir: str | Path, vs: str | Path | None = None, max_examples: int = 8) -> str:
    run_dir = Path(run_dir)
    results, samples = _load(run_dir)
    baseline = (*_load(Path(vs)), Path(vs)) if vs else None
    sections = [task_section(name, run_dir, results, samples.get(name, {}), baseline, max_examples)
                for name in results.get("tasks", {}) if samples.get(name)]
    method = results.get("method", {})
    head = (f"<h1>visfocus report</h1><p>{html.escape(model_name(results.get('config', {}).get('model')))} · "
            f"{html.escape(method.get('name', ''))} {html.escape(json.dumps(method.get('args', {})))}"
            + (f" · vs {html.escape(str(vs))}" if vs else "") + "</p>")
    style = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 8px}img{max-width:48%;margin:4px}.card{border-top:1px solid #ddd;margin-top:1em}</style>")
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>visfocus report</title>{style}</head><body>" \
           f"{head}{''.join(sections) or '<p>No finished samples.</p>'}</body></html>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--vs", help="a baseline run folder: the gallery shows the flips (fixed / broken)")
    parser.add_argument("--out", help="HTML file (default: RUN_DIR/report.html)")
    parser.add_argument("--max_examples", type=int, default=8)


def run(args: argparse.Namespace) -> int:
    page = build_report(args.run_dir, args.vs, args.max_examples)
    out = Path(args.out) if args.out else Path(args.run_dir) / "report.html"
    out.write_text(page, encoding="utf-8")
    print(f"written: {out}")
    return 0
