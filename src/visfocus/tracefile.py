"""Trace files of a run (``visfocus eval --trace heads|mean``): per task a folder ``traces_<task>/`` of compressed
``.npz`` shards, one per batch, written before the batch's samples are logged. Per sample id ``<id>``:

- ``<id>__attention``      (L, H, N) or, with ``mean``, (L, N) float16: the last prompt row's attention on the N image
  tokens (in prompt order) after any edit
- ``<id>__attention_pre``  the same before the edit, stored only when a method edited attention
- ``<id>__shares``         (L, 3) float32: head-mean mass on image / text / special-token keys (sums to 1), post-edit
- ``<id>__shares_pre``     (L, 3) float32, pre-edit
- ``<id>__meta``           JSON (a 0-d string array): the image views (name, rows, cols, region, image size, and
  ``index``: which of the N image tokens each grid cell is) and the method's extras (evidence maps, branch, ...);
  ``no_grid``, where the image tokens have no spatial grid (no views), says why

Size grows as samples × layers × image tokens: for the 2B Qwen3-VL (28 layers, 16 heads, 196 image tokens) a sample
takes about 28·16·196·2 B ≈ 176 KB with ``heads`` (×2 when a method edits) and ≈ 11 KB with ``mean``, before
compression."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from visfocus import durable
from visfocus.errors import VisfocusError
from visfocus.steer.trace import Trace

MODES = ("heads", "mean")


def sample_arrays(trace: Trace, extras: dict[str, Any] | None = None, mode: str = "heads") -> dict[str, np.ndarray]:
    """The stored arrays of one single-row trace (``Answer.trace``)."""
    if mode not in MODES:
        raise VisfocusError(f"--trace must be one of {', '.join(MODES)}, got {mode!r}")
    image = trace.image_cols[0]  # (S,)
    post = trace.last_row[:, 0][..., image]  # (L, H, N)
    pre = trace.last_row_pre[:, 0][..., image]  # (L, H, N)
    if mode == "mean":
        post, pre = post.mean(1), pre.mean(1)  # (L, N)
    out = {"attention": post.numpy().astype(np.float16), "shares": trace.shares()[:, 0].numpy().astype(np.float32),
           "shares_pre": trace.shares(pre=True)[:, 0].numpy().astype(np.float32)}
    if not np.array_equal(trace.last_row.numpy(), trace.last_row_pre.numpy()):
        out["attention_pre"] = pre.numpy().astype(np.float16)
    layout = trace.layouts[0] if trace.layouts else None
    views = []
    if layout is not None:
        for image_views in layout.images:
            for v in image_views:
                views.append({"name": v.name, "rows": v.rows, "cols": v.cols, "region": list(v.region),
                              "image_size": list(v.image_size),
                              "index": np.searchsorted(layout.image_positions, v.columns).tolist()})
    meta = {"views": views, "extras": extras or {}}
    if layout is not None and layout.no_grid:
        meta["no_grid"] = layout.no_grid  # why ``views`` is empty: the image tokens have no spatial grid
    out["meta"] = np.array(json.dumps(meta, default=_jsonable))
    return out


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_shard(folder: Path, name: str, samples: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write one shard, atomically and durably: ``samples`` maps a sample id to its arrays."""
    durable.make_folder(folder)
    path = folder / f"{name}.npz"
    arrays = {f"{sid}__{key}": arr for sid, arrays in samples.items() for key, arr in arrays.items()}
    durable.replace_with(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def load_traces(run_dir: str | Path, task: str) -> dict[str, dict[str, Any]]:
    """{sample id: {"attention", "shares", "shares_pre", ["attention_pre"], "views", "extras", ["no_grid"]}} of a
    run's task."""
    folder = Path(run_dir) / f"traces_{task}"
    if not folder.is_dir():
        raise VisfocusError(f"no traces for task '{task}' in {run_dir}; run `visfocus eval ... --trace`")
    out: dict[str, dict[str, Any]] = {}
    for shard in sorted(folder.glob("*.npz")):
        with np.load(shard) as data:
            for key in data.files:
                sid, field = key.rsplit("__", 1)
                entry = out.setdefault(sid, {})
                if field == "meta":
                    entry.update(json.loads(str(data[key])))
                else:
                    entry[field] = data[key]
    return out
