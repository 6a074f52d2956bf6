"""`--scorer adaptvis`: every VSR metric follows the official judge's decisions, and WhatsUp results carry the
official pair/set formula beside ours; the exact scorer's table is unchanged. Expected counts are derived by hand."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from visfocus.benchmarks.base import Record, task
from visfocus.benchmarks.vsr import VSRTask
from visfocus.benchmarks.whatsup import WhatsUpTask
from visfocus.metrics import adaptvis_group_accuracy, scorer_predictions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# (gold, output) for a mixed VSR answer set; the comments give the official judge's verdict and the parser's answer.
VSR_ANSWERS = [
    ("yes", "Yes, the cat is on the mat."),  # official TP ("Yes" in it); parsed yes -> TP
    ("yes", "yes"),  # official FN (case-sensitive: "Yes" not in "yes"); parsed yes -> TP
    ("yes", "No."),  # official FN; parsed no -> FN
    ("yes", "YES"),  # official FN ("Yes" not in "YES"); parsed yes -> TP
    ("yes", "I cannot tell."),  # official FN; unparsed -> FN
    ("yes", "Yes and no"),  # official TP; parsed yes (the first word) -> TP
    ("no", "No, it is not."),  # official TN; parsed no -> TN
    ("no", "Not really."),  # official TN ("No" in "Not"); unparsed -> FP
    ("no", "no"),  # official FP (case-sensitive); parsed no -> TN
    ("no", "Yes."),  # official FP; parsed yes -> FP
    ("no", "Nothing suggests that."),  # official TN ("No" in "Nothing"); unparsed -> FP
    ("no", "True"),  # official FP (no "No"); parsed yes (True -> yes) -> FP
]


def vsr_task(scorer: str) -> VSRTask:
    return VSRTask("vsr_zeroshot_test", variant="zeroshot", part="test", scorer=scorer, prompt_style="yesno")


def rows_as_evaluate_builds_them(tsk, records: list[Record], outputs: list[str]) -> list[dict]:
    """Like ``evaluate._answer_rows``: parsed from ``task.parse``, correct from ``task.is_correct``."""
    rows = []
    for record, output in zip(records, outputs, strict=True):
        parsed = tsk.parse(output, record)
        rows.append({"id": record.id, "gold": record.gold, "output": output, "parsed": parsed,
                     "correct": tsk.is_correct(output, parsed, record), "confidence": None,
                     "relation": record.relation, "group": record.group, "pair": record.pair})
    return rows


def vsr_rows(tsk: VSRTask, answers: list[tuple[str, str]]) -> list[dict]:
    records = [Record(id=str(i), question="Is the cat on the mat?", gold=gold, options=("yes", "no"))
               for i, (gold, _) in enumerate(answers)]
    return rows_as_evaluate_builds_them(tsk, records, [output for _, output in answers])


def test_adaptvis_vsr_table_is_the_official_one():
    m = vsr_task("adaptvis").score(vsr_rows(vsr_task("adaptvis"), VSR_ANSWERS))
    # Official, from the comments: gold yes -> TP rows 1 and 6, FN rows 2-5; gold no -> TN rows 7, 8, 11, FP 9, 10, 12.
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 4, 3, 3)
    assert m["confusion_from"] == "scorer"
    assert m["n"] == 12
    assert m["accuracy"] == pytest.approx(5 / 12)  # (TP + TN) / N = (2 + 3) / 12
    assert m["tpr"] == m["recall"] == pytest.approx(1 / 3)  # 2 / 6; the official code's "precision"
    assert m["tnr"] == pytest.approx(1 / 2)  # 3 / 6; the official code's "recall"
    assert m["tpr_tnr_harmonic_mean"] == pytest.approx(2 / 5)  # 2·(1/3)(1/2) / (1/3 + 1/2) = (1/3) / (5/6)
    assert m["precision"] == pytest.approx(2 / 5)  # TP / (TP + FP) = 2 / 5
    assert m["f1"] == pytest.approx(4 / 11)  # 2·2 / (2·2 + FP 3 + FN 4)
    assert m["macro_f1"] == pytest.approx(59 / 143)  # F1(no) = 2·3 / (6 + 3 + 4) = 6/13; (4/11 + 6/13) / 2
    assert m["yes_ratio"] == pytest.approx(5 / 12)  # effective "yes" = TP + FP = 2 + 3
    # The parser found nothing in rows 5, 8 and 11; under this scorer that is a diagnostic only: rows 8 and 11 are TN.
    assert m["n_unparsed"] == 3


def test_case_sensitive_yes_and_substring_not_rows_alone():
    tsk = vsr_task("adaptvis")
    m = tsk.score(vsr_rows(tsk, [("yes", "yes"), ("no", "Not really.")]))
    # 'yes' with gold yes: "Yes" not in "yes" -> FN; 'Not really.' with gold no: "No" in "Not" -> TN.
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (0, 1, 1, 0)
    assert m["accuracy"] == 0.5 and m["tpr"] == 0.0 and m["tnr"] == 1.0
    assert m["tpr_tnr_harmonic_mean"] == 0.0  # 2·0·1 / (0 + 1)
    assert m["yes_ratio"] == 0.0  # the FN's effective prediction is "no", the TN's "no"


def test_the_issues_answer_set_gives_the_official_numbers():
    # 400 answers: gold yes 195 = 70 "Yes." (TP) + 42 "yes" (FN officially, TP parsed) + 78 "No." (FN)
    #   + 5 "Yesterday" (TP officially: "Yes" in "Yesterday"; unparsed -> FN);
    # gold no 205 = 80 "No." (TN) + 11 "Not really." (TN officially, FP parsed as unparsed)
    #   + 40 "no" (FP officially, TN parsed) + 74 "Yes." (FP).
    # Official: TP 70 + 5 = 75, FN 42 + 78 = 120, TN 80 + 11 = 91, FP 40 + 74 = 114.
    answers = ([("yes", "Yes.")] * 70 + [("yes", "yes")] * 42 + [("yes", "No.")] * 78
               + [("yes", "Yesterday")] * 5 + [("no", "No.")] * 80 + [("no", "Not really.")] * 11
               + [("no", "no")] * 40 + [("no", "Yes.")] * 74)
    m = vsr_task("adaptvis").score(vsr_rows(vsr_task("adaptvis"), answers))
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (75, 120, 91, 114)
    assert m["accuracy"] == pytest.approx(0.415)  # (75 + 91) / 400
    # TPR = 75/195 = 5/13, TNR = 91/205; 2·(5/13)(91/205) / (5/13 + 91/205) = 910 / (1025 + 1183) = 455/1104.
    assert m["tpr_tnr_harmonic_mean"] == pytest.approx(455 / 1104)
    assert round(m["tpr_tnr_harmonic_mean"], 3) == 0.412
    # The parsed table, which the adaptvis result used to report beside accuracy 0.415: TP 70 + 42 = 112,
    # FN 78 + 5 = 83, TN 80 + 40 = 120, FP 11 + 74 = 85, "F1" 2·(112/195)(120/205) / (112/195 + 120/205)
    # = 5376 / 9272 = 672/1159 ≈ 0.580. The exact scorer still gives it, with its own accuracy (112 + 120) / 400.
    exact = vsr_task("exact").score(vsr_rows(vsr_task("exact"), answers))
    assert (exact["tp"], exact["fn"], exact["tn"], exact["fp"]) == (112, 83, 120, 85)
    assert exact["tpr_tnr_harmonic_mean"] == pytest.approx(672 / 1159)
    assert exact["accuracy"] == pytest.approx(232 / 400)


def test_exact_scorer_table_is_unchanged():
    m = vsr_task("exact").score(vsr_rows(vsr_task("exact"), VSR_ANSWERS))
    # Parsed, from the comments: gold yes -> TP rows 1, 2, 4, 6, FN 3, 5; gold no -> TN rows 7, 9, FP 8, 10, 11, 12.
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (4, 2, 2, 4)
    assert m["confusion_from"] == "parsed"
    assert m["accuracy"] == pytest.approx(6 / 12)  # correct iff parsed == gold
    assert m["tpr"] == pytest.approx(2 / 3) and m["tnr"] == pytest.approx(1 / 3)
    assert m["tpr_tnr_harmonic_mean"] == pytest.approx(4 / 9)  # 2·(2/9) / (2/3 + 1/3)
    assert m["precision"] == pytest.approx(1 / 2)  # 4 / (4 + 4)
    assert m["f1"] == pytest.approx(4 / 7)  # 8 / (8 + 4 + 2)
    assert m["macro_f1"] == pytest.approx(17 / 35)  # F1(no) = 4 / (4 + 4 + 2) = 2/5; (4/7 + 2/5) / 2
    assert m["yes_ratio"] == pytest.approx(1 / 2)  # parsed "yes": rows 1, 2, 4, 6, 10, 12
    assert m["n_unparsed"] == 3  # rows 5, 8, 11: each an error (FN, FP, FP)
    assert "pair_official" not in m


def test_scorer_predictions():
    assert scorer_predictions(["yes", "yes", "no", "no"], [True, False, True, False]) == ["yes", "no", "no", "yes"]
    assert scorer_predictions(["a", "b"], [False, True], labels=("a", "b")) == ["b", "b"]
    with pytest.raises(ValueError, match="differ in length"):
        scorer_predictions(["yes"], [True, False])
    with pytest.raises(ValueError, match="'maybe'"):
        scorer_predictions(["maybe"], [True])


# WhatsUp, a test part with incomplete groups: (group, gold, output). Correct under adaptvis unless marked.
WHATSUP_ANSWERS = [
    ("mug|table", "left", "Left"),
    ("mug|table", "right", "To the right."),
    ("mug|table", "on", "It is positioned under it."),  # correct officially ("on" in "positioned"), parsed "under"
    ("mug|table", "under", "Under"),
    ("cup|chair", "left", "Left"),
    ("cup|chair", "right", "Right"),
    ("cup|chair", "on", "On"),  # its "under" partner is not in this part
    ("pen|armchair", "left", "Left"),
    ("pen|armchair", "right", "Left"),  # wrong
    ("bowl|table", "under", "Under"),  # alone in this part
]
PAIR_NAME = {"left": "left_right", "right": "left_right", "on": "on_under", "under": "on_under"}


def whatsup_rows(tsk: WhatsUpTask) -> list[dict]:
    records = [Record(id=str(i), question="Where is the mug in relation to the table? Answer with left, right, on or "
                      "under.", gold=gold, options=("left", "right", "on", "under"), relation=gold, group=group,
                      pair=f"{group}:{PAIR_NAME[gold]}") for i, (group, gold, _) in enumerate(WHATSUP_ANSWERS)]
    return rows_as_evaluate_builds_them(tsk, records, [output for _, _, output in WHATSUP_ANSWERS])


def test_whatsup_adaptvis_reports_the_official_pair_and_set_formula():
    tsk = WhatsUpTask("whatsup_controlled_a_test", subset="controlled_a", part="_test", scorer="adaptvis")
    m = tsk.score(whatsup_rows(tsk))
    assert m["accuracy"] == pytest.approx(9 / 10)  # every row but pen|armchair's "right"
    # Official pairs: mug left_right, mug on_under, cup left_right are complete and right = 3; cup on_under and the
    # bowl pair miss a member, pen left_right has a wrong member. Denominator n/2 = 10/2 = 5.0.
    assert m["pair_official"] == {"accuracy": pytest.approx(0.6), "numerator": 3, "denominator": 5.0, "n_rows": 10}
    # Official sets: only mug|table has all 4 right = 1. Denominator n/4 = 10/4 = 2.5 (float division).
    assert m["set_official"] == {"accuracy": pytest.approx(0.4), "numerator": 1, "denominator": 2.5, "n_rows": 10}
    # Ours, complete groups only: pairs mug:lr, mug:ou, cup:lr, pen:lr are complete (3 right) of 6 pair keys;
    # sets: mug|table is the only complete one, and it is right.
    assert m["pair"] == {"accuracy": 0.75, "n_complete": 4, "n_groups": 6, "n_correct": 3}
    assert m["set"] == {"accuracy": 1.0, "n_complete": 1, "n_groups": 4, "n_correct": 1}


def test_whatsup_exact_scorer_has_no_official_keys():
    tsk = WhatsUpTask("whatsup_controlled_a_test", subset="controlled_a", part="_test", scorer="exact")
    m = tsk.score(whatsup_rows(tsk))
    assert "pair_official" not in m and "set_official" not in m
    assert m["accuracy"] == pytest.approx(8 / 10)  # mug "on" is parsed as "under" and pen "right" as "left"
    # mug on_under now has a wrong member: complete pairs mug:lr, cup:lr right; mug:ou, pen:lr wrong.
    assert m["pair"] == {"accuracy": 0.5, "n_complete": 4, "n_groups": 6, "n_correct": 2}
    assert m["set"] == {"accuracy": 0.0, "n_complete": 1, "n_groups": 4, "n_correct": 0}


def test_adaptvis_group_accuracy_without_rows():
    result = adaptvis_group_accuracy([], "pair", 2)
    assert result["accuracy"] != result["accuracy"] and result["denominator"] == 0.0 and result["numerator"] == 0


@pytest.mark.skipif(not (DATA / "adaptvis_prompts").is_dir(), reason=f"no benchmark data at {DATA}")
def test_official_denominators_on_the_real_dev_part():
    dev = task("whatsup_controlled_a_dev", data_root=DATA, scorer="adaptvis")
    outputs = [record.gold.capitalize() for record in dev]  # every answer right under the official scorer
    m = dev.score(rows_as_evaluate_builds_them(dev, dev.records, outputs))
    # The dev part is int(0.2 · 412) = 82 rows: n/2 = 41.0, n/4 = 20.5. With every row right, the numerators are the
    # pairs and sets wholly inside the part.
    complete_pairs = sum(count == 2 for count in Counter(record.pair for record in dev).values())
    complete_sets = sum(count == 4 for count in Counter(record.group for record in dev).values())
    assert m["accuracy"] == 1.0
    assert m["pair_official"] == {"accuracy": pytest.approx(complete_pairs / 41), "numerator": complete_pairs,
                                  "denominator": 41.0, "n_rows": 82}
    assert m["set_official"] == {"accuracy": pytest.approx(complete_sets / 20.5), "numerator": complete_sets,
                                 "denominator": 20.5, "n_rows": 82}
    assert m["pair"]["accuracy"] == 1.0 and m["pair"]["n_complete"] == complete_pairs
