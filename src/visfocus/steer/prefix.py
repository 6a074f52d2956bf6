"""Sharing a prompt prefix between questions: every supported chat template puts the image before the question, so
the keys and values of the image tokens (and of the template text around them) do not depend on the question. They
are computed once per image, kept in a ``PrefixStore``, and each question runs only its own tokens on a copy.

Layout of a shared batch (B rows): every row's shared prefix ends at the same column C, and every row's last prompt
token sits in the last column S − 1, so each row reads

    [padding × (C − P_b)] [prefix: P_b tokens] [padding × (N − n_b)] [suffix: n_b tokens]      (N = S − C)

with the attention mask 0 on both paddings. Positions come from the mask (padding never counts), so every real token
keeps the position it has in the ordinary left-padded batch, and so does every cached key.

``SharedPrefill`` assembles a shared batch's caches from the store (the runner's prefill and the start of its
``generate`` call it); ``Sharing`` is the batch's plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeAlias

import torch
from transformers import DynamicCache

from visfocus.steer.compat import cache_argument, fresh_cache, output_cache
from visfocus.steer.context import Cost, SteerState, steering


@dataclass
class StoredPrefix:
    """The unedited keys and values of one row's first ``length`` prompt tokens (no padding)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer (keys, values), each (1, Hkv, length, D)
    length: int
    last_logits: torch.Tensor | None = None  # (V,) float32 next-token logits after the last of these tokens


class PrefixStore:
    """Prefix caches kept between calls. An entry lives while calls use it: ``end_call()`` drops every entry the
    call just finished did not use, so a run grouped by image holds one image's prefix per batch slot at a time.

    keep_prompts: also keep each row's whole unedited prompt (a sweep or the app asks the same questions again under
    other parameters; then only the last prompt token runs again).
    """

    def __init__(self, keep_prompts: bool = False) -> None:
        self.keep_prompts = keep_prompts
        self.entries: dict[Hashable, StoredPrefix] = {}
        self._used: set[Hashable] = set()

    def has(self, key: Hashable) -> bool:
        """Whether the store holds ``key`` (not a use)."""
        return key in self.entries

    def peek(self, key: Hashable) -> StoredPrefix | None:
        """The entry under ``key`` (None if absent) without marking it used: a look that may lead to no use."""
        return self.entries.get(key)

    def get(self, key: Hashable) -> StoredPrefix | None:
        """The entry under ``key`` (None if absent), marked used: it outlives this call's ``end_call()``."""
        entry = self.entries.get(key)
        if entry is not None:
            self._used.add(key)
        return entry

    def put(self, key: Hashable, entry: StoredPrefix) -> None:
        self.entries[key] = entry
        self._used.add(key)

    def end_call(self) -> None:
        """Forget what the finished call did not use."""
        self.entries = {k: v for k, v in self.entries.items() if k in self._used}
        self._used = set()

    def clear(self) -> None:
        self.entries, self._used = {}, set()

    def __len__(self) -> int:
        return len(self.entries)


def image_fingerprint(mode: str, size: tuple[int, int], pixels: bytes) -> str:
    """A key for an image's content (the processor is deterministic, so equal images give equal pixel tensors)."""
    digest = hashlib.blake2b(pixels, digest_size=16)
    digest.update(f"{mode}:{size[0]}x{size[1]}".encode())
    return digest.hexdigest()


@dataclass
class Sharing:
    """What the runner needs to share prefixes in one batch.

    prefix_lengths: P_b per row (tokens up to and including the image and the template text every question
    shares). image_keys: per row, a key of its image's content. prefix_cols: C, the column where every prefix ends.
    select_vision(inputs, rows): the vision inputs (pixel values, grids) of those rows' images.
    continuation_positions(inputs, start): pure; the position ids of columns start.. for a forward on a cache holding
    columns 0..start−1, and the per-row decode offsets a prefill of those rows would leave (None where the family
    keeps none; ``Adapter.continuation_positions``).
    set_decode_offsets(offsets): readies the model to decode on from such a cache (Qwen: its cached per-row M-RoPE
    offsets; ``Adapter.set_decode_offsets``).
    """

    store: PrefixStore
    prefix_lengths: list[int]
    image_keys: list[str]
    prefix_cols: int
    select_vision: Callable[[dict, list[int]], dict]
    continuation_positions: Callable[[dict, int], tuple[torch.Tensor, torch.Tensor | None]]
    set_decode_offsets: Callable[[torch.Tensor | None], None]


