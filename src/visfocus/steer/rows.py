"""Side streams as rows: a contrastive method's side stream (``steer.streams``: the text-only prompt, or the prompt
on other pixels) decoded in the same forwards as the main rows. ``generate`` runs 2B rows — the batch's B main rows,
then the stream's B rows, each with its own cache columns, mask and positions — so every token costs one forward for
both streams instead of two. The side rows are unedited (``SteerState.edited_rows``), the method's logits processors
see the main rows only (``OnMainRows``), the stream serves its side rows' raw logits of the same step
(``SideRowLogits``), and every side row takes the token its main row chose (``FollowMain``, last). The result is the
separate-stream decoding's, up to float rounding of a wider batch.

``plan_rows`` lays out the 2B rows (or says None where rows are not exact, and the stream runs separately): greedy
decoding only (the token a side row takes is its main row's argmax), no teacher forcing, no trace, no layer hooks,
no kept whole prompts. With shared prefixes the main rows start from their stored image prefixes (columns 0..C−1);
an image stream's rows from the prefixes of its own pixels (stored under its tag); a text-only row keeps the leading
tokens it shares with the text of its image prefix in the store too (tagged ``text_only``, no image), placed just
before column C, and runs the rest of its prompt in the first forward, right-aligned like the questions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from visfocus.steer.compat import cache_argument, fresh_cache, output_cache
from visfocus.steer.context import SteerState, steering
from visfocus.steer.prefix import build_cache, cache_layers, extract
from visfocus.steer.streams import ImageStream, SideStream, TextOnlyStream

TEXT_ONLY_TAG = "text_only"  # store tag of a text-only row's leading tokens (no image key)


@dataclass
class RowsPlan:
    """The 2B-row batch ``generate`` runs: main rows 0..B−1, side rows B..2B−1.

    kwargs: model inputs for ``generate`` (ids, mask, per-token and vision inputs, the cache when starting from
    prefixes), each (2B, S) or the vision tensors of both streams. image_cols: (2B, S) bool. offsets: the per-row
    decode offsets to set before decoding ((2B, 1); None where the family keeps none or generate computes them)."""

    kwargs: dict
    image_cols: torch.Tensor
    offsets: torch.Tensor | None
    main_rows: int

    @property
    def edited_rows(self) -> torch.Tensor:
        """(2B,) bool: the rows edits apply to (the main ones)."""
        rows = torch.arange(self.image_cols.shape[0], device=self.image_cols.device)
        return rows < self.main_rows


def _per_token_keys(inputs: dict) -> list[str]:
    ids = inputs["input_ids"]
    return [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape == ids.shape]


def _stack_rows(main: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    return torch.cat([main, side.to(main.device, main.dtype)], dim=0)  # (2B, ...)


def _other_inputs_of_both(runner, stream: SideStream, drop: tuple[str, ...]) -> dict:
    """The model inputs of 2B rows that are not per token (vision inputs: pixels, grids, sizes), leaving out ``drop``:
    an image stream's rows hold their own images (its other pixels, the same grids), after the main rows' (one
    image per row); text-only rows hold none (the model finds no image token in them)."""
    per_token = set(_per_token_keys(runner.inputs))
    other = {k: v for k, v in runner.inputs.items() if k not in per_token and k not in drop}
    if isinstance(stream, ImageStream):
        return {k: _stack_rows(v, stream.vision.get(k, v)) if isinstance(v, torch.Tensor) else v
                for k, v in other.items()}
    return other


def _text_rows_whole(runner, stream: TextOnlyStream) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(B, S) ids and mask of the text-only rows left padded to the main width S, or None when one is wider."""
    ids, mask = stream.input_ids, stream.attention_mask  # (B, S_u)
    S, S_u = runner.prompt_len, ids.shape[1]
    if S_u > S:
        return None
    pad = ids.new_full((ids.shape[0], S - S_u), int(stream.pad_id))
    return torch.cat([pad, ids], dim=1), torch.cat([mask.new_zeros(pad.shape), mask], dim=1)  # (B, S) each


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class _TextPrefixes:
    """The text-only rows of a shared batch: per row the leading tokens kept in the store (placed in columns
    C−p..C−1) and the rest, right-aligned in columns C..S−1."""

    def __init__(self, runner, stream: TextOnlyStream) -> None:
        self.runner, self.stream = runner, stream
        C, S = runner.sharing.prefix_cols, runner.prompt_len
        self.kept: list[list[int]] = []
        self.rest: list[list[int]] = []
        for row, prefix_text in zip(stream.rows_ids, stream.prefix_rows):
            p = min(_common_length(row, prefix_text), C, len(row) - 1)
            self.kept.append(row[:p])
            self.rest.append(row[p:])
        self.fits = all(len(rest) <= S - C for rest in self.rest)

    def ids_and_mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) ids and mask of the text-only rows in the shared layout."""
        C, S, pad = self.runner.sharing.prefix_cols, self.runner.prompt_len, int(self.stream.pad_id)
        ids, mask = [], []
        for kept, rest in zip(self.kept, self.rest):
            ids.append([pad] * (C - len(kept)) + kept + [pad] * (S - C - len(rest)) + rest)
            mask.append([0] * (C - len(kept)) + [1] * len(kept) + [0] * (S - C - len(rest)) + [1] * len(rest))
        device = self.runner.inputs["input_ids"].device
        return torch.tensor(ids, device=device), torch.tensor(mask, device=device)  # (B, S) each

    def cache_layers(self, like: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
        """Per layer (keys, values) (B, Hkv, C, D): each row's kept tokens (from the store, prefilled where missing)
        in its last columns, zeros elsewhere (masked). ``like``: the main rows' layers, for shapes and dtypes."""
        store, C = self.runner.sharing.store, self.runner.sharing.prefix_cols
        keys = [(TEXT_ONLY_TAG, "", tuple(kept)) for kept in self.kept]
        self._prefill_missing(keys)
        out = []
        for layer, (main_keys, main_values) in enumerate(like):
            k_out, v_out = main_keys.new_zeros(main_keys.shape), main_values.new_zeros(main_values.shape)
            for b, key in enumerate(keys):
                if not key[2]:
                    continue
                k, v = store.get(key).layers[layer]  # (1, Hkv, p, D)
                k_out[b, :, C - k.shape[2]:] = k[0].to(k_out.dtype)
                v_out[b, :, C - v.shape[2]:] = v[0].to(v_out.dtype)
            out.append((k_out, v_out))
        return out

    def _prefill_missing(self, keys: list[tuple]) -> None:
        """One plain forward over the kept tokens the store lacks (left padded, text positions), stored per row."""
        store, runner = self.runner.sharing.store, self.runner
        missing: dict[tuple, list[int]] = {}
        for key in keys:
            if key[2] and not store.has(key):
                missing.setdefault(key, list(key[2]))
        if not missing:
            return
        rows = list(missing.values())
        width = max(len(r) for r in rows)
        device = runner.inputs["input_ids"].device
        pad = int(self.stream.pad_id)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # (R, w)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)  # (R, w)
        state = SteerState(image_cols=torch.zeros(ids.shape, dtype=torch.bool, device=device), cost=runner.cost)
        with steering(state):
            out = runner.model(input_ids=ids, attention_mask=mask, position_ids=self.stream.text_positions(mask),
                               use_cache=True, logits_to_keep=1, **{cache_argument(runner.model): fresh_cache()})
        layers = cache_layers(output_cache(out))
        for j, (key, row) in enumerate(missing.items()):
            store.put(key, extract(layers, j, torch.arange(width - len(row), width)))


