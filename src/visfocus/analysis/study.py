"""The numbers of ``visfocus study`` (the AdaptVis paper's analyses, §3–§5 and App. E): pure functions over the sample
rows and traces that runs leave behind — no file I/O, no plotting.

- ``confidence_by_relation``: accuracy and mean confidence per relation, the AUROC of confidence for correctness,
  and whether low confidence flags the rare relations (AUROC of confidence for common vs rare).
- ``box_share_by_layer`` / ``attention_by_correctness``: per layer, the share of the image attention that lands on
  the subject's and on the reference object's box, the image share and the entropy, for right vs wrong answers.
- ``alpha_effect``: what one ScalingVis α does against the baseline: accuracy Δ with its paired bootstrap CI and
  McNemar p, fixed / broken per relation, and the per-layer shift in entropy, box shares and image share.
- ``adaptvis_branches``: how many samples each AdaptVis branch takes and its accuracy, and — over bins of the
  baseline's confidence — where smoothing (α_low everywhere) fixes and where it breaks.

``rows``: {sample id: sample row} (``visfocus.run.samples``); ``traces``: ``visfocus.tracefile.load_traces``;
``boxes``: {sample id: {"subject": [box], "reference": [box]}} of ``Record.boxes`` dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visfocus import metrics
from visfocus.analysis.attention import entropy_by_layer, head_mean
from visfocus.analysis.boxes import box_indicator
from visfocus.analysis.calibration import confidence_auroc, per_relation_confidence, reliability

OBJECTS = ("subject", "reference")  # the boxes whose attention share is reported


def _scored(rows: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [rows[sid] for sid in sorted(rows) if rows[sid].get("confidence") is not None]


def confidence_by_relation(rows: Mapping[str, Mapping[str, Any]], rare: Sequence[str]) -> dict[str, Any]:
    """Per relation n / accuracy / mean confidence; the reliability bins and ECE; ``auroc_correct``: the AUROC of
    confidence for separating right from wrong answers; ``auroc_common_vs_rare``: the AUROC of confidence for
    separating the common relations (positive) from the ``rare`` ones — 1.0 when every rare-relation answer is less
    confident than every common one, 0.5 when confidence says nothing about rarity (nan without both kinds)."""
    scored = _scored(rows)
    confidence = [float(r["confidence"]) for r in scored]
    correct = [bool(r["correct"]) for r in scored]
    groups = {}
    for name, members in (("rare", [r for r in scored if r.get("relation") in rare]),
                          ("common", [r for r in scored if r.get("relation") not in rare])):
        groups[name] = {"relations": sorted({r.get("relation") for r in members} - {None}), "n": len(members),
                        "accuracy": metrics.accuracy([bool(r["correct"]) for r in members]),
                        "mean_confidence": float(np.mean([r["confidence"] for r in members])) if members else None}
    calibration = reliability(confidence, correct)
    return {"n": len(scored), "accuracy": metrics.accuracy(correct), "per_relation": per_relation_confidence(scored),
            "rare": groups["rare"], "common": groups["common"], "reliability": calibration["bins"],
            "ece": calibration["ece"], "auroc_correct": confidence_auroc(confidence, correct),
            "auroc_common_vs_rare": metrics.auroc(confidence, [r.get("relation") not in rare for r in scored])}


def box_share_by_layer(attention: np.ndarray, view: Mapping[str, Any], boxes: Sequence[Mapping[str, Any]]
                       ) -> np.ndarray:
    """(L,) per layer, the fraction of the head-mean image attention (over all N image tokens) that falls on the
    cells of ``view`` overlapping ``boxes`` (``visfocus.analysis.boxes.box_indicator``); nan where a layer put no
    mass on the image."""
    probs = head_mean(attention)  # (L, N)
    inside = box_indicator(view, boxes).ravel().astype(bool)  # (C,) cells of the view, row-major
    tokens = np.asarray(view["index"], dtype=np.int64)[inside]  # (K,) the image tokens of those cells
    total = probs.sum(-1)  # (L,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, probs[:, tokens].sum(-1) / total, np.nan)


def sample_attention(trace: Mapping[str, Any], boxes: Mapping[str, Sequence[Mapping[str, Any]]] | None
                     ) -> dict[str, np.ndarray]:
    """One sample's per-layer statistics: "image_share" and "entropy" (L,), and "<object>_box" (L,) for each of
    ``OBJECTS`` that ``boxes`` names (on the trace's first view, the whole image in every family)."""
    out = {"image_share": np.asarray(trace["shares"], dtype=np.float64)[:, 0],  # (L,)
           "entropy": entropy_by_layer(trace["attention"])}  # (L,)
    views = trace.get("views") or []
    if boxes and views and not trace.get("no_grid"):
        for name in OBJECTS:
            if boxes.get(name):
                out[f"{name}_box"] = box_share_by_layer(trace["attention"], views[0], boxes[name])
    return out


def _mean_by_key(stats: list[dict[str, np.ndarray]]) -> dict[str, list[float]]:
    keys = sorted(set.intersection(*(set(s) for s in stats))) if stats else []
    return {key: np.nanmean(np.stack([s[key] for s in stats]), axis=0).tolist() for key in keys}


def attention_by_correctness(traces: Mapping[str, Mapping[str, Any]], rows: Mapping[str, Mapping[str, Any]],
                             boxes: Mapping[str, Mapping[str, Sequence]],
                             relations: Sequence[str] | None = None) -> dict[str, Any]:
    """{"correct": {"n", statistic: (L,) mean}, "incorrect": {...}, "auroc": {statistic: (L,)}} over the traced
    samples that have a row (``sample_attention``'s statistics, averaged per layer); only those of ``relations`` when
    given (right and wrong answers then compare scenes of the same kinds, not one relation's geometry against
    another's). "auroc": per layer, the AUROC of the statistic for a right answer (0.5: no difference; nan without
    both kinds)."""
    out: dict[str, Any] = {}
    stats = {}
    for name, want in (("correct", True), ("incorrect", False)):
        stats[name] = [sample_attention(traces[sid], boxes.get(sid)) for sid in sorted(traces)
                       if sid in rows and bool(rows[sid]["correct"]) == want
                       and (relations is None or rows[sid].get("relation") in relations)]
        out[name] = {"n": len(stats[name]), **_mean_by_key(stats[name])}
    both = stats["correct"] + stats["incorrect"]
    labels = [True] * len(stats["correct"]) + [False] * len(stats["incorrect"])
    keys = sorted(set.intersection(*(set(s) for s in both))) if both else []
    out["auroc"] = {key: [metrics.auroc([float(s[key][layer]) for s in both], labels)
                          for layer in range(len(both[0][key]))] for key in keys}
    return out


def paired(base_rows: Mapping[str, Mapping[str, Any]], run_rows: Mapping[str, Mapping[str, Any]],
           n_boot: int = 2000) -> dict[str, Any]:
    """Accuracy of both runs on their shared samples, Δ (run − base) with its paired bootstrap 95 % CI, McNemar's
    exact p and the flip table, also per relation."""
    shared = sorted(set(base_rows) & set(run_rows))
    before = [bool(base_rows[sid]["correct"]) for sid in shared]
    after = [bool(run_rows[sid]["correct"]) for sid in shared]
    overall = metrics.paired_comparison(before, after, n_boot=n_boot)
    relations = sorted({base_rows[sid].get("relation") for sid in shared} - {None})
    per_relation = {}
    for relation in relations:
        ids = [i for i, sid in enumerate(shared) if base_rows[sid].get("relation") == relation]
        per_relation[relation] = {"n": len(ids), "baseline": metrics.accuracy([before[i] for i in ids]),
                                  "run": metrics.accuracy([after[i] for i in ids]),
                                  **metrics.flip_table([before[i] for i in ids], [after[i] for i in ids])}
    return {"n": len(shared), "baseline": overall.pop("accuracy_a"), "run": overall.pop("accuracy_b"), **overall,
            "per_relation": per_relation,
            "fixed_ids": [sid for sid, a, b in zip(shared, before, after) if b and not a],
            "broken_ids": [sid for sid, a, b in zip(shared, before, after) if a and not b]}


def alpha_effect(base_rows: Mapping[str, Mapping[str, Any]], run_rows: Mapping[str, Mapping[str, Any]],
                 base_traces: Mapping[str, Mapping[str, Any]], run_traces: Mapping[str, Mapping[str, Any]],
                 boxes: Mapping[str, Mapping[str, Sequence]]) -> dict[str, Any]:
    """``paired`` statistics of a run against the baseline, plus "shift": per layer, the mean over the samples both
    traced of (run − baseline) in each ``sample_attention`` statistic (entropy, image share, box shares)."""
    out = paired(base_rows, run_rows)
    deltas = []
    for sid in sorted(set(base_traces) & set(run_traces)):
        before, after = sample_attention(base_traces[sid], boxes.get(sid)), sample_attention(run_traces[sid],
                                                                                               boxes.get(sid))
        deltas.append({key: after[key] - before[key] for key in before if key in after})
    out["shift"] = {"n": len(deltas), **_mean_by_key(deltas)}
    return out


def confidence_bins(confidences: Sequence[float], n_bins: int) -> list[np.ndarray]:
    """Indices of ``confidences`` in ``n_bins`` equal-count bins, least confident first (stable on ties)."""
    order = np.argsort(np.asarray(confidences, dtype=np.float64), kind="stable")  # (S,)
    return [chunk for chunk in np.array_split(order, min(n_bins, len(order))) if len(chunk)]


def adaptvis_branches(base_rows: Mapping[str, Mapping[str, Any]], adapt_rows: Mapping[str, Mapping[str, Any]],
                      smooth_rows: Mapping[str, Mapping[str, Any]], n_bins: int = 5) -> dict[str, Any]:
    """AdaptVis at its chosen point against the baseline and against smoothing everywhere (``smooth_rows``: ScalingVis
    at AdaptVis's α_low). "branches": per α used, n, the AdaptVis accuracy, the baseline accuracy of the same samples
    and their relations. "by_confidence": per equal-count bin of the baseline's confidence, n, the confidence range,
    the baseline and smoothed accuracy, fixed and broken. "auroc_low_confidence_fixed": among the samples smoothing
    flips, the AUROC of low baseline confidence (−confidence) for "fixed" against "broken" (nan without both)."""
    shared = [sid for sid in sorted(base_rows) if sid in adapt_rows and sid in smooth_rows
              and base_rows[sid].get("confidence") is not None]
    branches: dict[float, list[str]] = {}
    for sid in shared:
        branches.setdefault(float(adapt_rows[sid].get("extras", {}).get("alpha_used", np.nan)), []).append(sid)
    table = []
    for alpha, ids in sorted(branches.items()):
        relations: dict[str, int] = {}
        for sid in ids:
            relations[str(base_rows[sid].get("relation"))] = relations.get(str(base_rows[sid].get("relation")), 0) + 1
        table.append({"alpha": alpha, "n": len(ids),
                      "accuracy": metrics.accuracy([bool(adapt_rows[sid]["correct"]) for sid in ids]),
                      "baseline_accuracy": metrics.accuracy([bool(base_rows[sid]["correct"]) for sid in ids]),
                      "relations": dict(sorted(relations.items()))})
    confidence = [float(base_rows[sid]["confidence"]) for sid in shared]
    bins = []
    for chunk in confidence_bins(confidence, n_bins):
        ids = [shared[i] for i in chunk]
        before = [bool(base_rows[sid]["correct"]) for sid in ids]
        after = [bool(smooth_rows[sid]["correct"]) for sid in ids]
        bins.append({"n": len(ids), "low": min(confidence[i] for i in chunk), "high": max(confidence[i] for i in chunk),
                     "baseline_accuracy": metrics.accuracy(before), "smoothed_accuracy": metrics.accuracy(after),
                     **metrics.flip_table(before, after)})
    flipped = [(c, bool(smooth_rows[sid]["correct"])) for sid, c in zip(shared, confidence)
               if bool(smooth_rows[sid]["correct"]) != bool(base_rows[sid]["correct"])]
    return {"n": len(shared), "branches": table, "by_confidence": bins,
            "auroc_low_confidence_fixed": metrics.auroc([-c for c, _ in flipped], [fixed for _, fixed in flipped])}
