"""Analyses of attention traces and run outputs (``visfocus.analysis``) on constructed traces with known answers, and
on a real trace of a tiny random-weight model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from visfocus.analysis import attention, boxes, calibration
from visfocus.tracefile import sample_arrays


def _view(rows=2, cols=3, size=(300, 200), region=None, index=None):
    """A whole-image view; with the defaults each cell is 100×100 px."""
    return {"name": "image", "rows": rows, "cols": cols, "region": list(region or (0, 0, *size)),
            "image_size": list(size), "index": list(index if index is not None else range(rows * cols))}


def _trace(attention_rows, view=None, image_share=0.1):
    """A trace with (L, N) head-mean attention scaled to ``image_share`` of the row's mass."""
    probs = np.asarray(attention_rows, dtype=np.float64)
    probs = probs / probs.sum(-1, keepdims=True) * image_share  # (L, N)
    shares = np.tile([image_share, 0.8 - image_share, 0.2], (len(probs), 1)).astype(np.float32)  # (L, 3)
    return {"attention": probs.astype(np.float16), "shares": shares, "shares_pre": shares, "views": [view or _view()]}


INSIDE = [0, 1, 0, 0, 0, 0]  # all attention on cell (0, 1)
OUTSIDE = [0, 0, 0, 0, 0, 1]  # all attention on cell (1, 2)
UNIFORM = [1] * 6
BOX = {"label": "cup", "xyxy": (100, 0, 200, 100), "normalized": False}  # exactly cell (0, 1)


def test_head_mean_accepts_heads_or_means():
    heads = np.arange(24, dtype=np.float16).reshape(2, 3, 4)  # (L, H, N)
    assert np.allclose(attention.head_mean(heads), heads.astype(np.float64).mean(1))
    assert attention.head_mean(heads.mean(1)).shape == (2, 4)
    with pytest.raises(ValueError, match="must be"):
        attention.head_mean(np.zeros(4))


def test_entropy_uniform_is_log_n_and_one_hot_is_zero():
    n = 196
    uniform = np.full((2, 4, n), 0.1 / n)  # (L, H, N), unnormalised image mass
    one_hot = np.zeros((1, n))
    one_hot[0, 17] = 0.3
    assert np.allclose(attention.entropy_by_layer(uniform), math.log(n))
    assert np.allclose(attention.entropy_by_layer(one_hot), 0.0)
    assert np.isnan(attention.entropy_by_layer(np.zeros((1, n)))).all()  # no image mass: undefined


def test_skewness_symmetric_zero_spike_positive_uniform_zero():
    symmetric = np.array([[1, 2, 3, 2, 1, 3], [0.2] * 6])  # layer 0: values symmetric around their mean
    assert np.allclose(attention.skewness_by_layer(symmetric), [0.0, 0.0], atol=1e-9)
    n = 10
    spike = np.zeros((1, n))
    spike[0, 3] = 1.0
    skew = attention.skewness_by_layer(spike)
    assert skew[0] > 0 and np.isclose(skew[0], (n - 2) / math.sqrt(n - 1))
    assert attention.skewness_by_layer(1.0 - spike)[0] < 0  # one hole among equal values


def test_grid_map_follows_view_index():
    view = _view(rows=2, cols=2, size=(200, 200), index=[3, 2, 1, 0])  # cell (0, 0) is token 3
    assert np.array_equal(attention.grid_map(np.array([0.0, 1.0, 2.0, 3.0]), view), [[3, 2], [1, 0]])


def test_share_by_layer_groups_by_correctness():
    traces = {"a": _trace([UNIFORM, UNIFORM], image_share=0.1), "b": _trace([UNIFORM, UNIFORM], image_share=0.3),
              "c": _trace([UNIFORM, UNIFORM], image_share=0.2)}
    assert set(attention.share_by_layer(traces)) == {"all"}
    out = attention.share_by_layer(traces, rows={"a": {"correct": True}, "b": {"correct": False}})
    assert out["all"]["n"] == 3 and out["all"]["mean"].shape == (2, 3)
    assert np.allclose(out["all"]["mean"][:, 0], 0.2) and np.allclose(out["all"]["std"][:, 0], math.sqrt(2 / 300))
    assert np.allclose(out["correct"]["mean"][:, 0], 0.1) and np.allclose(out["incorrect"]["mean"][:, 0], 0.3)
    assert out["correct"]["n"] == out["incorrect"]["n"] == 1  # "c" has no row
    assert np.isnan(attention.share_by_layer(traces, rows={"a": {"correct": True}})["incorrect"]["mean"]).all()