def leading_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) number of padding columns before each row's first real token."""
    return (attention_mask.long().cumsum(-1) == 0).sum(-1)


def split_layout(inputs: dict, prefix_lengths: list[int], image_token_id: int) -> tuple[dict, int]:
    """Re-lay a left-padded batch so that every row's prefix ends at one column C (see the module docstring).
    Every (B, S) tensor of ``inputs`` moves with the tokens; the other tensors (pixels, grids) stay. Padding inside a
    row repeats the row's first non-image token (masked, so never seen; a repetition penalty sees no new id).
    Returns the new inputs and C."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()  # (B, S)
    B = ids.shape[0]
    lengths = mask.sum(-1).tolist()
    suffix = [n - p for n, p in zip(lengths, prefix_lengths)]
    C, N = max(prefix_lengths), max(suffix)
    per_token = [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape == ids.shape]
    out = dict(inputs)
    # source column of each target column, per row; -1 where the target is padding
    source = torch.full((B, C + N), -1, dtype=torch.long, device=ids.device)
    for b in range(B):
        real = mask[b].nonzero().squeeze(-1)  # (L_b,) columns of the row's real tokens
        p = prefix_lengths[b]
        source[b, C - p:C] = real[:p]
        source[b, C + N - suffix[b]:] = real[p:]
    padding = source < 0  # (B, C+N)
    gather = source.clamp(min=0)
    for key in per_token:
        value = inputs[key].gather(1, gather)  # (B, C+N)
        if key == "attention_mask":
            value = value.masked_fill(padding, 0)
        elif key == "input_ids":
            first = torch.stack([ids[b][mask[b] & (ids[b] != image_token_id)][0] for b in range(B)])  # (B,)
            value = torch.where(padding, first[:, None], value)
        else:
            value = value.masked_fill(padding, 0)
        out[key] = value
    return out, C


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per decoder layer (keys, values), each (B, Hkv, K, D), of a transformers dynamic cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def build_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A dynamic cache holding ``layers`` (per layer (keys, values), (B, Hkv, K, D))."""
    cache = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache


def assemble(entries: list[StoredPrefix], columns: list[torch.Tensor], width: int) -> list[tuple[torch.Tensor, ...]]:
    """Per layer (keys, values) of shape (B, Hkv, width, D): row b's entry placed at ``columns[b]`` (one column per
    stored token), zeros elsewhere (masked padding). Always new tensors: the store's entries are never modified."""
    out = []
    for layer in range(len(entries[0].layers)):
        keys0, values0 = entries[0].layers[layer]
        B, (_, H, _, D) = len(entries), keys0.shape
        keys = keys0.new_zeros(B, H, width, D)
        values = values0.new_zeros(B, H, width, D)
        for b, entry in enumerate(entries):
            k, v = entry.layers[layer]  # (1, Hkv, P, D)
            cols = columns[b].to(k.device)
            keys[b, :, cols] = k[0].to(keys.dtype)
            values[b, :, cols] = v[0].to(values.dtype)
        out.append((keys, values))
    return out


def extract(layers: list[tuple[torch.Tensor, torch.Tensor]], row: int, columns: torch.Tensor,
            last_logits: torch.Tensor | None = None) -> StoredPrefix:
    """Row ``row``'s keys and values at ``columns`` (its real tokens, in order) as a stored prefix (copies)."""
    kept = [(k[row:row + 1, :, columns.to(k.device)].clone(), v[row:row + 1, :, columns.to(v.device)].clone())
            for k, v in layers]
    return StoredPrefix(layers=kept, length=int(columns.numel()), last_logits=last_logits)


