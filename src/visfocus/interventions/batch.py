"""What a method receives: one prepared batch of questions about images, built in one place (``Batch.build``).

A method reads the batch as the user gave it (images, questions, answer options), the model family's adapter and
each row's image-token layout, and drives the engine through ``batch.runner`` (``prefill()``, ``generate(...)``).
``batch.fork(...)`` prepares a changed batch (other images or questions) whose cost and trace add to this one's.
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
              share_with: Batch | None = None, prefix_store: PrefixStore | None = None) -> Batch:
        """Encode ``images`` and ``questions`` with the adapter's processor and prepare the engine's runner.
        ``share_with``: add this batch's cost and trace to that batch's, and decode as it does (its runner's
        generation defaults, e.g. sampling, and teacher forcing). ``prefix_store``: share image prefixes
        through it (None: every row is prefilled whole)."""
        device = adapter.model.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                  for k, v in adapter.encode(list(images), list(questions)).items()}
        sharing = None
        if prefix_store is not None:
            mask = inputs["attention_mask"].bool()
            lengths = [adapter.shared_prefix_length(inputs["input_ids"][b][mask[b]].tolist())
                       for b in range(mask.shape[0])]
            inputs, prefix_cols = split_layout(inputs, lengths, adapter.image_token_id)
            keys = [image_fingerprint(im.mode, im.size, im.tobytes()) for im in images]
            sharing = Sharing(store=prefix_store, prefix_lengths=lengths, image_keys=keys, prefix_cols=prefix_cols,
                              select_vision=adapter.select_vision,
                              continuation_positions=adapter.continuation_positions)
        layouts = adapter.layouts(inputs, list(images))
        runner = Runner(adapter.model, inputs, adapter.image_cols(inputs), drop_on_continue=adapter.drop_on_continue,
                        prefill_position_ids=adapter.prefill_position_ids(inputs), layouts=layouts,
                        record_trace=record_trace, sharing=sharing)
        if share_with is not None:
            first = share_with.runner
            runner.cost, runner.recorder = first.cost, first.recorder
            runner.generation_defaults, runner.forced = dict(first.generation_defaults), first.forced
        rows = [tuple(o) if o is not None else None for o in options] if options is not None else [None] * len(images)
        return cls(images=list(images), questions=list(questions), options=rows, adapter=adapter, layouts=layouts,
                   runner=runner)

    def fork(self, images: Sequence[Image.Image] | None = None, questions: Sequence[str] | None = None) -> Batch:
        """The same batch with other images and/or questions (same options); cost and trace add to this batch's, and
        it decodes as this batch does (sampling settings, teacher forcing)."""
        return Batch.build(self.adapter, images if images is not None else self.images,
                           questions if questions is not None else self.questions, self.options,
                           record_trace=self.runner.recorder is not None, share_with=self)

    @property
    def size(self) -> int:
        return len(self.questions)

    @property
    def num_layers(self) -> int:
        """Decoder layers of the language model."""
        return self.adapter.num_layers