def test_compare_runs_sign_over_shared_ids():
    run_a = {"x": _trace([INSIDE], image_share=0.1), "only_a": _trace([UNIFORM], image_share=0.9)}
    run_b = {"x": _trace([UNIFORM], image_share=0.3), "only_b": _trace([INSIDE], image_share=0.5)}
    out = attention.compare_runs(run_a, run_b)
    assert out["n"] == 1
    assert np.allclose(out["image_share"], [0.2]) and np.allclose(out["entropy"], [math.log(6)], atol=1e-3)
    reverse = attention.compare_runs(run_b, run_a)
    assert np.allclose(reverse["image_share"], -out["image_share"]) and np.allclose(reverse["entropy"], -out["entropy"])


def test_box_indicator_on_a_2x3_grid_without_dilation():
    view = _view()  # 2×3 cells of 100×100 px on a 300×200 image
    assert np.array_equal(boxes.box_indicator(view, [BOX]), [[0, 1, 0], [0, 0, 0]])  # edges on cell boundaries
    normalized = {"label": "plate", "xyxy": (0.5, 0.5, 1.0, 1.0), "normalized": True}  # x 150..300, y 100..200
    assert np.array_equal(boxes.box_indicator(view, [normalized]), [[0, 0, 0], [0, 1, 1]])
    assert np.array_equal(boxes.box_indicator(view, [BOX, normalized]), [[0, 1, 0], [0, 1, 1]])
    wider = {"label": "cup", "xyxy": (100, 0, 200.5, 100), "normalized": False}
    assert np.array_equal(boxes.box_indicator(view, [wider]), [[0, 1, 1], [0, 0, 0]])
    line = {"label": "cup", "xyxy": (150, 0, 150, 200), "normalized": False}  # zero area
    assert not boxes.box_indicator(view, [line]).any() and not boxes.box_indicator(view, []).any()
    cropped = _view(rows=1, cols=2, size=(300, 200), region=(50, 0, 250, 200))  # a centre crop: cells 50..150..250
    assert np.array_equal(boxes.box_indicator(cropped, [{"xyxy": (0, 0, 60, 10)}]), [[1, 0]])
    assert np.array_equal(boxes.box_indicator(cropped, [{"xyxy": (0, 0, 50, 10)}]), [[0, 0]])


def test_overlap_score_is_the_cosine_with_the_indicator():
    view = _view()
    assert np.isclose(boxes.overlap_score(np.array(INSIDE, float), view, [BOX]), 1.0)
    assert np.isclose(boxes.overlap_score(np.array(OUTSIDE, float), view, [BOX]), 0.0)
    assert np.isclose(boxes.overlap_score(np.ones(6), view, [BOX]), 1 / math.sqrt(6))
    assert boxes.overlap_score(np.ones(6), view, []) == 0.0


def test_overlap_auroc_is_one_when_correct_samples_look_inside():
    traces = {"c1": _trace([INSIDE, UNIFORM]), "c2": _trace([[1, 5, 1, 1, 1, 1], UNIFORM]),
              "w1": _trace([OUTSIDE, UNIFORM]), "w2": _trace([UNIFORM, UNIFORM]),
              "no_boxes": _trace([OUTSIDE, UNIFORM]), "off_image": _trace([OUTSIDE, UNIFORM])}
    rows = {sid: {"correct": sid.startswith("c") or sid == "no_boxes"} for sid in traces}
    rows["off_image"]["correct"] = True
    box_map = {sid: [BOX] for sid in ("c1", "c2", "w1", "w2")}
    box_map["off_image"] = [{"label": "cup", "xyxy": (400, 300, 500, 400), "normalized": False}]
    out = boxes.overlap_auroc_by_layer(traces, rows, box_map)
    assert out["n"] == 4 and out["n_correct"] == 2 and out["ids"] == ["c1", "c2", "w1", "w2"]
    assert out["scores"].shape == (4, 2)
    assert out["auroc"][0] == 1.0 and out["auroc"][1] == 0.5  # layer 1: every sample looks the same
    one_class = boxes.overlap_auroc_by_layer(traces, {sid: {"correct": True} for sid in traces}, box_map)
    assert np.isnan(one_class["auroc"]).all()
    none = boxes.overlap_auroc_by_layer(traces, rows, {})
    assert none["n"] == 0 and none["auroc"].shape == (2,) and np.isnan(none["auroc"]).all()


