"""Confidence against accuracy (AdaptVis paper §5.1, Fig. 8, 15; App. E.4): reliability bins with the expected
calibration error, the AUROC of confidence for answer correctness, and mean confidence and accuracy per relation.

``confidence`` is a run's first-token maximum softmax probability (``Answer.confidence``), in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visfocus.metrics import accuracy, auroc, per_relation


def _checked(confidences: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(confidences) != len(correct):
        raise ValueError(f"confidences and correct differ in length: {len(confidences)} vs {len(correct)}")
    return np.asarray(confidences, dtype=np.float64), np.asarray(correct, dtype=bool)


def reliability(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> dict[str, Any]:
    """Equal-width reliability bins over [0, 1] and the expected calibration error.

    Bin i holds the samples with i/n_bins ≤ confidence < (i+1)/n_bins (the last bin also holds 1.0; confidences
    outside [0, 1] are clipped into it). Returns {"bins": [{"low", "high", "n", "mean_confidence", "accuracy"}]
    (all ``n_bins`` bins; empty ones have nan means), "ece", "n"}, where
    ECE = Σ_bins (n_bin / n) · |accuracy_bin − mean_confidence_bin| over the non-empty bins (nan for no samples)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    conf, right = _checked(confidences, correct)  # (S,), (S,)
    which = np.minimum(np.floor(np.clip(conf, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)  # (S,) bin of each
    bins, gap = [], 0.0
    for i in range(n_bins):
        members = which == i  # (S,)
        n = int(members.sum())
        mean_confidence = float(conf[members].mean()) if n else math.nan
        bin_accuracy = accuracy(right[members].tolist())
        if n:
            gap += n * abs(bin_accuracy - mean_confidence)
        bins.append({"low": i / n_bins, "high": (i + 1) / n_bins, "n": n, "mean_confidence": mean_confidence,
                     "accuracy": bin_accuracy})
    return {"bins": bins, "ece": gap / len(conf) if len(conf) else math.nan, "n": len(conf)}


def confidence_auroc(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """AUROC of the confidence for separating correct from incorrect answers (nan unless both occur)."""
    conf, right = _checked(confidences, correct)
    return auroc(conf.tolist(), right.tolist())


def per_relation_confidence(rows: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{relation: {"n", "accuracy", "mean_confidence"}} over ``rows`` ({sample id: row} or a list of rows with
    "relation", "correct", "confidence"); rows without a relation are skipped, and ``mean_confidence`` is None for a
    relation where any row lacks a confidence (``visfocus.metrics.per_relation``)."""
    return per_relation(list(rows.values()) if isinstance(rows, Mapping) else list(rows))
