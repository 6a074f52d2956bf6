"""What a method receives: one prepared batch of questions about images, built in one place (``Batch.build``).

A method reads the batch as the user gave it (images, questions, answer options), the model family's adapter and
each row's image-token layout, and drives the engine through ``batch.runner`` (``prefill()``, ``generate(...)``).
``batch.fork(...)`` prepares a changed batch (other images or questions) whose cost and trace add to this one's;
``batch.text_only_stream()`` and ``batch.image_stream(...)`` the side streams a contrastive method decodes beside it
(``visfocus.steer.streams``).
Built with a ``PrefixStore``, the batch shares image prefixes (``visfocus.steer.prefix``): the rows are laid out so
that every prefix ends at one column, and ``runner.prefill()`` / ``runner.generate(...)`` start from stored prefixes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from visfocus.models.base import Adapter
from visfocus.models.layout import RowLayout
from visfocus.steer.prefix import PrefixStore, Sharing, image_fingerprint, split_layout
from visfocus.steer.runner import Runner
from visfocus.steer.streams import ImageStream, TextOnlyStream


def _rows(options: Sequence[Sequence[str] | None] | None, size: int) -> list[tuple[str, ...] | None]:
    return [tuple(o) if o is not None else None for o in options] if options is not None else [None] * size


@dataclass
class Batch:
    """One prepared batch of B questions, one image each (left padded).

    images: the B RGB images as given. questions: the B questions as given (no chat markup, no image placeholder).
    options: per row, the answer words (e.g. ``("left", "right", "on", "under")``) or None when the caller gave none.
    adapter: the model family — processor and tokenizer, decoder layers, final norm and LM head, prompt building,
    position ids. layouts: per row, the image-token grids and the pixel box of every image token.
    runner: the engine over the encoded tensors — ``inputs`` (the processor's output on the model's device),
    ``image_cols`` ((B, S) bool image-token columns), ``prefill()``, ``generate(edits, ...)``, ``cost`` and the
    trace recorder.
    """

    images: list[Image.Image]
    questions: list[str]
    options: list[tuple[str, ...] | None]
    adapter: Adapter
    layouts: list[RowLayout]
    runner: Runner

    @classmethod
    def build(cls, adapter: Adapter, images: Sequence[Image.Image], questions: Sequence[str],
              options: Sequence[Sequence[str] | None] | None = None, *, record_trace: bool = False,
              prefix_store: PrefixStore | None = None, new_tokens: int | None = None,
              prefix_split: str = "template") -> Batch:
        """Encode ``images`` and ``questions`` with the adapter's processor and prepare the engine's runner.
        ``prefix_store``: share image prefixes through it (None: every row is prefilled whole) where the adapter
        finds sharing exact for decoding up to ``new_tokens`` tokens (None: not known in advance); the prefixes end
        where ``prefix_split`` says (``Method.prefix_split``)."""
        inputs, sharing = cls._encode(adapter, images, questions, prefix_store, new_tokens, prefix_split)
        layouts = adapter.layouts(inputs, list(images))
        runner = Runner(adapter.model, inputs, adapter.image_cols(inputs), drop_on_continue=adapter.drop_on_continue,
                        prefill_position_ids=adapter.prefill_position_ids(inputs), layouts=layouts,
                        record_trace=record_trace, sharing=sharing, decoder_layers=adapter.decoder_layers(),
                        rerun_last_token=not adapter.prefix_lm,
                        continuation_positions=adapter.continuation_positions,
                        set_decode_offsets=adapter.set_decode_offsets, stream_rows=adapter.side_stream_rows,
                        logits_module=adapter.logits_module)
        return cls(images=list(images), questions=list(questions), options=_rows(options, len(images)),
                   adapter=adapter, layouts=layouts, runner=runner)

    @staticmethod
    def _encode(adapter: Adapter, images: Sequence[Image.Image], questions: Sequence[str],
                prefix_store: PrefixStore | None, new_tokens: int | None = None,
                prefix_split: str = "template") -> tuple[dict, Sharing | None]:
        """The processor's tensors on the model's device, laid out for prefix sharing when a store is given."""
        device = adapter.model.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                  for k, v in adapter.encode(list(images), list(questions)).items()}
        if prefix_store is None:
            return inputs, None
        mask = inputs["attention_mask"].bool()
        lengths = [adapter.shared_prefix_length(inputs["input_ids"][b][mask[b]].tolist(), prefix_split)
                   for b in range(mask.shape[0])]
        laid_out, prefix_cols = split_layout(inputs, lengths, adapter.image_token_id)
        if not adapter.shares_prefix_exactly(laid_out, new_tokens):
            return inputs, None
        inputs = laid_out
        keys = [image_fingerprint(im.mode, im.size, im.tobytes()) for im in images]
        return inputs, Sharing(store=prefix_store, prefix_lengths=lengths, image_keys=keys, prefix_cols=prefix_cols,
                               select_vision=adapter.select_vision,
                               continuation_positions=adapter.continuation_positions,
                               set_decode_offsets=adapter.set_decode_offsets)

    def fork(self, images: Sequence[Image.Image] | None = None, questions: Sequence[str] | None = None) -> Batch:
        """The same batch with other images and/or questions (same options), the ``fork`` side stream: cost and
        trace add to this batch's, and it decodes as this batch does (sampling settings, teacher forcing)."""
        images = list(images if images is not None else self.images)
        questions = list(questions if questions is not None else self.questions)
        inputs, _ = self._encode(self.adapter, images, questions, None)
        layouts = self.adapter.layouts(inputs, images)
        runner = self.runner.fork(inputs, self.adapter.image_cols(inputs),
                                  drop_on_continue=self.adapter.drop_on_continue,
                                  prefill_position_ids=self.adapter.prefill_position_ids(inputs), layouts=layouts,
                                  decoder_layers=self.adapter.decoder_layers())
        return Batch(images=images, questions=questions, options=list(self.options), adapter=self.adapter,
                     layouts=layouts, runner=runner)

    def text_only_stream(self) -> TextOnlyStream:
        """The ``text_only`` side stream: each row's chat prompt with the image taken out (``adapter.text_only_ids``
        of its real tokens), left padded, with the family's text positions."""
        ids, mask = self.runner.inputs["input_ids"], self.runner.inputs["attention_mask"].bool()  # (B, S)
        prompts = [ids[b][mask[b]].tolist() for b in range(ids.shape[0])]
        rows = [self.adapter.text_only_ids(prompt) for prompt in prompts]
        sharing = self.runner.sharing
        prefix_rows = None if sharing is None else [  # the text of each row's shared image prefix
            self.adapter.text_only_ids(prompt[:length]) for prompt, length in zip(prompts, sharing.prefix_lengths)]
        pad = self.adapter.processor.tokenizer.pad_token_id
        return self.runner.side_stream(TextOnlyStream(self.runner, rows, 0 if pad is None else int(pad),
                                                      self.adapter.text_position_ids, prefix_rows,
                                                      self.adapter.text_row_token_inputs))

    def image_stream(self, vision: dict, tag: str) -> ImageStream:
        """The ``other_image`` side stream: this batch's prompts on other vision inputs (e.g. noised pixels), named
        ``tag`` in the prefix store."""
        return self.runner.side_stream(ImageStream(self.runner, vision, tag, self.adapter.decode_position_ids))

    @property
    def size(self) -> int:
        return len(self.questions)

    @property
    def num_layers(self) -> int:
        """Decoder layers of the language model."""
        return self.adapter.num_layers
