"""Evaluation metrics as pure functions: accuracy, WhatsUp pair/set accuracy, binary metrics for yes/no tasks,
per-relation breakdowns, AUROC, and the paired tests (McNemar, bootstrap CI) for comparing two methods."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of true flags; nan for no samples."""
    return sum(bool(c) for c in correct) / len(correct) if len(correct) else math.nan


def group_accuracy(rows: Sequence[Mapping], key: str, size: int) -> dict[str, Any]:
    """WhatsUp pair accuracy (``size`` 2) or set accuracy (``size`` 4), over complete groups only.

    Rows are grouped by ``row[key]`` (rows whose key is None are ignored). A group is complete iff it has exactly
    ``size`` rows, and correct iff every row has ``row["correct"]`` true. Groups with members outside the evaluated
    split are left out of the denominator — unlike the official code, which counts them as failures (biased low)."""
    members: dict[Any, list[bool]] = defaultdict(list)
    for row in rows:
        if row[key] is not None:
            members[row[key]].append(bool(row["correct"]))
    complete = [flags for flags in members.values() if len(flags) == size]
    n_correct = sum(all(flags) for flags in complete)
    return {"accuracy": n_correct / len(complete) if complete else math.nan, "n_complete": len(complete),
            "n_groups": len(members), "n_correct": n_correct}


def adaptvis_group_accuracy(rows: Sequence[Mapping], key: str, size: int) -> dict[str, Any]:
    """WhatsUp pair (``size`` 2) or set (``size`` 4) accuracy by the official AdaptVis formula, for reproducing the
    paper's columns only (``Controlled_Images.evaluate_scores`` in ``dataset_zoo/aro_datasets.py``).

    accuracy = numerator / denominator, with numerator = the number of groups (rows sharing ``row[key]``; None keys
    ignored) that have exactly ``size`` rows, all with ``row["correct"]`` true, and denominator = n / ``size`` (float
    division), n = ``len(rows)``, every evaluated row. Officially every group of the full set starts with all its
    members wrong, so a member outside the evaluated part (the seeded 20 %/80 % dev/test subsets) makes its group a
    failure, while the denominator assumes complete groups: on a dev/test part this is biased low. The official code
    prints it ×100; here it is a fraction. nan for no rows. ``group_accuracy`` is the unbiased complete-groups one."""
    members: dict[Any, list[bool]] = defaultdict(list)
    for row in rows:
        if row[key] is not None:
            members[row[key]].append(bool(row["correct"]))
    numerator = sum(len(flags) == size and all(flags) for flags in members.values())
    denominator = len(rows) / size
    return {"accuracy": numerator / denominator if rows else math.nan, "numerator": numerator,
            "denominator": denominator, "n_rows": len(rows)}


def scorer_predictions(gold: Sequence[str], correct: Sequence[bool],
                       labels: tuple[str, str] = ("yes", "no")) -> list[str]:
    """The binary predictions a compatibility scorer's decisions imply: the gold label where it judged the answer
    correct, the other one of ``labels`` where it did not.

    A judge like AdaptVis's VSR check (``'Yes' in gen`` for label 1, ``'No' in gen`` for label 0) never names a
    prediction, only right or wrong; these predictions are the only ones consistent with it, so ``binary_metrics``
    on them gives the judge's own table: tp = gold positive and correct, fn = gold positive and wrong, tn = gold
    negative and correct, fp = gold negative and wrong."""
    if len(gold) != len(correct):
        raise ValueError(f"gold and correct differ in length: {len(gold)} vs {len(correct)}")
    other = {labels[0]: labels[1], labels[1]: labels[0]}
    unknown = sorted({label for label in gold if label not in other})
    if unknown:
        raise ValueError(f"gold labels must be {labels[0]!r} or {labels[1]!r}, got {', '.join(map(repr, unknown))}")
    return [label if is_correct else other[label] for label, is_correct in zip(gold, correct)]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _harmonic_mean(a: float, b: float) -> float:
    return _ratio(2 * a * b, a + b)


