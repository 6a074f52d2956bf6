"""Variants as columns: k versions of the last prompt token, each under its own edits, computed in the forward that
holds the prompt (from the shared image prefix, or whole) instead of in k re-runs after it.

The prompt's S columns run as usual and unedited; k more columns follow, each a copy of the last prompt token at its
position (the same RoPE position, the same token type). Inside the visfocus attention function (``VariantColumns``)
variant j attends to exactly what the last prompt token attends to, but that token itself, and to itself: so its
keys, values and logits equal those of a re-run of the last prompt token under its edits on the prompt's cache. Every
other row sees the variants as later columns and so never sees them (causal).

After the forward a method keeps, per batch row, the variant it chooses (AdaptVis: the unedited row's confidence picks
the α), or several choices side by side (a sweep's grid points): ``continuation_cache`` puts the chosen variant's
keys and values in the last prompt column, and decoding goes on from there with the variant's first token."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from visfocus.steer.prefix import build_cache, cache_layers

UNEDITED = -1  # a choice: the last prompt row as the prompt's forward computed it, unedited

_COLUMNS = contextvars.ContextVar("visfocus_variant_columns", default=True)


@contextlib.contextmanager
def separate_passes() -> Iterator[None]:
    """Within the block, methods that would run variants as columns re-run the last prompt token per variant after
    an unedited prefill instead (the path variants replace; for comparing the two)."""
    token = _COLUMNS.set(False)
    try:
        yield
    finally:
        _COLUMNS.reset(token)


def columns_enabled() -> bool:
    """False inside ``separate_passes``."""
    return _COLUMNS.get()


@dataclass
class VariantPass:
    """The prompt's forward with k variant columns.

    logits: (B, 1 + k, V) float32 next-token logits: the unedited last prompt row, then variant j's at 1 + j.
    cache: its KV cache, S + k columns (the prompt's, then the variants'). Never modified: each continuation copies.
    """

    logits: torch.Tensor
    cache: object
    prompt_len: int

    @property
    def unedited_logits(self) -> torch.Tensor:
        """(B, V) float32: the unedited last prompt row's next-token logits."""
        return self.logits[:, 0]

    @property
    def count(self) -> int:
        """k, the number of variants."""
        return self.logits.shape[1] - 1

    def first_logits(self, choice: list[int]) -> torch.Tensor:
        """(B, V) float32: per row b, the next-token logits of variant ``choice[b]`` (``UNEDITED``: the unedited
        row)."""
        rows = torch.arange(self.logits.shape[0], device=self.logits.device)  # (B,)
        picked = torch.tensor(choice, device=self.logits.device) + 1  # (B,) index into the 1 + k logits
        return self.logits[rows, picked]  # (B, V)

    def continuation_cache(self, choices: list[list[int]], in_place: bool = False):
        """A cache of S columns for len(choices)·B rows, continuation-major (row c·B + b): row b's prompt columns
        0..S−2, and in column S−1 the keys and values of variant ``choices[c][b]`` (``UNEDITED``: the prompt's own).
        New tensors, unless ``in_place`` (one continuation): then this pass's own cache is rewritten and cropped,
        no copy (the pass is used up)."""
        S = self.prompt_len
        columns = torch.tensor([[S - 1 if j == UNEDITED else S + j for j in choice] for choice in choices])  # (C, B)
        if in_place and len(choices) == 1:
            cache, self.cache = self.cache, None
            for keys, values in cache_layers(cache):  # (B, Hkv, S + k, D) each
                for tensor in (keys, values):
                    rows = torch.arange(tensor.shape[0])  # (B,)
                    tensor[:, :, S - 1] = tensor[rows, :, columns[0].to(tensor.device)]  # (B, Hkv, D)
            cache.crop(-(self.count))  # the variant columns go (a view: nothing is copied)
            return cache
        layers = []
        for keys, values in cache_layers(self.cache):  # (B, Hkv, S + k, D) each
            kept = []
            for tensor in (keys, values):
                C, B = columns.shape
                prompt = tensor[:, :, :S].repeat(C, 1, 1, 1)  # (C·B, Hkv, S, D)
                rows = torch.arange(B).repeat(C)  # (C·B,) batch row of each continuation row
                prompt[:, :, S - 1] = tensor[rows, :, columns.reshape(-1).to(tensor.device)]  # (C·B, Hkv, D)
                kept.append(prompt)
            layers.append(tuple(kept))
        return build_cache(layers)


def with_variant_columns(kwargs: dict, count: int) -> dict:
    """Model inputs for a forward over some prompt columns (the last one the last prompt token) with ``count`` copies
    of the last column appended: every per-token tensor (shaped like ``input_ids``, and the attention mask) and the
    position ids ((B, Q) or (3, B, Q)) repeat their last column; the rest (cache, pixels) is kept."""
    ids = kwargs["input_ids"]  # (B, Q)
    out = dict(kwargs)
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and (key == "attention_mask" or value.shape == ids.shape):
            out[key] = torch.cat([value, value[:, -1:].expand(-1, count)], dim=1)  # (B, W + k)
    positions = kwargs["position_ids"]  # (B, Q) or (3, B, Q)
    out["position_ids"] = torch.cat([positions, positions[..., -1:].expand(*positions.shape[:-1], count)], dim=-1)
    return out


def finished_after_first(new_tokens: torch.Tensor, eos: list[int], pad: int) -> torch.Tensor:
    """``new_tokens`` (R, T) with, in every row whose first token ends the sequence, the later tokens set to ``pad``
    (``generate`` pads a finished row; the continuation started from the first token, so it did not know), and the
    columns after the last row's end dropped, as ``generate`` stops when every row has ended."""
    out = new_tokens.clone()
    done = torch.isin(out[:, 0], torch.tensor(eos, device=out.device)) if eos else torch.zeros_like(out[:, 0]).bool()
    out[done, 1:] = pad
    if not eos:
        return out
    ended = torch.isin(out, torch.tensor(eos, device=out.device))  # (R, T)
    lengths = torch.where(ended.any(-1), ended.float().argmax(-1) + 1, torch.full_like(out[:, 0], out.shape[1]))
    return out[:, :int(lengths.max())]
