"""Prefix sharing in the runners: ``visfocus eval`` groups one image's samples and answers them from one prefill of
its prefix, with the same answers as whole prefills, a samples file in sample order, and resume in the middle of an
image's questions; ``visfocus sweep`` runs its trials sample-major with the same results as separate runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visfocus.benchmarks import TASKS, Record
from visfocus.benchmarks.scoring import BinaryTask
from visfocus.cli import main as cli_main
from visfocus.evaluate import RunConfig, evaluate, evaluate_many
from visfocus.run.records import group_by_image
from visfocus.sweep import sweep
from visfocus.testing import make_image

OBJECTS = ("cup", "red bicycle", "dog", "small wooden chair on the left")


class _PopeShaped(BinaryTask):
    """Three images, four yes/no questions each (of different lengths), listed round-robin: image 0, 1, 2, 0, …"""

    def load_records(self):
        root = Path(self.data_root)
        return [Record(id=f"{i}-{k}", question=f"Is there a {obj} in the image?", gold="yes" if k % 2 else "no",
                       options=("yes", "no"), image_path=str(root / f"{i}.png"))
                for k, obj in enumerate(OBJECTS) for i in range(3)]


@pytest.fixture
def pope_shaped(tmp_path, monkeypatch):
    for i in range(3):
        make_image(96 + 32 * i, 128, seed=10 + i).save(tmp_path / f"{i}.png")
    monkeypatch.setitem(TASKS, "test_pope_shaped", lambda **kw: _PopeShaped(**kw))
    return tmp_path


def _config(tiny_dirs, data: Path, out: Path, **kw) -> RunConfig:
    base = dict(model=str(tiny_dirs["qwen2_5_vl"]), tasks=["test_pope_shaped"], data_root=str(data), batch_size=2,
                max_new_tokens=3, output_path=str(out))
    base.update(kw)
    return RunConfig(**base)


def _rows(out: dict) -> list[dict]:
    path = Path(out["config"]["run_dir"]) / "samples_test_pope_shaped.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_answers(a: list[dict], b: list[dict]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert (x["output"], x["parsed"], x["correct"], x["first_token"]) == \
            (y["output"], y["parsed"], y["correct"], y["first_token"])
        assert x["confidence"] == pytest.approx(y["confidence"], abs=1e-4)


def test_group_by_image_keeps_first_appearance_order():
    records = [Record(id=str(k), question="q", gold="yes", image_path=f"{k % 3}.png") for k in range(7)]
    assert [r.id for r in group_by_image(records)] == ["0", "3", "6", "1", "4", "2", "5"]


@pytest.mark.parametrize("method,method_args", [(None, {}), ("adaptvis", {"confidence": "option_prob"})])
def test_eval_with_shared_prefixes_gives_the_answers_of_whole_prefills(tiny_dirs, pope_shaped, tmp_path, method,
                                                                       method_args):
    whole = evaluate(_config(tiny_dirs, pope_shaped, tmp_path / "whole", method=method, method_args=method_args,
                             share_prefix=False))
    shared = evaluate(_config(tiny_dirs, pope_shaped, tmp_path / "shared", method=method, method_args=method_args))
    rows_whole, rows_shared = _rows(whole), _rows(shared)
    _same_answers(rows_whole, rows_shared)  # and the samples file is in sample order, though answered by image
    assert [r["id"] for r in rows_shared] == [f"{i}-{k}" for k in range(4) for i in range(3)]
    metrics_shared, metrics_whole = (out["tasks"]["test_pope_shaped"]["metrics"] for out in (shared, whole))
    assert metrics_shared["accuracy"] == metrics_whole["accuracy"] and metrics_shared["f1"] == metrics_whole["f1"]
    assert metrics_shared["mean_confidence"] == pytest.approx(metrics_whole["mean_confidence"], abs=1e-5)
    assert shared["config"]["share_prefix"] is True and whole["config"]["share_prefix"] is False
    assert all(r["shared_prefix_tokens"] == 0 for r in rows_whole)
    assert all(r["shared_prefix_tokens"] > 0 for r in rows_shared)
    # 12 questions, 3 images: each prefix ran once, so fewer prompt tokens ran; an image's second batch (its
    # questions 2 and 3) ran only question tokens and the re-run last token, no image token
    cost_whole = whole["tasks"]["test_pope_shaped"]["cost"]["prefill_tokens"]
    cost_shared = shared["tasks"]["test_pope_shaped"]["cost"]["prefill_tokens"]
    assert cost_shared < 0.75 * cost_whole
    for row in rows_shared[6:]:
        assert row["prefill_tokens"] < row["shared_prefix_tokens"]


def test_a_run_killed_in_the_middle_of_an_image_resumes_to_the_same_results(tiny_dirs, pope_shaped, tmp_path):
    reference = evaluate(_config(tiny_dirs, pope_shaped, tmp_path / "ref", share_prefix=False))

    def stop(task, batch_index):
        if batch_index == 2:  # 6 samples done: all of image 0 (4) and half of image 1
            raise KeyboardInterrupt

    config = _config(tiny_dirs, pope_shaped, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, after_batch=stop)
    (samples,) = (tmp_path / "killed").rglob("samples_test_pope_shaped.jsonl")
    done = [json.loads(line)["id"] for line in samples.read_text().splitlines()]
    assert done == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1"]  # answered image by image
    batches = []
    resumed = evaluate(config, after_batch=lambda task, b: batches.append(b))
    assert len(batches) == 3  # the 6 unfinished samples, in batches of 2
    _same_answers(_rows(reference), _rows(resumed))


@pytest.mark.parametrize("flag", ["--no_share_prefix", "--no_prefix_sharing"])  # the second: the old name
def test_no_share_prefix_flag_reaches_the_run(tiny_dirs, pope_shaped, tmp_path, flag):
    argv = ["eval", "--model", str(tiny_dirs["llava"]), "--tasks", "test_pope_shaped", "--data_root",
            str(pope_shaped), "--limit", "3", "--max_new_tokens", "2", "--output_path", str(tmp_path / "runs")]
    assert cli_main([*argv, flag]) == 0
    (results,) = (tmp_path / "runs").rglob("results.json")
    saved = json.loads(results.read_text())
    assert saved["config"]["share_prefix"] is False
    assert cli_main(argv) == 0  # same run folder: sharing does not change the answers, so the run is the same run
    assert json.loads(results.read_text())["config"]["share_prefix"] is True


def test_runs_answered_sample_major_equal_separate_runs(tiny_dirs, pope_shaped, tmp_path):
    points = [{"alpha": 0.5}, {"alpha": 2.0}]
    configs = [_config(tiny_dirs, pope_shaped, tmp_path / "many", method="scaling_vis", method_args=p)
               for p in points]
    together = evaluate_many(configs)
    for point, out in zip(points, together):
        alone = evaluate(_config(tiny_dirs, pope_shaped, tmp_path / "alone", method="scaling_vis",
                                 method_args=point, share_prefix=False))
        _same_answers(_rows(alone), _rows(out))
    # both points of a batch from one forward: the question tokens and one column per point (variant columns)
    first, second = _rows(together[0]), _rows(together[1])
    alone = _rows(evaluate(_config(tiny_dirs, pope_shaped, tmp_path / "shared", method="scaling_vis",
                                   method_args=points[0])))
    for a, b, one in zip(first, second, alone):
        assert a["forward_passes"] == b["forward_passes"] == one["forward_passes"]
        assert a["prefill_tokens"] == b["prefill_tokens"] == one["prefill_tokens"] + len(points)


def test_sweep_with_shared_prefills_matches_the_sweep_without(tiny_dirs, pope_shaped, tmp_path):
    def run(sharing: bool, folder: str) -> dict:
        base = _config(tiny_dirs, pope_shaped, tmp_path / folder, share_prefix=sharing, max_new_tokens=2)
        return sweep(base, "test_pope_shaped", None, "adaptvis",
                     {"alpha_low": [0.5], "alpha_high": [1.5, 2.0], "threshold": [0.3, 0.6]})

    shared, whole = run(True, "shared"), run(False, "whole")
    assert shared["trials"] == whole["trials"] and shared["chosen"] == whole["chosen"]
    assert shared["dev_baseline"] == whole["dev_baseline"]


def test_a_share_prefix_value_that_is_not_a_boolean_is_one_clear_error(tiny_dirs, pope_shaped, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("share_prefix: maybe\n")
    argv = ["eval", "--model", str(tiny_dirs["llava"]), "--tasks", "test_pope_shaped", "--data_root",
            str(pope_shaped), "--config", str(config), "--output_path", str(tmp_path / "runs")]
    assert cli_main(argv) == 2
    assert not (tmp_path / "runs").exists()  # refused before anything was written
