"""``visfocus study``: the AdaptVis paper's analyses of one model, as one command and one report.

1. Sweeps ScalingVis and AdaptVis on the dev task (``visfocus sweep``: every default grid point on dev, the chosen
   point and the baseline on the eval task), into ``OUT/sweeps``.
2. Re-runs on the eval task, with traces (``--trace mean``), into ``OUT/traced``: the baseline, ScalingVis at the
   grid's smallest α (< 1, smoothing), at its largest (> 1, sharpening) and at the chosen α, AdaptVis at its chosen
   point, and ScalingVis at that point's α_low (smoothing everywhere, to ask where smoothing helps).
3. Computes ``visfocus.analysis.study`` on them and writes ``OUT/study.json`` (every number), ``OUT/figures/*.png``
   and ``OUT/report.md`` (each figure with its numbers).

Every run is an ordinary resumable run folder, so an interrupted study resumes where it stopped; the model loads
once. ``--limit N`` answers the first N samples of each task (a quick look, or CI)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from visfocus.errors import VisfocusError
from visfocus.values import parse_int

SWEPT = ("scaling_vis", "adaptvis")


def _default_rare() -> tuple[str, ...]:
    """The relations the organism's training mix makes rare: below half of a uniform share."""
    from visfocus.benchmarks.scenes import RELATIONS, SPLITS

    mix = SPLITS["train"][0]
    return tuple(r for r, weight in zip(RELATIONS, mix) if weight < 0.5 / len(RELATIONS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="Hub id or local path (default: the built-in model organism)")
    parser.add_argument("--dev_task", default="scenes_dev", help="where the sweeps choose (default scenes_dev)")
    parser.add_argument("--eval_task", default="scenes_test", help="where the study reports (default scenes_test)")
    parser.add_argument("--limit", help="answer the first N samples of each task")
    parser.add_argument("--batch_size", default="16", help="samples per forward pass (default 16)")
    parser.add_argument("--rare", default=",".join(_default_rare()),
                        help="comma-separated relations the model rarely saw in training (default: the organism's "
                             f"rare ones, {','.join(_default_rare())})")
    parser.add_argument("--out", default="runs/study", help="output folder (default runs/study)")


def run(args: argparse.Namespace) -> int:
    limit = None if args.limit is None else parse_int(args.limit, "--limit", low=1)
    batch_size = parse_int(args.batch_size, "--batch_size", low=1)
    rare = tuple(filter(None, (r.strip() for r in (args.rare or "").split(","))))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VisfocusError(f"--out {out} is a file, not a folder")
    numbers = run_study(out, args.model, args.dev_task, args.eval_task, limit, batch_size, rare)
    from visfocus.study_report import REPORT_FILE, summary_lines

    print("\n".join(summary_lines(numbers)))
    print(f"\nwritten: {out / REPORT_FILE}, {out / 'study.json'}, {out / 'figures'}/")
    return 0


def _say(text: str) -> None:
    print(f"[visfocus] study: {text}", file=sys.stderr, flush=True)


def run_study(out: Path, model: str | None, dev_task: str, eval_task: str, limit: int | None, batch_size: int,
              rare: tuple[str, ...]) -> dict[str, Any]:
    """Run (or resume) the study into ``out``; returns its numbers (also ``out/study.json``), with the report and
    figures written."""
    from visfocus.benchmarks import task
    from visfocus.evaluate import LoadOnce
    from visfocus.run.config import RunConfig
    from visfocus.run.results import write_json
    from visfocus.study_report import write_report
    from visfocus.sweep import sweep

    task(dev_task)  # an unknown task is one error before any model loads
    evaluation = task(eval_task)
    relations = {record.relation for record in evaluation} - {None}
    if relations and set(rare) - relations:
        raise VisfocusError(f"--rare names {', '.join(sorted(set(rare) - relations))}, not a relation of "
                            f"{eval_task} ({', '.join(sorted(relations))})")
    load = LoadOnce(model)
    base = RunConfig(model=model, tasks=[dev_task], output_path=str(out / "sweeps"), limit=limit,
                     batch_size=batch_size)
    sweeps = {}
    for i, name in enumerate(SWEPT, 1):
        _say(f"step {i}/4: sweep {name} on {dev_task}, its choice and the baseline on {eval_task}")
        sweeps[name] = sweep(base, dev_task, eval_task, name, model=load)
    runs = traced_runs(sweeps)
    _say(f"step 3/4: {len(runs)} traced runs on {eval_task}")
    rows, traces, folders = _traced(runs, out, model, eval_task, limit, batch_size, load)
    _say("step 4/4: analyses, figures and report")
    numbers = analyse(sweeps, runs, rows, traces, _boxes(evaluation, rows["baseline"]), rare)
    for label, folder in folders.items():
        numbers["runs"][label]["folder"] = str(folder)
    numbers.update(model=model, dev_task=dev_task, eval_task=eval_task, limit=limit, rare=list(rare))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", plain(numbers))
    write_report(out, numbers)
    return numbers


def traced_runs(sweeps: dict[str, dict]) -> dict[str, tuple[str | None, dict]]:
    """{label: (method, args)} of the traced eval runs, each run once: baseline, "alpha_low" / "alpha_high" (the
    ScalingVis grid's extremes), "scaling_vis" (its chosen α), "adaptvis" (its chosen point) and "smooth" (ScalingVis
    at AdaptVis's α_low)."""
    alphas = sorted(float(a) for a in sweeps["scaling_vis"]["search_space"]["alpha"])
    chosen = sweeps["adaptvis"]["chosen"]
    return {"baseline": (None, {}),
            "alpha_low": ("scaling_vis", {"alpha": alphas[0]}),
            "alpha_high": ("scaling_vis", {"alpha": alphas[-1]}),
            "scaling_vis": ("scaling_vis", dict(sweeps["scaling_vis"]["chosen"])),
            "adaptvis": ("adaptvis", dict(chosen)),
            "smooth": ("scaling_vis", {"alpha": float(chosen["alpha_low"])})}


def _traced(runs: dict[str, tuple[str | None, dict]], out: Path, model: str | None, eval_task: str,
            limit: int | None, batch_size: int, load) -> tuple[dict[str, dict], dict[str, dict], dict[str, Path]]:
    """Run the traced eval runs (one per distinct method and arguments; sample-major, sharing each batch's prefill)
    and read back {label: rows}, {label: traces} and {label: run folder}."""
    from visfocus.compare import load_run
    from visfocus.evaluate import evaluate_many
    from visfocus.run.config import RunConfig
    from visfocus.run.folder import run_dir
    from visfocus.tracefile import load_traces

    distinct: dict[tuple, RunConfig] = {}
    for method, method_args in runs.values():
        key = (method, tuple(sorted(method_args.items())))
        distinct.setdefault(key, RunConfig(model=model, tasks=[eval_task], output_path=str(out / "traced"),
                                           limit=limit, batch_size=batch_size, trace="mean", method=method,
                                           method_args=method_args))
    evaluate_many(list(distinct.values()), model=load)
    rows, traces, folders = {}, {}, {}
    for label, (method, method_args) in runs.items():
        folders[label] = run_dir(distinct[(method, tuple(sorted(method_args.items())))])
        rows[label] = load_run(folders[label])[1][eval_task]
        traces[label] = load_traces(folders[label], eval_task)
    return rows, traces, folders


def _boxes(records, rows: dict) -> dict[str, dict[str, list]]:
    """{sample id: {"subject": [box], "reference": [box]}} of the answered records that name their objects
    (``Record.meta``'s "subject" and "reference" are box labels, as in the rendered scenes)."""
    out = {}
    for record in records:
        meta = record.meta or {}
        if record.id in rows and record.boxes and meta.get("subject") and meta.get("reference"):
            out[record.id] = {name: [b for b in record.boxes if b["label"] == meta[name]]
                              for name in ("subject", "reference")}
    return out


def analyse(sweeps: dict, runs: dict, rows: dict, traces: dict, boxes: dict, rare: tuple[str, ...]) -> dict:
    """Every number of the report (``visfocus.analysis.study``) from the sweeps and the traced runs."""
    from visfocus.analysis import study as analysis

    base_rows, base_traces = rows["baseline"], traces["baseline"]
    return {
        "sweeps": {name: {key: s.get(key) for key in ("metric", "search_space", "trials", "chosen", "dev_baseline",
                                                      "path")} for name, s in sweeps.items()},
        "runs": {label: {"method": method or "baseline", "args": args} for label, (method, args) in runs.items()},
        "confidence": analysis.confidence_by_relation(base_rows, rare),
        "attention": {"all": analysis.attention_by_correctness(base_traces, base_rows, boxes),
                      "rare": analysis.attention_by_correctness(base_traces, base_rows, boxes, rare)},
        "alpha": {label: {"args": runs[label][1], **analysis.alpha_effect(base_rows, rows[label], base_traces,
                                                                            traces[label], boxes)}
                  for label in ("alpha_low", "alpha_high", "scaling_vis", "adaptvis")},
        "adaptvis": {"chosen": runs["adaptvis"][1],
                     **analysis.adaptvis_branches(base_rows, rows["adaptvis"], rows["smooth"])},
    }


def plain(value: Any) -> Any:
    """JSON-ready: numpy to Python, nan to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
