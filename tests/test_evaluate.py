"""The evaluation runner: results schema, batching, resuming after a kill, refusing a changed config, missing images,
and the paired comparison of two runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visfocus.benchmarks import TASKS, Record
from visfocus.benchmarks.scoring import OptionTask
from visfocus.cli import main as cli_main
from visfocus.compare import compare_runs, load_run
from visfocus.errors import VisfocusError
from visfocus.evaluate import RunConfig, evaluate

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _config(tiny_dirs, tmp_path, **kw) -> RunConfig:
    base = dict(model=str(tiny_dirs["qwen2_vl"]), tasks=["synthetic_spatial"], limit=10, batch_size=4,
                max_new_tokens=3, output_path=str(tmp_path / "runs"))
    base.update(kw)
    return RunConfig(**base)


def _samples(out: dict, task: str) -> list[dict]:
    path = Path(out["config"]["run_dir"]) / f"samples_{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_results_and_samples(tiny_dirs, tmp_path):
    out = evaluate(_config(tiny_dirs, tmp_path, method="scaling_vis", method_args={"alpha": 2.0}, log_samples=True))
    folder = Path(out["config"]["run_dir"])
    saved = json.loads((folder / "results.json").read_text())
    for key in ("schema_version", "config", "method", "versions", "git_hash", "tasks", "cost", "created_at"):
        assert key in saved
    assert saved["method"] == {"name": "scaling_vis", "args": {"alpha": 2.0, "layers": None, "decode": False}}
    result = saved["tasks"]["synthetic_spatial"]
    assert result["n_samples"] == {"original": 64, "selected": 10, "missing_images": 0, "effective": 10}
    rows = _samples(out, "synthetic_spatial")
    assert len(rows) == 10 and all(r["extras"]["alpha_used"] == 2.0 and "alpha_used" not in r for r in rows)
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n") and rows[0]["question"] in rows[0]["prompt"]
    assert result["metrics"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 10)
    assert result["cost"]["forward_passes"] == pytest.approx(sum(r["forward_passes"] / r["batch_size"] for r in rows),
                                                             abs=1)
    assert saved["cost"]["prefill_tokens"] == sum(r["prefill_tokens"] for r in rows)


def test_batch_size_does_not_change_predictions(tiny_dirs, tmp_path):
    one = evaluate(_config(tiny_dirs, tmp_path / "a", batch_size=1))
    four = evaluate(_config(tiny_dirs, tmp_path / "b", batch_size=4))
    by_id = {r["id"]: r for r in _samples(one, "synthetic_spatial")}
    for row in _samples(four, "synthetic_spatial"):
        assert row["output"] == by_id[row["id"]]["output"]
        assert row["parsed"] == by_id[row["id"]]["parsed"]
        assert row["confidence"] == pytest.approx(by_id[row["id"]]["confidence"], abs=1e-4)


def test_interrupted_run_resumes_without_recomputing(tiny_dirs, tmp_path):
    reference = evaluate(_config(tiny_dirs, tmp_path / "ref", batch_size=2))

    def stop_after_two_batches(task, batch_index):
        if batch_index == 1:
            raise KeyboardInterrupt

    config = _config(tiny_dirs, tmp_path / "killed", batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, after_batch=stop_after_two_batches)
    folder = tmp_path / "killed" / "runs"
    (samples_file,) = folder.rglob("samples_synthetic_spatial.jsonl")
    assert len(samples_file.read_text().splitlines()) == 4
    with open(samples_file, "a") as f:
        f.write('{"id": "torn-li')  # a kill in the middle of a write
    calls = []
    resumed = evaluate(config, after_batch=lambda task, b: calls.append(b))
    assert len(calls) == 3  # only the 6 unfinished samples ran, in batches of 2
    ids = [r["id"] for r in _samples(resumed, "synthetic_spatial")]
    assert len(ids) == len(set(ids)) == 10
    assert resumed["tasks"]["synthetic_spatial"]["metrics"] == reference["tasks"]["synthetic_spatial"]["metrics"]


def test_changed_config_is_refused(tiny_dirs, tmp_path):
    evaluate(_config(tiny_dirs, tmp_path, limit=2))
    with pytest.raises(VisfocusError, match="max_new_tokens: 3 → 5"):
        evaluate(_config(tiny_dirs, tmp_path, limit=2, max_new_tokens=5))


def _as_schema_2(folder: Path, task: str) -> None:
    """Rewrite a run folder as visfocus wrote it at results schema 2: rows with ``passes``, a top-level
    ``alpha_used`` and ``method_extras`` (only when not empty); ``config.prefix_sharing``."""
    samples = folder / f"samples_{task}.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    old_rows = []
    for row in rows:
        extras = dict(row.pop("extras"))
        old = {**row, "passes": row.pop("forward_passes"), "alpha_used": extras.pop("alpha_used", None)}
        old_rows.append({**{k: v for k, v in old.items() if k != "forward_passes"},
                         **({"method_extras": extras} if extras else {})})
    samples.write_text("".join(json.dumps(r) + "\n" for r in old_rows))
    results = json.loads((folder / "results.json").read_text())
    results["schema_version"] = 2
    results["config"]["prefix_sharing"] = results["config"].pop("share_prefix")
    (folder / "results.json").write_text(json.dumps(results))


def test_a_folder_written_at_schema_2_resumes_and_reads_under_todays_names(tiny_dirs, tmp_path):
    reference = evaluate(_config(tiny_dirs, tmp_path / "ref", method="adaptvis", limit=6, batch_size=2))
    first = evaluate(_config(tiny_dirs, tmp_path / "old", method="adaptvis", limit=4, batch_size=2))
    folder = Path(first["config"]["run_dir"])
    _as_schema_2(folder, "synthetic_spatial")
    resumed = evaluate(_config(tiny_dirs, tmp_path / "old", method="adaptvis", limit=6, batch_size=2))
    assert resumed["provenance"][-1]["samples_added"] == {"synthetic_spatial": 2}
    got, expected = resumed["tasks"]["synthetic_spatial"], reference["tasks"]["synthetic_spatial"]
    assert got["metrics"]["accuracy"] == expected["metrics"]["accuracy"]
    assert got["metrics"]["mean_confidence"] == pytest.approx(expected["metrics"]["mean_confidence"])
    assert {k: v for k, v in got["cost"].items() if k != "seconds"} == \
        {k: v for k, v in expected["cost"].items() if k != "seconds"}  # the old rows' passes counted
    assert resumed["config"]["share_prefix"] is True and "prefix_sharing" not in resumed["config"]
    _, samples = load_run(folder)  # what compare and report read
    rows, expected = samples["synthetic_spatial"], {r["id"]: r for r in _samples(reference, "synthetic_spatial")}
    assert len(rows) == 6 and all("passes" not in r and "alpha_used" not in r for r in rows.values())
    assert {i: (r["forward_passes"], r["extras"]) for i, r in rows.items()} == \
        {i: (r["forward_passes"], r["extras"]) for i, r in expected.items()}


class _MissingImages(OptionTask):
    def load_records(self):
        return [Record(id=str(i), question="Where is the cup? Answer with left or right.", gold="left",
                       options=("left", "right"), image_path=str(Path(self.data_root or "/nowhere") / f"{i}.png"))
                for i in range(3)]


def test_missing_images_stop_the_run_before_any_forward_pass(tiny_dirs, tmp_path, monkeypatch, image):
    monkeypatch.setitem(TASKS, "test_missing", lambda **kw: _MissingImages(**kw))
    image.save(tmp_path / "0.png")
    (tmp_path / "1.png").write_text("not an image")
    config = _config(tiny_dirs, tmp_path, tasks=["test_missing"], data_root=str(tmp_path))
    with pytest.raises(VisfocusError, match="2 of 3 images are missing or unusable") as err:
        evaluate(config)
    assert "unreadable" in str(err.value) and "missing" in str(err.value)
    assert not list((tmp_path / "runs").rglob("samples_*.jsonl"))
    config.skip_missing = True
    out = evaluate(config)
    assert out["tasks"]["test_missing"]["n_samples"] == {"original": 3, "selected": 3, "missing_images": 2,
                                                         "effective": 1}


def test_eval_where_every_image_is_missing_says_nothing_was_evaluated(tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TASKS, "test_missing", lambda **kw: _MissingImages(**kw))
    argv = ["eval", "--model", str(tiny_dirs["qwen2_vl"]), "--tasks", "test_missing", "--data_root",
            str(tmp_path / "empty"), "--skip_missing", "--output_path", str(tmp_path / "runs")]
    assert cli_main(argv) == 2
    out, err = capsys.readouterr()
    assert "test_missing: nothing evaluated — all 3 selected samples have missing or unusable images" in out
    assert "nan" not in out
    errors = [line for line in err.splitlines() if line.startswith("visfocus: error:")]
    assert errors == ["visfocus: error: nothing was evaluated on test_missing (all 3 selected samples have missing or "
                      "unusable images); the results file records the counts"]
    results = json.loads(next((tmp_path / "runs").rglob("results.json")).read_text())
    assert results["tasks"]["test_missing"]["n_samples"]["missing_images"] == 3  # what was found is kept
    assert cli_main([*argv[:-2], "--offset", "5", "--output_path", str(tmp_path / "runs2")]) == 2
    assert "no sample selected (see --offset and --limit)" in capsys.readouterr().out


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_vsr_rows_with_staged_images_run_end_to_end(tiny_dirs, tmp_path):
    names = [f"vsr_{v}_{p}" for v in ("random", "zeroshot") for p in ("train", "dev", "test")]
    out = evaluate(_config(tiny_dirs, tmp_path, model=str(tiny_dirs["llava"]), tasks=names, limit=None,
                           data_root=str(SHARED_DATA), skip_missing=True, max_new_tokens=2))
    effective = {n: out["tasks"][n]["n_samples"]["effective"] for n in names}
    assert sum(effective.values()) == 45
    assert effective["vsr_random_dev"] == 1 and effective["vsr_random_test"] == 3
    assert effective["vsr_zeroshot_test"] == 1
    assert "tpr_tnr_harmonic_mean" in out["tasks"]["vsr_random_train"]["metrics"]


def _fake_run(folder: Path, correct: list[bool]) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"method": {"name": "x"}, "tasks": {"t": {}}}))
    rows = [{"id": str(i), "correct": c} for i, c in enumerate(correct)]
    (folder / "samples_t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_counts_flips_and_mcnemar(tmp_path):
    # A right on 0-4, wrong on 5-9; B fixes 5, 6, 7 and breaks 0. Shared ids: 10 (B has an extra id 10).
    _fake_run(tmp_path / "a", [True] * 5 + [False] * 5)
    _fake_run(tmp_path / "b", [False] + [True] * 4 + [True] * 3 + [False] * 2 + [True])
    result = compare_runs(tmp_path / "a", tmp_path / "b")["tasks"]["t"]
    assert result["n_shared"] == 10
    assert result["flips"] == {"fixed": 3, "broken": 1, "both_right": 4, "both_wrong": 2}
    # exact McNemar on (1, 3): 2 * P(X <= 1), X ~ Bin(4, 0.5) = 2 * (1 + 4) / 16 = 0.625
    assert result["mcnemar_p"] == pytest.approx(0.625)
    assert result["delta"] == pytest.approx(0.2)
    assert result["ci_low"] <= 0.2 <= result["ci_high"]


def test_a_layer_fraction_is_recorded_as_the_layers_it_means_on_this_model(tiny_dirs, tmp_path):
    out = evaluate(_config(tiny_dirs, tmp_path, limit=2, method="scaling_vis",
                           method_args={"alpha": 2.0, "layers": "0.5:1"}))
    saved = json.loads((Path(out["config"]["run_dir"]) / "results.json").read_text())
    assert saved["method"]["args"]["layers"] == "0.5:1"
    assert saved["method"]["resolved"] == {"layers": [1]}  # the tiny decoder has 2 layers: i/2 ≥ 0.5
