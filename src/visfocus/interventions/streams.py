"""Side streams a contrastive method decodes beside ``generate``: the same questions on other inputs, with their own
KV cache, fed the tokens ``generate`` chooses. ``TextOnlyStream`` is the batch's chat prompts with the image taken out
(PAI's classifier-free guidance and M3ID's unconditional model): no image tokens, plain text positions, and never an
edit or a trace (each call runs under a plain steering state of its own)."""

from __future__ import annotations

import torch

from visfocus.interventions.batch import Batch
from visfocus.steer.compat import cache_argument, output_cache
from visfocus.steer.context import SteerState, steering


class TextOnlyStream:
    """The text-only prompts of ``batch`` (``adapter.text_only_ids`` of each row's real tokens), left padded.
    ``logits(input_ids)``: the (B, V) float32 next-token logits after ``input_ids`` (generate's (B, S + k)
    sequences): the first call runs the text-only prefill; each later call feeds the newest token."""

    def __init__(self, batch: Batch) -> None:
        self.runner, self.adapter = batch.runner, batch.adapter
        ids, mask = self.runner.inputs["input_ids"], self.runner.inputs["attention_mask"].bool()  # (B, S)
        rows = [self.adapter.text_only_ids(ids[b][mask[b]].tolist()) for b in range(ids.shape[0])]
        width = max(len(row) for row in rows)
        pad = self.adapter.processor.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        self.input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=ids.device)  # (B, S_u)
        self.attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows],
                                           device=ids.device)  # (B, S_u)
        self.cache = None
        self.fed = 0  # generated tokens fed so far

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": self.attention_mask, "position_ids": position_ids,
                  "use_cache": True, "logits_to_keep": 1}
        if self.cache is not None:
            kwargs[cache_argument(self.runner.model)] = self.cache
        no_image = torch.zeros(self.input_ids.shape, dtype=torch.bool, device=self.input_ids.device)  # (B, S_u)
        with steering(SteerState(image_cols=no_image, cost=self.runner.cost)):  # a plain forward: no edit, no trace
            out = self.runner.model(**kwargs)
        self.cache = output_cache(out)
        return out.logits[:, -1].float()  # (B, V)

    @torch.inference_mode()
    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.runner.image_cols.shape[1]  # tokens generate has chosen so far
        if self.cache is None:  # the text-only prompt's prefill
            if generated != 0:
                raise RuntimeError("a text-only stream must start at the first decoding step")
            return self._forward(self.input_ids, self.adapter.text_position_ids(self.attention_mask))
        if generated != self.fed + 1:
            raise RuntimeError(f"the text-only stream is at token {self.fed}, generate at {generated}")
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], 1)  # (B, 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)  # (B, S_u + k)
        self.fed += 1
        positions = self.adapter.text_position_ids(self.attention_mask)[..., -1:]  # (B, 1) or (3, B, 1)
        return self._forward(input_ids[:, -1:], positions)