def plan_rows(runner, stream: SideStream) -> RowsPlan | None:
    """The 2B rows for decoding ``stream`` beside the runner's batch from the start (no cache: whole prompts; with
    sharing: from the stored image prefixes), or None where rows cannot be exact (the stream then runs apart)."""
    inputs, B = runner.inputs, runner.inputs["input_ids"].shape[0]
    sharing = runner.sharing
    if sharing is not None and isinstance(stream, TextOnlyStream) and stream.prefix_rows is None:
        return None
    main_cols = runner.image_cols  # (B, S)
    if isinstance(stream, ImageStream):
        side_ids, side_mask = inputs["input_ids"], inputs["attention_mask"]
        side_token_inputs = {k: inputs[k] for k in _per_token_keys(inputs)}
        side_cols = main_cols
    else:
        text = _TextPrefixes(runner, stream) if sharing is not None else None
        if text is not None and not text.fits:
            return None
        whole = _text_rows_whole(runner, stream) if text is None else text.ids_and_mask()
        if whole is None:
            return None
        side_ids, side_mask = whole
        # per-token inputs beside ids and mask (token types): what a forward without them gives a text token
        side_token_inputs = {k: torch.full_like(inputs[k], stream.token_inputs.get(k, 0))
                             for k in _per_token_keys(inputs)}
        side_cols = torch.zeros_like(main_cols)
    side_token_inputs.update(input_ids=side_ids, attention_mask=side_mask)
    kwargs = {k: _stack_rows(inputs[k], side_token_inputs[k]) for k in _per_token_keys(inputs)}  # (2B, S) each
    offsets = None
    if sharing is None:
        kwargs.update(_other_inputs_of_both(runner, stream, ()))
    else:
        kwargs.update(_other_inputs_of_both(runner, stream, runner.drop_on_continue))
        shared = runner._shared()
        main_layers = cache_layers(shared.image_prefixes())  # readies the model for the main rows only
        _, main_offsets = sharing.continuation_positions(inputs, sharing.prefix_cols)
        if isinstance(stream, ImageStream):
            side_layers = cache_layers(shared.image_prefixes(stream.tag, stream.vision))
            side_offsets = main_offsets
        else:
            side_layers = text.cache_layers(main_layers)
            side_offsets = None if main_offsets is None else torch.zeros_like(main_offsets)  # text positions
        kwargs[cache_argument(runner.model)] = build_cache(
            [(_stack_rows(mk, sk), _stack_rows(mv, sv)) for (mk, mv), (sk, sv) in zip(main_layers, side_layers)])
        offsets = None if main_offsets is None else _stack_rows(main_offsets, side_offsets)  # (2B, 1)
    return RowsPlan(kwargs=kwargs, image_cols=_stack_rows(main_cols, side_cols), offsets=offsets, main_rows=B)


