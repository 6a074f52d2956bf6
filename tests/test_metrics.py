"""Metrics: hand-computed values for accuracy, pair/set accuracy, binary metrics, AUROC and the paired tests."""

from __future__ import annotations

import math

import pytest

from visfocus.metrics import (
    accuracy,
    adaptvis_group_accuracy,
    auroc,
    binary_metrics,
    bootstrap_delta_ci,
    flip_table,
    group_accuracy,
    mcnemar_exact,
    per_relation,
)


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert math.isnan(accuracy([]))


def test_set_accuracy_counts_complete_sets_only():
    rows = ([{"group": "mug|table", "correct": True}] * 4  # complete, all right
            + [{"group": "cup|chair", "correct": c} for c in (True, True, False, True)]  # complete, one wrong
            + [{"group": "pen|armchair", "correct": True}] * 3)  # a member is missing: left out
    result = group_accuracy(rows, "group", 4)
    assert result == {"accuracy": 0.5, "n_complete": 2, "n_groups": 3, "n_correct": 1}


def test_pair_accuracy_and_no_complete_group():
    rows = [{"pair": "a", "correct": True}, {"pair": "a", "correct": True},
            {"pair": "b", "correct": True}, {"pair": "b", "correct": False},
            {"pair": "c", "correct": True}, {"pair": None, "correct": True}]
    assert group_accuracy(rows, "pair", 2) == {"accuracy": 0.5, "n_complete": 2, "n_groups": 3, "n_correct": 1}
    lonely = group_accuracy([{"pair": "c", "correct": True}], "pair", 2)
    assert math.isnan(lonely["accuracy"]) and lonely["n_complete"] == 0 and lonely["n_groups"] == 1


def test_official_set_and_pair_formula_counts_missing_members_as_failures():
    rows = ([{"group": "mug|table", "pair": "mug|table:left_right", "correct": True}] * 2
            + [{"group": "mug|table", "pair": "mug|table:on_under", "correct": True}] * 2  # complete set, all right
            + [{"group": "pen|armchair", "pair": "pen|armchair:left_right", "correct": True}] * 2
            + [{"group": "pen|armchair", "pair": "pen|armchair:on_under", "correct": True}])  # "under" missing
    # 7 rows: sets right = 1 (mug) of 7/4 = 1.75; pairs right = 3 (both mug pairs, pen left_right) of 7/2 = 3.5.
    assert adaptvis_group_accuracy(rows, "group", 4) == {"accuracy": pytest.approx(1 / 1.75), "numerator": 1,
                                                         "denominator": 1.75, "n_rows": 7}
    assert adaptvis_group_accuracy(rows, "pair", 2) == {"accuracy": pytest.approx(3 / 3.5), "numerator": 3,
                                                        "denominator": 3.5, "n_rows": 7}
    assert group_accuracy(rows, "group", 4)["accuracy"] == 1.0  # ours leaves the incomplete set out


def test_binary_metrics_by_hand():
    gold = ["yes"] * 6 + ["no"] * 4
    pred = ["yes", "yes", "yes", "yes", "no", None,  # gold yes: tp = 4, fn = 2 (one "no", one unparsed)
            "no", "no", "yes", None]  # gold no: tn = 2, fp = 2 (one "yes", one unparsed)
    m = binary_metrics(gold, pred)
    assert set(m) == {"tp", "fp", "tn", "fn", "precision", "recall", "f1", "macro_f1", "tpr", "tnr",
                      "tpr_tnr_harmonic_mean", "yes_ratio"}
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (4, 2, 2, 2)
    assert m["precision"] == pytest.approx(4 / 6)  # tp / (tp + fp)
    assert m["recall"] == pytest.approx(4 / 6)  # tp / (tp + fn)
    assert m["f1"] == pytest.approx(2 / 3)  # 2·4 / (2·4 + 2 + 2) = 8/12
    assert m["macro_f1"] == pytest.approx(7 / 12)  # F1(no) = 2·2 / (2·2 + 2 + 2) = 1/2; (2/3 + 1/2) / 2
    assert m["tpr"] == pytest.approx(2 / 3)  # 4 / 6
    assert m["tnr"] == pytest.approx(1 / 2)  # 2 / 4
    assert m["tpr_tnr_harmonic_mean"] == pytest.approx(4 / 7)  # 2·(2/3)(1/2) / (2/3 + 1/2) = (2/3)/(7/6)
    assert m["tpr_tnr_harmonic_mean"] != pytest.approx(m["f1"])  # the official "F1" is not F1
    assert m["yes_ratio"] == pytest.approx(0.5)  # 5 "yes" predictions out of 10 (None counts in the 10)


