"""The public object: a loaded VLM that answers questions about images, optionally under a method, and reports the
first-token logits, confidence, cost and (on request) where it looked."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from visfocus.errors import VisfocusError
from visfocus.interventions import Batch, Method
from visfocus.interventions.base import Params
from visfocus.interventions.baseline import Baseline
from visfocus.models.base import Adapter
from visfocus.models.layout import RowLayout
from visfocus.models.loading import load_adapter
from visfocus.steer.prefix import PrefixStore
from visfocus.steer.trace import Trace

ImageLike = Image.Image | str | Path | np.ndarray


@dataclass
class Answer:
    text: str
    first_token: str
    first_token_logits: torch.Tensor  # (V,) float32, raw logits of the first generated token
    confidence: float  # max softmax probability of those logits over the whole vocabulary
    alpha_used: float | None
    # forward_passes, prefill_tokens, decode_tokens (per sequence), seconds, batch_size, shared_prefix_tokens (the
    # prompt tokens this row took from its image's shared prefix; 0 when prefixes were not shared)
    cost: dict[str, Any]
    layout: RowLayout | None = None
    trace: Trace | None = field(default=None, repr=False)
    extras: dict[str, Any] = field(default_factory=dict)  # the method's per-sample decisions (confidence, branch…)


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image, a path or an (H, W, 3) uint8 array; one clear error otherwise."""
    if image is None:
        raise VisfocusError("a question needs an image, got None")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise VisfocusError(f"an image array must be (H, W, 3); got shape {image.shape}")
        return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise VisfocusError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise VisfocusError(f"not a readable image file: {path} ({type(err).__name__})") from err
    raise VisfocusError(f"unsupported image type {type(image).__name__}; give a PIL image, a path or an array")


