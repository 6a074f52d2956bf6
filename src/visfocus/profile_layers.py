"""Profiling VEA's visual-grounding layers (docs/methods.md §4.1 step A), once per model: on about 100 samples with
evidence boxes, how well each decoder layer's attention picks out the image tokens that show the evidence.

Per sample and layer: the AUROC of the last prompt row's head-mean attention over the first image view's tokens
(LLaVA-NeXT: the base view) against binary token labels, 1 when the token's pixel box overlaps an evidence box by a
positive area ("any overlap"; a box that only touches a cell's edge does not label it). Samples whose labels are all
one class are skipped and do not count towards ``n``. The mean over samples ranks the layers; the top
``ceil(top_fraction · L)`` become VEA's layers. ``visfocus profile-layers`` writes the JSON that
``vea(profile=...)`` reads.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from visfocus.api import load_image
from visfocus.errors import VisfocusError
from visfocus.interventions.vea import save_profile
from visfocus.metrics import auroc
from visfocus.models.layout import require_grid


def patch_labels(view_boxes: np.ndarray, evidence_boxes) -> np.ndarray:
    """(N,) bool: token i is evidence when its box (N, 4) overlaps any evidence box (M, 4) by a positive area.
    All boxes are (x0, y0, x1, y1) in the same pixels; no dilation, so touching edges do not count."""
    tokens = np.asarray(view_boxes, dtype=float)[:, None, :]  # (N, 1, 4)
    evidence = np.asarray(evidence_boxes, dtype=float).reshape(-1, 4)[None]  # (1, M, 4)
    width = np.minimum(tokens[..., 2], evidence[..., 2]) - np.maximum(tokens[..., 0], evidence[..., 0])  # (N, M)
    height = np.minimum(tokens[..., 3], evidence[..., 3]) - np.maximum(tokens[..., 1], evidence[..., 1])  # (N, M)
    return ((width > 0) & (height > 0)).any(axis=1)  # (N,)


def layer_auroc(attention_per_layer: list[np.ndarray], labels) -> list[float]:
    """One sample: per layer, the AUROC of its attention map (any shape, flattened) against the token labels (nan
    when the labels are all one class)."""
    flat_labels = [bool(v) for v in np.asarray(labels).reshape(-1)]
    return [auroc(np.asarray(att, dtype=float).reshape(-1).tolist(), flat_labels) for att in attention_per_layer]


def top_layers(auroc_per_layer: list[float], top_fraction: float = 0.1) -> list[int]:
    """The ``ceil(top_fraction · L)`` layers with the highest mean AUROC, in increasing index order (ties: lower
    index first; nan ranks last)."""
    k = max(1, math.ceil(top_fraction * len(auroc_per_layer)))
    ranked = sorted(range(len(auroc_per_layer)),
                    key=lambda i: (math.isnan(auroc_per_layer[i]), -auroc_per_layer[i], i))
    return sorted(ranked[:k])


def evidence_boxes(record, image_size: tuple[int, int]) -> np.ndarray:
    """(M, 4) pixel boxes of a record (``Record.boxes``); normalised boxes are scaled by the image's (width, height)."""
    width, height = image_size
    scale = np.array([width, height, width, height], dtype=float)
    return np.array([np.asarray(box["xyxy"], dtype=float) * (scale if box.get("normalized") else 1.0)
                     for box in record.boxes], dtype=float).reshape(-1, 4)


def profile_layers(vlm, records, n: int = 100, top_fraction: float = 0.1) -> dict[str, Any]:
    """Rank ``vlm``'s decoder layers by how well their attention finds the evidence boxes of the first ``n`` usable
    ``records`` (a task or a list of ``Record``; records without boxes or without an image are passed over).
    One unedited prefill per sample, read exactly as VEA reads it (``batch.runner.prefill(trace=True)``)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise VisfocusError(f"n must be an integer ≥ 1, got {n!r}")
    if not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1:
        raise VisfocusError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    require_grid(vlm.adapter.no_grid_reason)  # evidence boxes are matched to the image tokens' pixel boxes
    per_sample, skipped = [], 0
    for record in records:
        if len(per_sample) >= n:
            break
        has_image = record.image is not None or (record.image_path and Path(record.image_path).is_file())
        if not record.boxes or not has_image:
            continue
        image = load_image(record.image if record.image is not None else record.image_path)
        batch = vlm.prepare([image], [record.question])
        view = batch.layouts[0].view(0, 0)  # the first image's first view (LLaVA-NeXT: the base view)
        labels = patch_labels(view.boxes(), evidence_boxes(record, image.size))  # (rows*cols,)
        if labels.all() or not labels.any():
            skipped += 1
            continue
        trace = batch.runner.prefill(trace=True).trace
        per_sample.append(layer_auroc([trace.image_map(layer, 0) for layer in range(vlm.num_layers)], labels))
    if not per_sample:
        raise VisfocusError(f"no usable sample to profile: none of the records has an image and evidence boxes that "
                            f"cover some but not all image tokens ({skipped} covered none or all)")
    mean_auroc = np.mean(np.array(per_sample), axis=0).tolist()  # (L,)
    return {"layers": top_layers(mean_auroc, top_fraction), "auroc_per_layer": mean_auroc,
            "n_samples": len(per_sample), "n_skipped_one_class": skipped, "top_fraction": top_fraction,
            "model": getattr(vlm.model, "name_or_path", None), "task": getattr(records, "name", None)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``visfocus profile-layers``."""
    parser.add_argument("--model", required=True, help="Hub id or local path")
    parser.add_argument("--task", required=True, help="a task whose records have evidence boxes")
    parser.add_argument("--data_root", help="folder with the benchmark files (or set VISFOCUS_DATA_ROOT)")
    parser.add_argument("--prompt_style")
    parser.add_argument("--n", type=int, default=100, help="usable samples to profile on (default 100)")
    parser.add_argument("--top_fraction", type=float, default=0.1, help="fraction of layers to keep (default 0.1)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="profile.json", help="JSON file to write (default profile.json)")


def run(args: argparse.Namespace) -> int:
    """``visfocus profile-layers --model M --task T [--data_root D] [--n 100] --out profile.json``."""
    from visfocus.api import load
    from visfocus.benchmarks import task

    vlm = load(args.model, dtype=args.dtype, device=args.device)
    profile = profile_layers(vlm, task(args.task, data_root=args.data_root, prompt_style=args.prompt_style),
                             n=args.n, top_fraction=args.top_fraction)
    profile["model"] = args.model
    path = save_profile(profile, args.out)
    print(f"layers {profile['layers']}: top {args.top_fraction:g} of {vlm.num_layers} by mean AUROC over "
          f"{profile['n_samples']} samples; written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visfocus profile-layers",
                                     description="rank decoder layers by attention AUROC on evidence boxes (VEA)")
    add_arguments(parser)
    return run(parser.parse_args(argv))
