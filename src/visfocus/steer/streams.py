"""Side streams: another version of the batch's prompts that a contrastive method decodes beside ``generate`` — the
prompt with no image (PAI's contrast, M3ID), or on other pixels (VCD's noised image). A stream has its own KV cache
and positions, is fed the tokens ``generate`` chooses, runs plain forwards (no edit, never recorded by the trace) and
adds its work to the runner's cost. An image stream starts from the shared image prefix of its own pixels when the
batch shares prefixes. Streams are built by ``Runner.side_stream`` (which checks the method declared them).
``Runner.generate`` decodes a stream as rows of its own batch where that is exact (``steer.rows``: one forward per
token for both streams; ``row_logits`` then serves the side rows' logits); else apart, with the forwards below."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from visfocus.steer.compat import cache_argument, fresh_cache, output_cache
from visfocus.steer.context import SteerState, steering

STREAMS = {
    "text_only": "the chat prompt with the image taken out: plain text positions, its own cache",
    "other_image": "the same prompt on other pixels (e.g. a noised image): its own cache and image prefix",
    "fork": "the batch again with other images or questions (e.g. a highlighted image), cost and trace added",
}


class SideStream:
    """``logits(input_ids)``: the (B, V) float32 next-token logits of this stream after ``input_ids``, generate's
    (B, S + k) sequences so far: the first call (k = 0) runs the stream's prompt, each later call feeds the newest
    token (one call per decoding step, in order)."""

    kind: ClassVar[str]

    def __init__(self, runner) -> None:
        self.runner = runner
        self.cache = None
        self.fed = 0  # generated tokens fed so far
        # set while the stream decodes as rows of generate's own batch (``steer.rows``): serves their raw logits
        self.row_logits = None

    @property
    def started(self) -> bool:
        """Whether the stream has run (apart, with its own cache) or is running as rows."""
        return self.cache is not None or self.row_logits is not None

    @torch.inference_mode()
    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.runner.prompt_len  # tokens generate has chosen so far
        if self.row_logits is not None:  # the side rows of generate's forward that chose this step's scores
            if generated != self.fed:
                raise RuntimeError(f"the {self.kind} rows are at token {self.fed}, generate at {generated}")
            self.fed += 1
            return self.row_logits.side()  # (B, V)
        if self.cache is None:
            if generated != 0:
                raise RuntimeError(f"a {self.kind} stream must start at the first decoding step")
            return self._start()
        if generated != self.fed + 1:
            raise RuntimeError(f"the {self.kind} stream is at token {self.fed}, generate at {generated}")
        self.fed += 1
        return self._step(input_ids[:, -1:])

    def _start(self) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, token: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward(self, kwargs: dict, image_cols: torch.Tensor) -> torch.Tensor:
        """A plain forward (no edit, no trace) continuing this stream's cache; the (B, V) float32 last logits."""
        kwargs[cache_argument(self.runner.model)] = fresh_cache() if self.cache is None else self.cache
        with steering(SteerState(image_cols=image_cols, cost=self.runner.cost)):
            out = self.runner.model(**kwargs, use_cache=True, logits_to_keep=1)
        self.cache = output_cache(out)
        return out.logits[:, -1].float()  # (B, V)


class TextOnlyStream(SideStream):
    """The batch's prompts with the image taken out. rows: per batch row, its text-only prompt ids (no padding);
    text_positions(mask): the position ids of a text-only (B, S_u) attention mask ((B, S_u) or (3, B, S_u)).
    prefix_rows: per row, the text-only ids of its shared image prefix (a sharing batch; ``steer.rows`` keeps the
    tokens a text-only row shares with them in the prefix store), else None. token_inputs: the value of each
    per-token input beside ids and mask (token types) that these rows carry when they decode as rows of the
    prompt's batch, as the model treats a forward without it (unlisted: 0)."""

    kind = "text_only"

    def __init__(self, runner, rows: list[list[int]], pad_id: int,
                 text_positions: Callable[[torch.Tensor], torch.Tensor],
                 prefix_rows: list[list[int]] | None = None, token_inputs: dict[str, int] | None = None) -> None:
        super().__init__(runner)
        self.rows_ids, self.pad_id, self.prefix_rows = rows, pad_id, prefix_rows
        self.token_inputs = dict(token_inputs or {})
        device = runner.inputs["input_ids"].device
        width = max(len(row) for row in rows)
        self.input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], device=device)  # (B, S_u)
        self.attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows],
                                           device=device)  # (B, S_u)
        self.text_positions = text_positions

    def _kwargs(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> dict:
        return {"input_ids": input_ids, "attention_mask": self.attention_mask, "position_ids": position_ids}

    def _no_image(self) -> torch.Tensor:
        return torch.zeros(self.input_ids.shape, dtype=torch.bool, device=self.input_ids.device)  # (B, S_u)

    def _start(self) -> torch.Tensor:
        return self._forward(self._kwargs(self.input_ids, self.text_positions(self.attention_mask)), self._no_image())

    def _step(self, token: torch.Tensor) -> torch.Tensor:
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], 1)  # (B, 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)  # (B, S_u + k)
        positions = self.text_positions(self.attention_mask)[..., -1:]  # (B, 1) or (3, B, 1)
        return self._forward(self._kwargs(token, positions), self._no_image())


class ImageStream(SideStream):
    """The runner's prompts on other vision inputs (``vision``, e.g. noised ``pixel_values``), named ``tag`` in the
    prefix store. decode_positions(inputs, mask): the position ids of the newest column of a (B, S + k) mask."""

    kind = "other_image"

    def __init__(self, runner, vision: dict, tag: str,
                 decode_positions: Callable[[dict, torch.Tensor], torch.Tensor]) -> None:
        super().__init__(runner)
        self.vision, self.tag, self.decode_positions = vision, tag, decode_positions

    def _start(self) -> torch.Tensor:
        prefix = self.runner.prefill(vision=self.vision, tag=self.tag)  # from its own shared prefix when sharing
        self.cache = prefix.cache
        return prefix.first_logits  # (B, V)

    def _step(self, token: torch.Tensor) -> torch.Tensor:
        r = self.runner
        prompt_mask = r.inputs["attention_mask"]  # (B, S)
        new = prompt_mask.new_ones(prompt_mask.shape[0], self.fed)  # (B, k)
        mask = torch.cat([prompt_mask, new], dim=1)  # (B, S + k)
        kwargs = {"input_ids": token, "attention_mask": mask,
                  "position_ids": self.decode_positions(r.inputs, mask)}  # (B, 1) or (3, B, 1)
        return self._forward(kwargs, r.image_cols)