class VLM:
    """A loaded vision-language model. Build with ``visfocus.load``."""

    def __init__(self, model, processor, adapter: Adapter) -> None:
        self.model = model
        self.processor = processor
        self.adapter = adapter
        # image prefixes kept between calls (an entry lives while consecutive calls use it); ``keep_prompts=True``
        # also keeps whole prompts, for asking the same questions under other methods or parameters
        self.prefix_store = PrefixStore()

    @contextlib.contextmanager
    def keeping_prompts(self) -> Iterator[VLM]:
        """Within the block, also keep each answered prompt's unedited prefill, so that asking the same question
        about the same image again (under another method or other parameters) re-runs only its last prompt token.
        Exact for every method that shares prefixes; what is kept lives while consecutive calls use it."""
        before = self.prefix_store.keep_prompts
        self.prefix_store.keep_prompts = True
        try:
            yield self
        finally:
            self.prefix_store.keep_prompts = before

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def num_heads(self) -> int:
        """Query heads per decoder layer (the trace's H)."""
        return self.adapter.num_heads

    def answer(self, image: ImageLike, question: str, method: Method | None = None, *, max_new_tokens: int = 16,
               trace: bool = False, options: Sequence[str] | None = None, share_prefix: bool = True) -> Answer:
        """Answer one question about one image. ``options``: the answer words, for methods that use them."""
        return self.answer_batch([image], [question], method, max_new_tokens=max_new_tokens, trace=trace,
                                 options=[options] if options is not None else None, share_prefix=share_prefix)[0]

    def prepare(self, images: Sequence[ImageLike], questions: Sequence[str],
                options: Sequence[Sequence[str] | None] | None = None, *, record_trace: bool = False,
                share_prefix: bool = False) -> Batch:
        """Encode a batch for a method (``Method.run``): the images, questions and options as given, the adapter,
        each row's image-token layout, and the engine's runner over the encoded tensors. ``share_prefix``: lay the
        batch out to start from the image prefixes in ``self.prefix_store``."""
        return Batch.build(self.adapter, [load_image(im) for im in images], questions, options,
                           record_trace=record_trace, prefix_store=self.prefix_store if share_prefix else None)

    def answer_batch(self, images: Sequence[ImageLike], questions: Sequence[str], method: Method | None = None, *,
                     max_new_tokens: int = 16, trace: bool = False,
                     options: Sequence[Sequence[str] | None] | None = None,
                     share_prefix: bool = True) -> list[Answer]:
        """Answer a batch (one image per question). Same answers as one at a time.

        share_prefix: questions about one image (in this call, or in consecutive calls) share its prefill: the
        vision tower and the prompt up to the question run once per image (``visfocus.steer.prefix``); exact, and
        ignored for methods that cannot share (VEA). ``vlm.prefix_store.clear()`` forgets the stored prefixes."""
        if isinstance(questions, str) or len(images) != len(questions):
            raise VisfocusError(f"answer_batch needs one image per question: got {len(images)} images and "
                                f"{1 if isinstance(questions, str) else len(questions)} questions")
        if len(questions) == 0:
            return []
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise VisfocusError(f"a question must be a non-empty string, got {q!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise VisfocusError(f"max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
        if method is not None and not isinstance(method, Method):
            raise VisfocusError(f"method must come from visfocus.method(...), got {type(method).__name__}")
        pil = [load_image(im) for im in images]
        method = method or Baseline(Params())

        if options is not None and len(options) != len(pil):
            raise VisfocusError(f"options must give one entry per question: got {len(options)} for {len(pil)}")

        start = time.perf_counter()
        store = self.prefix_store if share_prefix and method.shares_prefix else None
        batch = Batch.build(self.adapter, pil, questions, options, record_trace=trace, prefix_store=store)
        try:
            result = method.run(batch, max_new_tokens=max_new_tokens)
        finally:
            if store is not None:
                store.end_call()  # keeps only what this call used (a call that does not share leaves it as it is)
        runner = batch.runner  # holds the cost and trace of every pass, also of a forked batch's
        runner.cost.seconds = time.perf_counter() - start
        final = (result.batch or batch).runner  # the batch the answer came from
        layouts = final.layouts

        gen = result.generation
        texts = self.processor.batch_decode(gen.new_tokens, skip_special_tokens=True)
        first = self.processor.batch_decode(gen.new_tokens[:, :1], skip_special_tokens=False)
        confidence = torch.softmax(gen.first_logits, dim=-1).max(-1).values  # (B,)
        full_trace = None
        if trace:
            ids = final.inputs["input_ids"]
            special = torch.isin(ids, torch.tensor(self.processor.tokenizer.all_special_ids, device=ids.device))
            full_trace = runner.recorder.finish(final.image_cols, final.inputs["attention_mask"], layouts,
                                                special_cols=special & ~final.image_cols)
        cost = {**runner.cost.as_dict(), "batch_size": len(pil)}
        shared = runner.sharing.prefix_lengths if runner.sharing is not None else [0] * len(pil)
        return [Answer(text=texts[b].strip(), first_token=first[b], first_token_logits=gen.first_logits[b].cpu(),
                       confidence=float(confidence[b]), alpha_used=result.alpha_used[b],
                       cost={**cost, "shared_prefix_tokens": shared[b]},
                       layout=layouts[b], trace=full_trace.row(b) if full_trace is not None else None,
                       extras=result.extras[b] if result.extras else {})
                for b in range(len(pil))]


def load(id_or_path: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
         trust_remote_code: bool = False, device_map: str | dict | None = None, max_memory: dict | None = None) -> VLM:
    """Load a VLM by Hub id or local path, with the visfocus attention function on its text decoder and SDPA on its
    vision tower. ``dtype="auto"`` keeps the checkpoint's; ``trust_remote_code`` is off unless asked for.
    ``device_map``/``max_memory``: shard a model too large for one device (transformers' own placement)."""
    adapter = load_adapter(id_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                           device_map=device_map, max_memory=max_memory)
    return VLM(adapter.model, adapter.processor, adapter)
