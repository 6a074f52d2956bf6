"""Sweeps: grid parsing, the choice (ties go to the identity), dev-only search, the chosen point on the test task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visfocus.errors import VisfocusError
from visfocus.evaluate import RunConfig
from visfocus.sweep import choose, grid_points, parse_grid, sweep


def test_parse_grid_and_points():
    grid = parse_grid("scaling_vis", "alpha=0.5|2,layers=0;1|1")
    assert grid == {"alpha": [0.5, 2.0], "layers": [(0, 1), (1,)]}
    assert len(grid_points(grid)) == 4
    with pytest.raises(VisfocusError, match="KEY=V1"):
        parse_grid("scaling_vis", "alpha")


def test_choose_breaks_ties_towards_the_identity():
    trials = [{"args": {"alpha": 2.0}, "metrics": {"accuracy": 0.7}, "distance_from_identity": 1.0},
              {"args": {"alpha": 0.8}, "metrics": {"accuracy": 0.7}, "distance_from_identity": 0.2},
              {"args": {"alpha": 0.5}, "metrics": {"accuracy": 0.6}, "distance_from_identity": 0.5}]
    assert choose(trials, "accuracy")["args"] == {"alpha": 0.8}
    trials[2]["metrics"]["accuracy"] = 0.9
    assert choose(trials, "accuracy")["args"] == {"alpha": 0.5}


def test_sweep_searches_dev_and_reports_the_choice_on_test(tiny_dirs, tmp_path):
    base = RunConfig(model=str(tiny_dirs["qwen2_vl"]), limit=4, batch_size=4, max_new_tokens=2,
                     output_path=str(tmp_path))
    out = sweep(base, "synthetic_spatial", "synthetic_spatial", "adaptvis",
                {"alpha_low": [0.5], "alpha_high": [1.5, 2.0]})
    saved = json.loads(open(out["path"]).read())
    # No thresholds given: they come from quantiles of the dev confidences of the unedited run.
    thresholds = saved["search_space"]["threshold"]
    assert 1 <= len(thresholds) <= 5 and all(0 < t < 1 for t in thresholds)
    assert len(saved["trials"]) == 2 * len(thresholds)
    assert saved["chosen"] in [t["args"] for t in saved["trials"]]
    best = max(t["metrics"]["accuracy"] for t in saved["trials"])
    chosen = next(t for t in saved["trials"] if t["args"] == saved["chosen"])
    assert chosen["metrics"]["accuracy"] == best
    assert set(saved["test"]) == {"baseline", "chosen"}
    # the chosen point's run folder holds its dev and test results, with the chosen arguments
    chosen_run = json.loads((Path(saved["chosen_run"]) / "results.json").read_text())
    assert chosen_run["method"]["name"] == "adaptvis"
    assert {k: chosen_run["method"]["args"][k] for k in saved["chosen"]} == saved["chosen"]
    assert set(chosen_run["tasks"]) == {"synthetic_spatial"}
    assert json.loads((Path(saved["baseline_run"]) / "results.json").read_text())["config"]["method"] == "baseline"


def test_a_sweep_loads_its_model_once_for_all_trials(tiny_dirs, tmp_path, monkeypatch):
    import visfocus.evaluate as evaluate_module

    loads = []
    real = evaluate_module.load_model
    monkeypatch.setattr(evaluate_module, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    base = RunConfig(model=str(tiny_dirs["llava"]), limit=3, max_new_tokens=2, output_path=str(tmp_path))
    out = sweep(base, "synthetic_spatial", "synthetic_spatial", "scaling_vis", {"alpha": [0.5, 1.5, 2.0]})
    assert len(out["trials"]) == 3 and loads == [1]  # 1 baseline + 3 trials + 2 test runs, one load
    resumed = sweep(base, "synthetic_spatial", "synthetic_spatial", "scaling_vis", {"alpha": [0.5, 1.5, 2.0]})
    assert resumed["trials"] == out["trials"] and loads == [1]  # all finished: nothing loads


def test_bad_grid_point_fails_before_any_run(tiny_dirs, tmp_path):
    base = RunConfig(model=str(tiny_dirs["qwen2_vl"]), limit=2, output_path=str(tmp_path))
    with pytest.raises(VisfocusError, match="alpha must be"):
        sweep(base, "synthetic_spatial", None, "scaling_vis", {"alpha": [0.5, -1.0]})
    assert not list(tmp_path.rglob("results.json"))
