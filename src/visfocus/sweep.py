"""Hyper-parameter search done right (``visfocus sweep``): every grid point on a dev task, the best by the task's main
metric (ties → the point closest to the identity), then only the chosen point on the eval (test) task. Every trial
is an ordinary resumable run; ``sweep.json`` holds the search space, each trial's metrics, the choice and the eval
result. A method whose grid depends on the dev set (``Method.wants_dev_confidences``: AdaptVis's thresholds) gets
the baseline's dev confidences first.

The model loads once, and the trials run sample-major (``evaluate_many``): with prefix sharing, every grid point of a
batch starts from the batch's one unedited prefill, so a point costs the last prompt token and the decoding."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from visfocus import distributed
from visfocus.benchmarks import task
from visfocus.errors import VisfocusError
from visfocus.evaluate import LoadOnce, evaluate, evaluate_many
from visfocus.interventions import method
from visfocus.interventions.base import method_class, parse_method_args
from visfocus.run.config import RunConfig
from visfocus.run.folder import run_dir
from visfocus.run.results import Results, write_json
from visfocus.run.samples import read_samples


def parse_grid(method_name: str, text: str | None) -> dict[str, list]:
    """``"alpha=0.5|0.8|1.2,layers=10;11|12;13"`` → {param: [values]}; '|' separates candidates."""
    grid: dict[str, list] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        key, sep, values = item.partition("=")
        if not sep:
            raise VisfocusError(f"cannot read grid entry {item!r}; expected KEY=V1|V2|...")
        grid[key.strip()] = [parse_method_args(method_name, f"{key.strip()}={v}")[key.strip()]
                             for v in values.split("|")]
    return grid


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def choose(trials: list[dict], metric: str) -> dict:
    """The best trial by ``metric``; ties go to the smallest distance from the identity, then to the earlier."""
    scored = [t for t in trials if t["metrics"].get(metric) is not None and not np.isnan(t["metrics"][metric])]
    if not scored:
        raise VisfocusError(f"no trial produced the metric '{metric}'")
    return max(scored, key=lambda t: (round(t["metrics"][metric], 12), -t["distance_from_identity"]))


def sweep(base: RunConfig, dev_task: str, eval_task: str | None, method_name: str,
          grid: dict[str, list] | None = None, model: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Search ``grid`` (default: the method's search grid) on ``dev_task``, then report the chosen point and the
    baseline on ``eval_task``. ``model``: gives the loaded VLM (default: ``base.model``, loaded once)."""
    cls = method_class(method_name)
    given = set(grid or ())
    grid = dict(grid or cls.search_grid)
    if not grid:
        raise VisfocusError(f"method '{method_name}' has no default search grid; pass --grid")
    for point in grid_points(grid):
        method(method_name, **point)  # validate every point before any forward pass
    metric = task(dev_task, base.data_root, base.prompt_style, base.scorer).main_metric
    model = model or LoadOnce(base.model, base.model_args)  # one model for every trial

    def trial(task_name: str, name: str | None, args: dict) -> RunConfig:
        return dataclasses.replace(base, tasks=[task_name], method=name, method_args=args)

    baseline = None
    if cls.wants_dev_confidences(grid, given):  # the baseline first: its confidences complete the grid
        baseline = evaluate(trial(dev_task, None, {}), model=model)
        grid = cls.grid_with_dev_confidences(grid, dev_confidences(baseline, dev_task))
    points = grid_points(grid)
    # every grid point sample-major: each batch under all points in turn, so they share its unedited prefill
    runs = [trial(dev_task, method_name, point) for point in points]
    outs = evaluate_many(runs if baseline is not None else [trial(dev_task, None, {}), *runs], model=model)
    baseline = baseline if baseline is not None else outs.pop(0)
    trials = [{"args": point, "metrics": {metric: out["tasks"][dev_task]["metrics"].get(metric)},
               "n_effective": out["tasks"][dev_task]["n_samples"]["effective"],
               "distance_from_identity": method(method_name, **point).distance_from_identity()}
              for point, out in zip(points, outs)]
    best = choose(trials, metric)
    out: dict[str, Any] = {"schema_version": 1, "method": method_name, "dev_task": dev_task, "eval_task": eval_task,
                           "metric": metric, "search_space": grid, "trials": trials, "chosen": best["args"],
                           # the run folders of the chosen point and of the baseline (dev and eval tasks in each)
                           "chosen_run": str(run_dir(trial(dev_task, method_name, best["args"]))),
                           "baseline_run": str(run_dir(trial(dev_task, None, {}))),
                           "dev_baseline": {metric: baseline["tasks"][dev_task]["metrics"].get(metric)}}
    if eval_task:
        baseline_eval, chosen_eval = evaluate_many(
            [trial(eval_task, None, {}), trial(eval_task, method_name, best["args"])], model=model)
        out["test"] = {"baseline": baseline_eval["tasks"][eval_task]["metrics"],
                       "chosen": chosen_eval["tasks"][eval_task]["metrics"]}
    return _written(out, run_dir(trial(dev_task, None, {})).parent / f"sweep_{method_name}_{dev_task}")


def dev_confidences(baseline: Results, dev_task: str) -> list[float]:
    """The ``confidence`` of every sample row of the baseline's dev run."""
    rows = read_samples(Path(baseline["config"]["run_dir"]) / f"samples_{dev_task}.jsonl").rows
    return [row["confidence"] for row in rows.values() if row.get("confidence") is not None]


def _written(out: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``out`` written to ``folder/sweep.json`` by rank 0 (every rank chose the same point from the same merged
    results), with its ``path``."""
    if distributed.current().is_main:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "sweep.json", out)
    out["path"] = str(folder / "sweep.json")
    return out
