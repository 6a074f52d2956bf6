"""``visfocus study``: its analyses on hand-computed data (box shares, confidence by relation and rarity, paired
statistics, AdaptVis's branches and smoothing by confidence), and the command end to end on the organism with a
small ``--limit``, producing every figure, the report's every section and numbers recomputed from the run folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from visfocus import metrics
from visfocus.analysis import study as analysis
from visfocus.cli import main as cli_main
from visfocus.compare import load_run
from visfocus.study_report import FIGURES, REPORT_FILE

VIEW = {"rows": 2, "cols": 2, "region": (0, 0, 32, 32), "image_size": (32, 32), "index": [3, 2, 1, 0]}


def test_box_share_is_the_image_attention_on_the_boxes_cells():
    attention = np.array([[[0.1, 0.2, 0.3, 0.4]], [[0.0, 0.0, 0.0, 0.0]]])  # (L=2, H=1, N=4)
    top_left = [{"label": "a", "xyxy": (0, 0, 16, 16), "normalized": False}]  # cell 0, which is image token 3
    share = analysis.box_share_by_layer(attention, VIEW, top_left)
    assert share[0] == pytest.approx(0.4 / 1.0) and math.isnan(share[1])
    right_half = [{"label": "b", "xyxy": (0.5, 0.0, 1.0, 1.0), "normalized": True}]  # cells 1 and 3: tokens 2, 0
    assert analysis.box_share_by_layer(attention[:1], VIEW, right_half)[0] == pytest.approx(0.3 + 0.1)


def _row(relation, correct, confidence, alpha=None):
    return {"relation": relation, "correct": correct, "confidence": confidence,
            "extras": {} if alpha is None else {"alpha_used": alpha}}


def test_confidence_by_relation_says_whether_low_confidence_flags_the_rare_relations():
    rows = {"a": _row("left", True, 0.99), "b": _row("left", True, 0.9), "c": _row("on", False, 0.6),
            "d": _row("on", True, 0.7), "e": _row("under", False, 0.5)}
    out = analysis.confidence_by_relation(rows, rare=("on", "under"))
    assert out["rare"] == {"relations": ["on", "under"], "n": 3, "accuracy": pytest.approx(1 / 3),
                           "mean_confidence": pytest.approx(0.6)}
    assert out["common"]["n"] == 2 and out["common"]["accuracy"] == 1.0
    assert out["auroc_common_vs_rare"] == 1.0  # every common answer above every rare one
    # right answers 0.99, 0.9, 0.7 against wrong 0.6, 0.5: every pair ordered
    assert out["auroc_correct"] == 1.0
    assert out["per_relation"]["on"]["accuracy"] == 0.5
    flipped = analysis.confidence_by_relation(rows | {"f": _row("under", True, 0.995)}, rare=("on", "under"))
    assert flipped["auroc_common_vs_rare"] == pytest.approx(metrics.auroc(
        [0.99, 0.9, 0.6, 0.7, 0.5, 0.995], [True, True, False, False, False, False]))


def test_paired_statistics_count_flips_overall_and_per_relation():
    base = {"a": _row("on", False, 0.5), "b": _row("on", True, 0.9), "c": _row("left", False, 0.6),
            "d": _row("left", True, 0.9)}
    run = {"a": _row("on", True, 0.6), "b": _row("on", True, 0.9), "c": _row("left", True, 0.7),
           "d": _row("left", False, 0.8), "z": _row("left", True, 0.9)}  # z: not in the baseline, left out
    out = analysis.paired(base, run)
    assert out["n"] == 4 and out["baseline"] == 0.5 and out["run"] == 0.75 and out["delta"] == 0.25
    assert out["flips"] == {"fixed": 2, "broken": 1, "both_right": 1, "both_wrong": 0}
    assert out["mcnemar_p"] == metrics.mcnemar_exact(1, 2) == 1.0
    assert out["per_relation"]["on"] == {"n": 2, "baseline": 0.5, "run": 1.0, "fixed": 1, "broken": 0,
                                         "both_right": 1, "both_wrong": 0}
    assert out["fixed_ids"] == ["a", "c"] and out["broken_ids"] == ["d"]


def test_alpha_effect_shifts_are_the_mean_per_layer_difference():
    def trace(image, entropy_flat):
        attention = np.array([[[0.25, 0.25, 0.25, 0.25]] if entropy_flat else [[1.0, 0.0, 0.0, 0.0]]])  # (1, 1, 4)
        return {"attention": attention * image, "shares": np.array([[image, 1 - image, 0.0]]), "views": [VIEW]}

    base = {"a": _row("on", False, 0.5)}
    out = analysis.alpha_effect(base, {"a": _row("on", True, 0.6)}, {"a": trace(0.5, True)},
                                {"a": trace(0.8, False)}, {"a": {"subject": [{"xyxy": (16, 16, 32, 32)}]}})
    shift = out["shift"]
    assert shift["n"] == 1 and shift["image_share"] == [pytest.approx(0.3)]
    assert shift["entropy"] == [pytest.approx(0.0 - math.log(4))]
    # token 0 is cell 3 (bottom right, the subject's box): 1/4 of the mass before, all of it after
    assert shift["subject_box"] == [pytest.approx(0.75)] and "reference_box" not in shift


def test_attention_by_correctness_averages_each_group_and_ranks_right_answers():
    def trace(image):  # (L=1, H=1, N=4), all of the image mass on token 0 (cell 3, the subject's box)
        return {"attention": np.array([[[image, 0.0, 0.0, 0.0]]]), "shares": np.array([[image, 1 - image, 0.0]]),
                "views": [VIEW]}

    rows = {"a": _row("on", True, 0.9), "b": _row("on", True, 0.8), "c": _row("on", False, 0.5),
            "d": _row("left", False, 0.5)}
    traces = {"a": trace(0.6), "b": trace(0.4), "c": trace(0.5), "d": trace(0.7)}
    boxes = {sid: {"subject": [{"xyxy": (16, 16, 32, 32)}]} for sid in rows}
    out = analysis.attention_by_correctness(traces, rows, boxes)
    assert out["correct"]["n"] == 2 and out["incorrect"]["n"] == 2
    assert out["correct"]["image_share"] == [pytest.approx(0.5)] and out["incorrect"]["image_share"] == [
        pytest.approx(0.6)]
    assert out["correct"]["subject_box"] == [1.0] and out["correct"]["entropy"] == [0.0]
    # right 0.6, 0.4 against wrong 0.5, 0.7: of the 4 pairs, one has the right answer higher
    assert out["auroc"]["image_share"] == [0.25] and out["auroc"]["subject_box"] == [0.5]
    only_on = analysis.attention_by_correctness(traces, rows, boxes, relations=("on",))
    assert only_on["incorrect"]["n"] == 1 and only_on["auroc"]["image_share"] == [0.5]


def test_adaptvis_branches_and_smoothing_by_confidence():
    base = {str(i): _row("on" if i < 3 else "left", i >= 2, c) for i, c in enumerate([0.2, 0.3, 0.4, 0.8, 0.9, 0.95])}
    adapt = {sid: _row(r["relation"], r["correct"] or sid == "0", r["confidence"],
                       alpha=0.5 if r["confidence"] < 0.5 else 1.2) for sid, r in base.items()}
    smooth = {sid: _row(r["relation"], sid in ("0", "2", "3", "4"), r["confidence"]) for sid, r in base.items()}
    out = analysis.adaptvis_branches(base, adapt, smooth, n_bins=3)
    assert [(b["alpha"], b["n"], b["accuracy"], b["baseline_accuracy"]) for b in out["branches"]] == [
        (0.5, 3, pytest.approx(2 / 3), pytest.approx(1 / 3)), (1.2, 3, 1.0, 1.0)]
    assert out["branches"][0]["relations"] == {"on": 3}
    assert [(b["n"], b["low"], b["high"], b["fixed"], b["broken"]) for b in out["by_confidence"]] == [
        (2, 0.2, 0.3, 1, 0), (2, 0.4, 0.8, 0, 0), (2, 0.9, 0.95, 0, 1)]
    # flips: "0" fixed at 0.2, "5" broken at 0.95: low confidence ranks the fixed one first
    assert out["auroc_low_confidence_fixed"] == 1.0


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert cli_main(["study", "--limit", "12", "--batch_size", "6", "--out", str(out)]) == 0
    return out


def test_the_study_runs_end_to_end_with_every_figure_and_section(study, capsys):
    for name in FIGURES:
        png = study / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (study / REPORT_FILE).read_text()
    for heading in ("## 0. The sweeps", "## 1. Confidence and accuracy by relation",
                    "## 2. Where the baseline looks, right vs wrong", "## 3. What α < 1 and α > 1 do",
                    "## 4. AdaptVis"):
        assert heading in report
    for name in FIGURES:
        assert f"figures/{name}.png" in report
    numbers = json.loads((study / "study.json").read_text())
    assert set(numbers["alpha"]) == {"alpha_low", "alpha_high", "scaling_vis", "adaptvis"}
    assert numbers["alpha"]["alpha_low"]["args"]["alpha"] < 1 < numbers["alpha"]["alpha_high"]["args"]["alpha"]
    assert numbers["rare"] == ["on", "under"] and numbers["limit"] == 12


def test_the_studys_numbers_are_those_of_its_run_folders(study):
    numbers = json.loads((study / "study.json").read_text())
    traced = study / "traced"
    (base_dir,) = [p.parent for p in traced.rglob("results.json") if p.parent.name == "baseline"]
    base_rows = load_run(base_dir)[1]["scenes_test"]
    assert len(base_rows) == 12
    assert numbers["confidence"]["accuracy"] == metrics.accuracy([r["correct"] for r in base_rows.values()])
    attention = numbers["attention"]
    assert attention["all"]["correct"]["n"] + attention["all"]["incorrect"]["n"] == 12
    rare = [r for r in base_rows.values() if r["relation"] in ("on", "under")]
    assert attention["rare"]["incorrect"]["n"] == sum(not r["correct"] for r in rare)
    for entry in numbers["alpha"].values():
        assert entry["n"] == 12
        assert entry["flips"]["fixed"] == len(entry["fixed_ids"]) and entry["flips"]["broken"] == len(
            entry["broken_ids"])
    adapt = numbers["adaptvis"]
    assert sum(b["n"] for b in adapt["branches"]) == 12
    assert {b["alpha"] for b in adapt["branches"]} <= {adapt["chosen"]["alpha_low"], adapt["chosen"]["alpha_high"]}
    sweep = json.loads(next((study / "sweeps").rglob("sweep_scaling_vis_scenes_dev/sweep.json")).read_text())
    assert numbers["sweeps"]["scaling_vis"]["chosen"] == sweep["chosen"]
    assert numbers["alpha"]["scaling_vis"]["args"] == sweep["chosen"]
    # the traced test run gives the sweep's own test accuracy: tracing changes no answer
    assert numbers["alpha"]["scaling_vis"]["run"] == sweep["test"]["chosen"]["accuracy"]


def test_study_bad_input_is_one_error_line(capsys, tmp_path):
    assert cli_main(["study", "--limit", "0", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().startswith("visfocus: error:")
    assert cli_main(["study", "--eval_task", "no_such_task", "--out", str(tmp_path / "y")]) == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert cli_main(["study", "--rare", "on,beside", "--out", str(tmp_path / "z")]) == 2
    assert "--rare names beside, not a relation of scenes_test (left, on, right, under)" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