def test_pointing_game_hit_and_miss():
    traces = {"hit": _trace([INSIDE, [1, 3, 1, 1, 1, 1]]), "miss": _trace([OUTSIDE, [1, 3, 1, 1, 1, 1]]),
              "no_boxes": _trace([INSIDE, INSIDE])}
    out = boxes.pointing_game_by_layer(traces, {"hit": [BOX], "miss": [BOX]})
    assert out["n"] == 2 and np.allclose(out["hit_rate"], [0.5, 1.0])


def test_reliability_bins_and_ece_by_hand():
    confidences, correct = [0.15, 0.15, 0.85, 0.95], [True, False, True, True]
    out = calibration.reliability(confidences, correct, n_bins=2)
    low, high = out["bins"]
    assert (low["low"], low["high"], low["n"], high["n"]) == (0.0, 0.5, 2, 2)
    assert np.isclose(low["mean_confidence"], 0.15) and low["accuracy"] == 0.5
    assert np.isclose(high["mean_confidence"], 0.9) and high["accuracy"] == 1.0
    assert np.isclose(out["ece"], (2 * 0.35 + 2 * 0.1) / 4) and out["n"] == 4
    edges = calibration.reliability([0.5, 1.0, 0.0], [True, True, False], n_bins=2)  # 0.5 and 1.0 in the top bin
    assert [b["n"] for b in edges["bins"]] == [1, 2]
    ten = calibration.reliability([0.5, 1.0, 0.0], [True, True, False])
    assert [b["n"] for b in ten["bins"]] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert math.isnan(ten["bins"][1]["accuracy"]) and np.isclose(ten["ece"], (0.5 + 0.0 + 0.0) / 3)
    assert math.isnan(calibration.reliability([], [])["ece"])
    with pytest.raises(ValueError, match="differ in length"):
        calibration.reliability([0.5], [])


def test_confidence_auroc_and_per_relation():
    assert calibration.confidence_auroc([0.9, 0.8, 0.3], [True, True, False]) == 1.0
    assert math.isnan(calibration.confidence_auroc([0.9, 0.8], [True, True]))
    rows = {"1": {"relation": "left", "correct": True, "confidence": 0.9},
            "2": {"relation": "left", "correct": False, "confidence": 0.7},
            "3": {"relation": "on", "correct": False, "confidence": 0.4}, "4": {"correct": True, "confidence": 1.0}}
    out = calibration.per_relation_confidence(rows)
    assert out == calibration.per_relation_confidence(list(rows.values()))
    assert out["left"]["n"] == 2 and out["left"]["accuracy"] == 0.5 and np.isclose(out["left"]["mean_confidence"], 0.8)
    assert set(out) == {"left", "on"}


@pytest.mark.parametrize("family", ["qwen3_vl", "llava_next"])
def test_real_tiny_trace(tiny_vlms, image, family):
    answer = tiny_vlms[family].answer(image, "Where is the cup?", max_new_tokens=1, trace=True)
    arrays = sample_arrays(answer.trace)
    trace = {**arrays, **json.loads(str(arrays["meta"]))}  # what load_traces returns for one sample
    assert np.allclose(trace["shares"].sum(-1), 1.0, atol=1e-5)
    shares = attention.share_by_layer({"s": trace})["all"]
    assert np.allclose(shares["mean"].sum(-1), 1.0, atol=1e-5) and np.allclose(shares["std"], 0.0)
    probs = attention.image_attention(trace)  # (L, N)
    n_tokens = probs.shape[1]
    entropy = attention.entropy_by_layer(trace["attention"])
    assert ((entropy >= 0) & (entropy <= math.log(n_tokens) + 1e-9)).all()
    assert np.isfinite(attention.skewness_by_layer(trace["attention"])).all()
    view = trace["views"][0]
    for layer in range(len(probs)):
        live = answer.trace.image_map(layer)
        assert np.allclose(attention.grid_map(probs[layer], view), live, atol=1e-3)
    whole = [{"label": "all", "xyxy": (0, 0, 1, 1), "normalized": True}]
    assert boxes.box_indicator(view, whole).all()
    assert boxes.pointing_game_by_layer({"s": trace}, {"s": whole})["hit_rate"].tolist() == [1.0] * len(probs)