class SideRowLogits:
    """Keeps the raw last logits of every forward of ``module`` (the one whose forward gives ``generate`` its
    logits; a forward hook while installed), so the stream can serve its side rows' (B, V) logits of the current
    step to the method's processors."""

    def __init__(self, module: torch.nn.Module, main_rows: int) -> None:
        self.module, self.main_rows = module, main_rows
        self.latest: torch.Tensor | None = None  # (2B, V)
        self._handle = None

    def __enter__(self) -> SideRowLogits:
        self._handle = self.module.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _keep(self, module, args, output) -> None:
        self.latest = output.logits[:, -1]  # (2B, V)

    def side(self) -> torch.Tensor:
        """(B, V) float32: the side rows' raw logits of the newest forward."""
        return self.latest[self.main_rows:].float()


class OnMainRows(LogitsProcessor):
    """A method's processor on the main rows only (the rows it would see without side rows)."""

    def __init__(self, processor: LogitsProcessor, main_rows: int) -> None:
        self.processor, self.main_rows = processor, main_rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B = self.main_rows
        main = self.processor(input_ids[:B], scores[:B])  # (B, V)
        return torch.cat([main.to(scores.dtype), scores[B:]], dim=0)  # (2B, V)


class FollowMain(LogitsProcessor):
    """Last: every side row takes the token its main row takes (greedy: the argmax of the main rows' final scores),
    so both streams are fed the same tokens; the main rows' scores stay as they are."""

    def __init__(self, main_rows: int) -> None:
        self.main_rows = main_rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B = self.main_rows
        chosen = scores[:B].argmax(-1)  # (B,)
        forced = torch.full_like(scores[B:], float("-inf"))  # (B, V)
        forced.scatter_(1, chosen[:, None], 0.0)
        return torch.cat([scores[:B], forced], dim=0)  # (2B, V)