def test_unparsed_prediction_is_an_error_in_each_class():
    m = binary_metrics(["yes", "no"], [None, None])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 1, 0, 1)
    assert m["f1"] == m["macro_f1"] == m["tpr_tnr_harmonic_mean"] == m["yes_ratio"] == 0.0  # zero denominators


def test_binary_metrics_with_another_positive_class():
    m = binary_metrics(["no", "no", "yes"], ["no", "yes", "yes"], positive="no")
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 0, 1, 1)
    assert m["yes_ratio"] == pytest.approx(1 / 3)  # fraction of predictions equal to the positive class


def test_per_relation():
    rows = [{"relation": "left", "correct": True, "confidence": 0.9},
            {"relation": "left", "correct": False, "confidence": 0.5},
            {"relation": "on", "correct": True, "confidence": None},
            {"relation": None, "correct": False, "confidence": 0.1}]
    result = per_relation(rows)
    assert list(result) == ["left", "on"]
    assert result["left"] == {"n": 2, "accuracy": 0.5, "mean_confidence": pytest.approx(0.7)}
    assert result["on"] == {"n": 1, "accuracy": 1.0, "mean_confidence": None}


def test_auroc_counts_ties_as_half():
    # positives {0.9, 0.8}, negatives {0.8, 0.3}: pairs 0.9>0.8, 0.9>0.3, 0.8=0.8 (half), 0.8>0.3 -> 3.5 / 4
    assert auroc([0.9, 0.8, 0.8, 0.3], [True, True, False, False]) == pytest.approx(0.875)
    assert auroc([0.1, 0.2, 0.3], [True, False, False]) == 0.0  # the positive ranks lowest
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5  # all tied


def test_auroc_one_class_is_nan():
    assert math.isnan(auroc([0.2, 0.7], [True, True]))
    assert math.isnan(auroc([], []))


def test_mcnemar_exact():
    # n = 7, min = 1: P(X <= 1) = (C(7,0) + C(7,1)) / 2^7 = 8/128; two-sided 16/128
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # 2·P(X <= 3) for n = 6 is 2·42/64 > 1, capped
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_flip_table():
    a = [True, True, False, False, True]
    b = [True, False, True, False, True]
    assert flip_table(a, b) == {"fixed": 1, "broken": 1, "both_right": 2, "both_wrong": 1}
    with pytest.raises(ValueError):
        flip_table([True], [])


def test_bootstrap_ci_contains_delta_and_is_reproducible():
    a = [True] * 10 + [False] * 10  # accuracy 0.5
    b = [True] * 10 + [True] * 6 + [False] * 4  # accuracy 0.8: six samples fixed, none broken
    first = bootstrap_delta_ci(a, b, n_boot=500, seed=3)
    assert first["delta"] == pytest.approx(0.3)
    assert first["ci_low"] <= 0.3 <= first["ci_high"]
    assert first["ci_low"] >= 0.0 and first["ci_high"] <= 0.6  # no sample gets worse; at most 20 fixed / 20
    assert (first["n_boot"], first["level"]) == (500, 0.95)
    assert bootstrap_delta_ci(a, b, n_boot=500, seed=3) == first


def test_bootstrap_of_identical_runs_is_zero():
    same = [True, False, True]
    assert bootstrap_delta_ci(same, same, n_boot=50) == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                                                          "n_boot": 50, "level": 0.95}
