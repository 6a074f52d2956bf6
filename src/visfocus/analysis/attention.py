"""Layer-by-layer statistics of the last prompt row's attention (AdaptVis paper Fig. 3, 7, 16, 17 and App. E.1):
image / text / special-token shares, split by answer correctness; entropy and skewness of the image-attention
distribution; the token-grid map of one layer; and the per-layer difference between two runs.

``attention`` is a trace's (L, H, N) or (L, N) image attention (``visfocus.tracefile``): N image tokens in prompt
order, not renormalised — it holds only the share of the row's mass that went to the image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SHARE_NAMES = ("image", "text", "special")  # the columns of a trace's "shares"


def head_mean(attention: np.ndarray) -> np.ndarray:
    """(L, N) float64 mean over heads of an (L, H, N) attention; an (L, N) one (``--trace mean``) is returned as is."""
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim == 3:
        return attention.mean(1)  # (L, N)
    if attention.ndim == 2:
        return attention
    raise ValueError(f"attention must be (L, H, N) or (L, N), got shape {attention.shape}")


def image_attention(trace: Mapping[str, Any], pre: bool = False) -> np.ndarray:
    """(L, N) head-mean image attention of one trace, after the method's edit or (``pre``) before it. A trace stores
    ``attention_pre`` only when the method edited attention, so without it the pre-edit attention is ``attention``."""
    key = "attention_pre" if pre and "attention_pre" in trace else "attention"
    return head_mean(trace[key])


def attention_distribution(attention: np.ndarray) -> np.ndarray:
    """(L, N) head-mean image attention renormalised to sum 1 over the N image tokens in every layer (nan rows where
    a layer put no mass on the image)."""
    probs = head_mean(attention)  # (L, N)
    total = probs.sum(-1, keepdims=True)  # (L, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return probs / total


def entropy_by_layer(attention: np.ndarray) -> np.ndarray:
    """(L,) Shannon entropy in nats of each layer's renormalised image attention (App. E.1, Eq. 4):
    H = −Σ_i p_i log p_i, with 0·log 0 = 0. Uniform attention over N tokens gives log N; a one-hot gives 0."""
    p = attention_distribution(attention)  # (L, N)
    p_log_p = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)  # (L, N); nan rows give 0 here
    return np.where(np.isnan(p).any(-1), np.nan, -p_log_p.sum(-1))


def skewness_by_layer(attention: np.ndarray) -> np.ndarray:
    """(L,) Fisher skewness of the N renormalised attention values of each layer, the idea of App. E.1, Eq. 5.

    Definition used here: with p_1..p_N the layer's renormalised image attention (sum 1) and p̄ = 1/N their mean,
    skew = m3 / m2^(3/2), where m_k = (1/N) Σ_i (p_i − p̄)^k are population (biased) central moments — the
    distribution of attention *values* over tokens, not of token positions. A few strongly attended tokens among many
    weak ones give a positive skew (a single spike: (N − 2)/√(N − 1)); a symmetric set of values gives 0. Constant
    (uniform) attention has no spread and is defined to have skew 0."""
    p = attention_distribution(attention)  # (L, N)
    centred = p - p.mean(-1, keepdims=True)  # (L, N)
    m2 = (centred**2).mean(-1)  # (L,)
    m3 = (centred**3).mean(-1)  # (L,)
    flat = np.sqrt(m2) <= 1e-9 * np.abs(p.mean(-1))  # no spread beyond rounding
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = m3 / m2**1.5
    return np.where(flat, 0.0, skew)


def grid_map(attention_row: np.ndarray, view: Mapping[str, Any]) -> np.ndarray:
    """(rows, cols) attention of one layer (``attention_row`` (N,) over the N image tokens) on one view's token grid;
    ``view["index"]`` says which of the N tokens each grid cell (row-major) is."""
    values = np.asarray(attention_row, dtype=np.float64)  # (N,)
    return values[np.asarray(view["index"], dtype=np.int64)].reshape(view["rows"], view["cols"])


def _mean_std(arrays: list[np.ndarray], shape: tuple[int, ...]) -> dict[str, Any]:
    if not arrays:
        return {"mean": np.full(shape, np.nan), "std": np.full(shape, np.nan), "n": 0}
    stacked = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])  # (S, *shape)
    return {"mean": stacked.mean(0), "std": stacked.std(0), "n": len(arrays)}


def share_by_layer(traces: Mapping[str, Mapping[str, Any]], rows: Mapping[str, Mapping[str, Any]] | None = None,
                   pre: bool = False) -> dict[str, dict[str, Any]]:
    """Per layer, the mean and (population) standard deviation over samples of the last prompt row's head-mean mass
    on image / text / special-token keys (columns in ``SHARE_NAMES`` order): {"all": {"mean": (L, 3), "std": (L, 3),
    "n"}}, plus "correct" and "incorrect" when ``rows`` ({sample id: row with "correct"}) is given — those two count
    only the samples that have a row. ``pre`` uses the shares before the method's edit. Empty groups hold nan."""
    key = "shares_pre" if pre else "shares"
    ids = sorted(traces)
    groups = {"all": ids}
    if rows is not None:
        groups["correct"] = [sid for sid in ids if sid in rows and bool(rows[sid]["correct"])]
        groups["incorrect"] = [sid for sid in ids if sid in rows and not bool(rows[sid]["correct"])]
    shape = np.shape(traces[ids[0]][key]) if ids else (0, len(SHARE_NAMES))
    return {name: _mean_std([traces[sid][key] for sid in members], shape) for name, members in groups.items()}


def compare_runs(traces_a: Mapping[str, Mapping[str, Any]], traces_b: Mapping[str, Mapping[str, Any]],
                 pre: bool = False) -> dict[str, Any]:
    """Per layer, the mean over the sample ids both runs traced of run B minus run A in image share and in the
    entropy of the image attention: {"n", "image_share": (L,), "entropy": (L,)}. Positive means B puts more mass on
    the image / spreads it more evenly. The two runs must have the same number of layers."""
    shared = sorted(set(traces_a) & set(traces_b))
    key = "shares_pre" if pre else "shares"
    share_deltas = [np.asarray(traces_b[sid][key], np.float64)[:, 0] - np.asarray(traces_a[sid][key], np.float64)[:, 0]
                    for sid in shared]  # S × (L,)
    entropy_deltas = [entropy_by_layer(image_attention(traces_b[sid], pre))
                      - entropy_by_layer(image_attention(traces_a[sid], pre)) for sid in shared]  # S × (L,)
    if not shared:
        return {"n": 0, "image_share": np.zeros(0), "entropy": np.zeros(0)}
    return {"n": len(shared), "image_share": np.mean(share_deltas, axis=0), "entropy": np.mean(entropy_deltas, axis=0)}