def binary_metrics(gold: Sequence[str], pred: Sequence[str | None], positive: str = "yes") -> dict[str, Any]:
    """Confusion counts and binary metrics with ``positive`` as the positive class.

    A prediction is right iff it equals the gold label. An unparsed prediction (None) is therefore an error in
    either class: a false negative when the gold is positive, a false positive when it is negative. The negative
    class's F1 (for ``macro_f1``) uses the same table with the roles swapped, 2·tn / (2·tn + fp + fn).
    Any ratio with a zero denominator is 0.0.

    ``tpr_tnr_harmonic_mean`` = 2·tpr·tnr / (tpr + tnr) is what the official AdaptVis VSR code reports as "F1" (its
    "precision" is the TPR, its "recall" the TNR): the harmonic mean of the two class recalls, not F1.
    ``yes_ratio`` is the fraction of all predictions equal to ``positive``. Accuracy is left to the caller.
    ``pred`` is the parsed answers under the exact scorer, or ``scorer_predictions`` under a compatibility scorer."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    tp = fp = tn = fn = 0
    for gold_label, predicted in zip(gold, pred):
        if gold_label == positive:
            tp, fn = (tp + 1, fn) if predicted == gold_label else (tp, fn + 1)
        else:
            tn, fp = (tn + 1, fp) if predicted == gold_label else (tn, fp + 1)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    f1_negative = _ratio(2 * tn, 2 * tn + fp + fn)
    tpr, tnr = recall, _ratio(tn, tn + fp)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
            "macro_f1": (f1 + f1_negative) / 2, "tpr": tpr, "tnr": tnr,
            "tpr_tnr_harmonic_mean": _harmonic_mean(tpr, tnr),
            "yes_ratio": _ratio(sum(p == positive for p in pred), len(pred))}


def per_relation(rows: Sequence[Mapping]) -> dict[str, dict[str, Any]]:
    """Per ``row["relation"]`` (rows without one are skipped), sorted by relation: ``n``, ``accuracy`` and
    ``mean_confidence`` (None when any row of that relation has no confidence)."""
    by_relation: dict[str, list[Mapping]] = defaultdict(list)
    for row in rows:
        if row.get("relation") is not None:
            by_relation[row["relation"]].append(row)
    out: dict[str, dict[str, Any]] = {}
    for relation in sorted(by_relation):
        group = by_relation[relation]
        confidence = [row.get("confidence") for row in group]
        out[relation] = {"n": len(group), "accuracy": accuracy([bool(row["correct"]) for row in group]),
                         "mean_confidence": None if any(c is None for c in confidence)
                         else sum(confidence) / len(confidence)}
    return out


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for separating true from false ``labels``: the Mann–Whitney U
    statistic over all (positive, negative) pairs, a tie counting one half. nan unless both classes occur."""
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels differ in length: {len(scores)} vs {len(labels)}")
    n_pos = sum(bool(label) for label in labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):  # tied scores share the mean of their 1-based ranks
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    positive_rank_sum = sum(rank for rank, label in zip(ranks, labels) if label)
    return (positive_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired correctness: a binomial test of the discordant counts ``b`` and
    ``c`` against p = 0.5, min(1, 2·P(X ≤ min(b, c))) with X ~ Binomial(b + c, 0.5); 1.0 when b + c = 0."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def flip_table(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, int]:
    """Paired outcome counts of method A vs method B on the same samples: ``fixed`` (wrong in A, right in B),
    ``broken`` (right in A, wrong in B), ``both_right`` and ``both_wrong``. McNemar uses fixed and broken."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"the two runs differ in length: {len(correct_a)} vs {len(correct_b)}")
    pairs = [(bool(a), bool(b)) for a, b in zip(correct_a, correct_b)]
    return {"fixed": pairs.count((False, True)), "broken": pairs.count((True, False)),
            "both_right": pairs.count((True, True)), "both_wrong": pairs.count((False, False))}


def bootstrap_delta_ci(correct_a: Sequence[bool], correct_b: Sequence[bool], n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> dict[str, Any]:
    """Paired bootstrap of accuracy(B) − accuracy(A): resample the samples with replacement ``n_boot`` times (the
    same indices for both methods) and take the central ``level`` percentile interval. Deterministic given ``seed``.
    nan delta and bounds for no samples."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"the two runs differ in length: {len(correct_a)} vs {len(correct_b)}")
    difference = np.asarray(correct_b, dtype=float) - np.asarray(correct_a, dtype=float)  # (N,) in {-1, 0, 1}
    out: dict[str, Any] = {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_boot": n_boot,
                           "level": level}
    if difference.size == 0:
        return out
    rng = np.random.default_rng(seed)
    deltas = np.array([difference[rng.integers(0, difference.size, difference.size)].mean() for _ in range(n_boot)])
    tail = (1 - level) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    out.update(delta=float(difference.mean()), ci_low=float(low), ci_high=float(high))
    return out


def paired_comparison(correct_a: Sequence[bool], correct_b: Sequence[bool], n_boot: int = 2000, seed: int = 0
                      ) -> dict[str, Any]:
    """Method B against method A on the same samples: both accuracies, the accuracy delta (B − A) with its paired
    bootstrap CI (``bootstrap_delta_ci``), McNemar's exact p-value and the flip table."""
    flips = flip_table(correct_a, correct_b)
    return {"accuracy_a": accuracy(correct_a), "accuracy_b": accuracy(correct_b),
            **bootstrap_delta_ci(correct_a, correct_b, n_boot=n_boot, seed=seed),
            "mcnemar_p": mcnemar_exact(flips["broken"], flips["fixed"]), "flips": flips}