@dataclass
class RowKeys:
    """Per row of a shared batch: its real columns (in order), its image prefix's key and its whole prompt's key in
    the store (keys are (tag, image key, tokens))."""

    columns: list[torch.Tensor]
    prefixes: list[tuple]
    prompts: list[tuple]


# a forward over the given model inputs: (its cache, (B, V) float32 logits after the last column)
Forward: TypeAlias = Callable[[dict], tuple[object, torch.Tensor]]


class SharedPrefill:
    """The caches of one shared batch (laid out by ``split_layout``), assembled from the store: every row's image
    prefix (prefilled here, once per distinct image, where the store lacks it) placed in one cache, then the question
    tokens run on it; or every row's kept whole prompt.

    inputs: the batch's model inputs in the shared layout. image_cols: (B, S) bool image-token columns.
    prefill_position_ids: the positions of a manual prefill ((B, S); None: the model's own). cost: where the
    prefixes' forwards count (they are unedited and never recorded).
    """

    def __init__(self, model, inputs: dict, sharing: Sharing, *, image_cols: torch.Tensor,
                 prefill_position_ids: torch.Tensor | None, cost: Cost) -> None:
        self.model, self.inputs, self.sharing, self.store = model, inputs, sharing, sharing.store
        self.image_cols, self.prefill_position_ids, self.cost = image_cols, prefill_position_ids, cost

    def keys(self, tag: str) -> RowKeys:
        """Each row's store keys; ``tag`` names the stream (e.g. a noised image's)."""
        sh, ids, mask = self.sharing, self.inputs["input_ids"], self.inputs["attention_mask"].bool()  # (B, S)
        columns = [mask[b].nonzero().squeeze(-1) for b in range(ids.shape[0])]  # each row's real columns, in order
        tokens = [tuple(ids[b, cols].tolist()) for b, cols in enumerate(columns)]
        return RowKeys(columns=columns,
                       prefixes=[(tag, sh.image_keys[b], t[:sh.prefix_lengths[b]]) for b, t in enumerate(tokens)],
                       prompts=[(tag, sh.image_keys[b], t) for b, t in enumerate(tokens)])

    def image_prefixes(self, tag: str = "", vision: dict | None = None) -> DynamicCache:
        """A cache of columns 0..C−1 holding every row's image prefix (of ``vision``'s pixels where given, stored
        under ``tag``); the model is readied to continue at C (the start of ``generate``, whose first forward runs
        every question token)."""
        cache, _ = self._prefix_cache(self.keys(tag), vision)
        return cache

    def prefill(self, forward: Forward, *, tag: str = "", vision: dict | None = None,
                reuse: bool = True, rerun_last: bool = False) -> tuple[object, torch.Tensor]:
        """The whole prompt's cache (S columns) and first-token logits (B, V) float32, the model readied to decode on:
        every row's kept whole prompt when the store keeps them all and ``reuse``, else the image prefixes (of
        ``vision``'s pixels where given) and ``forward`` over the question tokens (their prompts kept afterwards when
        the store keeps prompts). ``rerun_last``: ``forward`` runs at least the last prompt token (kept prompts are
        cropped before it), and its logits may hold more than the last column's: (B, 1 + k, V), the first the last
        prompt token's (``visfocus.steer.variants``); ``forward``'s own cache and logits are returned."""
        keys = self.keys(tag)
        ids = self.inputs["input_ids"]  # (B, S)
        if reuse and self.store.keep_prompts:
            kept = self._kept_prompts(keys)
            if kept is not None and not rerun_last:
                return kept
            if kept is not None:  # every row's prompt but its last token, and the last token run by ``forward``
                cache, _ = kept
                cache.crop(-1)  # drop the last prompt position
                positions, _ = self.sharing.continuation_positions(self.inputs, ids.shape[1] - 1)
                return forward({"input_ids": ids[:, -1:], "attention_mask": self.inputs["attention_mask"],
                                cache_argument(self.model): cache, "position_ids": positions})
        cache, positions = self._prefix_cache(keys, vision)
        C = self.sharing.prefix_cols
        cache, first = forward({"input_ids": ids[:, C:], "attention_mask": self.inputs["attention_mask"],  # (B, N)
                                cache_argument(self.model): cache, "position_ids": positions})
        if self.store.keep_prompts:
            layers = cache_layers(cache)
            last = first if first.dim() == 2 else first[:, 0]  # (B, V): after the last prompt token
            for b, key in enumerate(keys.prompts):
                self.store.put(key, extract(layers, b, keys.columns[b], last[b]))
        return cache, first

    def _kept_prompts(self, keys: RowKeys) -> tuple[DynamicCache, torch.Tensor] | None:
        """Every row's kept whole prompt and its first-token logits (all marked used), or None if one is missing."""
        whole = [self.store.peek(key) for key in keys.prompts]
        if any(entry is None for entry in whole):
            return None
        for key in (*keys.prompts, *keys.prefixes):
            self.store.get(key)  # in use
        ids = self.inputs["input_ids"]  # (B, S)
        _, offsets = self.sharing.continuation_positions(self.inputs, ids.shape[1])
        self.sharing.set_decode_offsets(offsets)
        cache = build_cache(assemble(whole, keys.columns, ids.shape[1]))
        return cache, torch.stack([entry.last_logits for entry in whole]).to(ids.device)  # (B, V)

    def _prefix_cache(self, keys: RowKeys, vision: dict | None) -> tuple[DynamicCache, torch.Tensor]:
        """The image prefixes' cache (columns 0..C−1) and the position ids of columns C.. ((B, N) or (3, B, N)); the
        model is readied to continue at C (Qwen: its M-RoPE offsets)."""
        sh = self.sharing
        self._prefill_missing(keys.prefixes, vision)
        entries = [self.store.get(key) for key in keys.prefixes]
        C = sh.prefix_cols
        cache = build_cache(assemble(entries, [torch.arange(C - p, C) for p in sh.prefix_lengths], C))
        positions, offsets = sh.continuation_positions(self.inputs, C)
        sh.set_decode_offsets(offsets)
        return cache, positions

    def _prefill_missing(self, prefix_keys: list[tuple], vision: dict | None) -> None:
        """Prefill, once per distinct image, the prefixes the store does not hold yet (unedited, unrecorded)."""
        sh, inputs = self.sharing, self.inputs
        missing: dict = {}  # key -> the first row that needs it
        for b, key in enumerate(prefix_keys):
            if not self.store.has(key):
                missing.setdefault(key, b)
        if not missing:
            return
        rows, C = list(missing.values()), sh.prefix_cols
        width = max(sh.prefix_lengths[r] for r in rows)
        ids = inputs["input_ids"]
        part = {k: v[rows, C - width:C] for k, v in inputs.items()
                if isinstance(v, torch.Tensor) and v.shape == ids.shape}  # (R, width) each, left padded
        part.update(sh.select_vision({**inputs, **(vision or {})}, rows))
        if self.prefill_position_ids is not None:
            part["position_ids"] = self.prefill_position_ids[rows, C - width:C]  # (R, width)
        state = SteerState(image_cols=self.image_cols[rows, C - width:C], cost=self.cost)  # no edit, no trace
        with steering(state):
            out = self.model(**part, **{cache_argument(self.model): fresh_cache()}, use_cache=True, logits_to_keep=1)
        layers = cache_layers(output_cache(out))
        for j, (key, r) in enumerate(missing.items()):
            self.store.put(key, extract(layers, j, torch.arange(width - sh.prefix_lengths[r], width)))
