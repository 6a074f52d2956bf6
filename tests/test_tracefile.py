"""Trace files written by ``visfocus eval --trace``: what is stored, that it equals the live trace, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import visfocus as vf
from visfocus.evaluate import RunConfig, evaluate
from visfocus.tracefile import load_traces, sample_arrays


def _run(tiny_dirs, tmp_path, **kw):
    config = RunConfig(model=str(tiny_dirs["qwen3_vl"]), tasks=["synthetic_spatial"], limit=5, batch_size=2,
                       max_new_tokens=1, output_path=str(tmp_path), trace="heads", **kw)
    out = evaluate(config)
    return Path(out["config"]["run_dir"])


def test_eval_trace_files_hold_every_sample(tiny_dirs, tiny_vlms, tmp_path):
    folder = _run(tiny_dirs, tmp_path, method="scaling_vis", method_args={"alpha": 2.0})
    traces = load_traces(folder, "synthetic_spatial")
    samples = [json.loads(line) for line in (folder / "samples_synthetic_spatial.jsonl").read_text().splitlines()]
    assert set(traces) == {s["id"] for s in samples}
    entry = traces["0"]
    L, H = 2, 4
    (view,) = entry["views"]
    n_image = view["rows"] * view["cols"]
    assert entry["attention"].shape == (L, H, n_image) and entry["attention"].dtype == np.float16
    assert "attention_pre" in entry  # ScalingVis edited the row
    assert np.allclose(entry["shares"].sum(-1), 1.0, atol=1e-5)
    # the stored attention is the live trace's
    record = vf.task("synthetic_spatial")[0]
    live = tiny_vlms["qwen3_vl"].answer(record.image, record.question, max_new_tokens=1, trace=True,
                                        method=vf.method("scaling_vis", alpha=2.0))
    expected = sample_arrays(live.trace)["attention"]
    assert np.allclose(entry["attention"].astype(np.float32), expected.astype(np.float32), atol=1e-3)
    grid_mass = entry["attention"].astype(np.float32)[..., view["index"]].sum(-1).mean(-1)  # (L,) head-mean
    assert np.allclose(grid_mass, entry["shares"][:, 0], atol=5e-3)


def test_mean_mode_and_no_pre_without_an_edit(tiny_dirs, tmp_path):
    config = RunConfig(model=str(tiny_dirs["llava"]), tasks=["synthetic_spatial"], limit=2, max_new_tokens=1,
                       output_path=str(tmp_path), trace="mean")
    folder = Path(evaluate(config)["config"]["run_dir"])
    entry = load_traces(folder, "synthetic_spatial")["1"]
    assert entry["attention"].shape == (2, 36)
    assert "attention_pre" not in entry


def test_missing_traces_and_bad_mode_are_clear_errors(tmp_path):
    with pytest.raises(vf.VisfocusError, match="run `visfocus eval ... --trace`"):
        load_traces(tmp_path, "synthetic_spatial")
    with pytest.raises(vf.VisfocusError, match="--trace must be"):
        RunConfig(trace="all").validate()
