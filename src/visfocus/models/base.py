"""The model-family adapter: everything the engine must know about one VLM family, stated once. A family is a small
subclass of ``Adapter`` registered with ``@register_adapter``; it states only what differs."""

from __future__ import annotations

import inspect
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from visfocus.errors import VisfocusError
from visfocus.models.layout import ImageView, RowLayout, contiguous_segments

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``cls`` the adapter for its ``model_types``."""
    for model_type in cls.model_types:
        ADAPTERS[model_type] = cls
    return cls


def adapter_for(model_type: str) -> type[Adapter]:
    if model_type not in ADAPTERS:
        raise VisfocusError(f"unsupported model architecture '{model_type}'; visfocus supports: "
                            f"{', '.join(sorted(ADAPTERS))} (`visfocus list models` says why others are not)")
    return ADAPTERS[model_type]


class Adapter:
    """Base adapter: chat prompts through the processor's template, image-token positions from ``input_ids``."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    checkpoint: ClassVar[str]  # the family's smallest public checkpoint on the Hub (README, `visfocus list models`)
    # Vision inputs left out when decoding continues from a cache (the image is already in it).
    drop_on_continue: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes", "image_grid_thw")
    # Per-token inputs beside the ids and the mask, and the value ``generate`` gives a token it appends after the
    # prompt (a full forward over the prompt and fed tokens must give them the same; unlisted ones: 0).
    appended_token_inputs: ClassVar[dict[str, int]] = {}
    # The whole prompt attends bidirectionally (a prefix-LM): an edit of one prompt row reaches the rows before it
    # in later layers, so the engine never re-runs the last prompt token alone on a cached prompt.
    prefix_lm: ClassVar[bool] = False
    # Why this family's image tokens cover no part of the image in particular (query tokens): then ``views`` gives
    # none, and everything that needs a token grid (image maps, heatmaps, boxes) refuses with this reason. None: a grid.
    no_grid_reason: str | None = None
    # A contrastive method's side stream (text-only prompt, other pixels) may decode as rows of the main batch
    # (``steer.rows``: one forward per token for both); False where the family's rows are not exact that way.
    side_stream_rows: ClassVar[bool] = True
    # Per-token inputs beside the ids and the mask that a row of plain text carries in a batch, as the model treats
    # a forward without them (a text-only side stream's rows beside the prompt's, ``steer.rows``; unlisted ones: 0).
    text_row_token_inputs: ClassVar[dict[str, int]] = {}

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def num_heads(self) -> int:
        """Query heads per decoder layer."""
        return int(self.model.config.get_text_config().num_attention_heads)

    # --- the text decoder -------------------------------------------------------------------------------------
    @property
    def logits_module(self) -> torch.nn.Module:
        """The module whose forward gives ``generate`` each step's logits (``steer.rows`` reads a side stream's rows
        there): the model itself, unless its ``generate`` runs another module's."""
        return self.model

    @property
    def text_model(self):
        """The language model inside the VLM (decoder layers, final norm, rotary embedding), where the model says it
        is (``get_decoder``: ``language_model``, SmolVLM's ``text_model``)."""
        return self.model.get_decoder()

    def decoder_layers(self) -> list:
        return list(self.text_model.layers)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.text_model.norm(hidden)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits for final-normed hidden states (..., D) -> (..., V), as its forward makes them: the
        output embeddings, times ``logit_scale`` (Cohere), soft-capped where the text config says so
        (``final_logit_softcapping``: Gemma 2, PaliGemma 2): cap · tanh(logits / cap)."""
        logits = self.model.get_output_embeddings()(hidden)  # (..., V)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        cap = self._applied_text_setting("final_logit_softcapping")
        return logits if cap is None else torch.tanh(logits / cap) * cap

    @cached_property
    def logit_scale(self) -> float:
        """The factor the model's forward multiplies the LM head's logits by: the text config's ``logit_scale``
        (Cohere) where the forward applies it, else 1."""
        scale = self._applied_text_setting("logit_scale")
        return 1.0 if scale is None else float(scale)

    def _applied_text_setting(self, name: str) -> float | None:
        """The text config's ``name`` if set and the model's forward applies it (its source names it: transformers
        5.23's Aya Vision ignores ``logit_scale``, Gemma 3 ignores ``final_logit_softcapping``), else None."""
        value = getattr(self.model.config.get_text_config(), name, None)
        if value is None:
            return None
        try:
            applies = name in inspect.getsource(type(self.model).forward)
        except (OSError, TypeError):  # no source (compiled or generated code): trust the config
            applies = True
        return float(value) if applies else None

    def prompt_position_ids(self, inputs: dict) -> torch.Tensor:
        """The RoPE positions of the prompt's tokens: (B, S); M-RoPE families (3, B, S)."""
        return self.prefill_position_ids(inputs)

    def rotate(self, x: torch.Tensor, position_shift: torch.Tensor) -> torch.Tensor:
        """Move post-RoPE vectors x (B, H, K, D) by ``position_shift`` positions ((B, K), or (3, B, K) for M-RoPE):
        RoPE rotations compose, so R(p + s)·v = R(s)·R(p)·v. Exact for the default (unscaled) RoPE."""
        cos, sin = self.text_model.rotary_emb(x, position_shift)  # (B, K, D) each
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, K, D)
        half = x.shape[-1] // 2
        rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # (B, H, K, D)
        return x * cos + rotated_half * sin

    # --- prompts -----------------------------------------------------------------------------------------------
    def build_prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @cached_property
    def end_of_turn(self) -> str:
        """The token that closes an assistant answer: the special token the chat template writes right after one
        (``<|im_end|>``, ``<end_of_turn>``), else the tokenizer's eos (LLaVA's ``</s>``); "" if neither exists."""
        tokenizer = self.processor.tokenizer
        answer = "yes"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        try:
            text = self.processor.apply_chat_template(messages, tokenize=False)
        except Exception:  # noqa: BLE001 - no chat template, or one without assistant turns: the eos
            text = ""
        after = text[text.rfind(answer) + len(answer):].lstrip(" ") if answer in text else ""
        specials = sorted({*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}, key=len, reverse=True)
        return next((t for t in specials if t and after.startswith(t)), tokenizer.eos_token or "")

    def encode(self, images: list[Image.Image], questions: list[str]) -> dict:
        """Left-padded model inputs for one image per question."""
        return self.encode_prompts(images, [self.build_prompt(q) for q in questions])

    def encode_prompts(self, images: list[Image.Image], prompts: list[str]) -> dict:
        """Left-padded model inputs for one image per chat prompt (``build_prompt``'s text, or it with an answer
        after it for training): the processor's call, its vision inputs batched as it batches them."""
        self.processor.tokenizer.padding_side = "left"
        return dict(self.processor(images=images, text=prompts, padding=True, return_tensors="pt",
                                   **self.special_tokens_kwargs(prompts[0])))

    def encode_answers(self, images: list[Image.Image], prompts: list[str],
                       answers: list[str]) -> tuple[dict, list[str]]:
        """Training inputs: left-padded chat prompts each followed by its answer and ``end_of_turn``, and per row the
        text that must end its ids (the supervised tokens). After a prompt ending in non-space ("ASSISTANT:") the
        answer starts with a space."""
        targets = [(a if not p or p[-1].isspace() else " " + a) + self.end_of_turn for p, a in zip(prompts, answers)]
        return self.encode_prompts(images, [p + t for p, t in zip(prompts, targets)]), targets

    def special_tokens_kwargs(self, prompt: str) -> dict:
        """Tokenizer options for a chat prompt: a template that writes the BOS token itself (Cohere) gets no second
        one from the tokenizer, as the processor's own ``apply_chat_template`` decides."""
        bos = self.processor.tokenizer.bos_token
        return {"add_special_tokens": False} if bos is not None and prompt.startswith(bos) else {}

    def prefill_position_ids(self, inputs: dict) -> torch.Tensor | None:
        """The positions ``generate`` uses for a left-padded prompt (plain forward would use arange)."""
        mask = inputs["attention_mask"]  # (B, S)
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, S)

    def decode_position_ids(self, inputs: dict, attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions of the newest token when decoding goes on by hand (the ones ``generate`` gives it).

        attention_mask: (B, S + k) the prompt's mask extended by the k tokens fed so far, the newest last.
        Returns (B, 1) here; M-RoPE families return (3, B, 1)."""
        return attention_mask.long().cumsum(-1)[:, -1:] - 1  # (B, 1)

    # --- the prompt without its image (text-only streams: PAI's contrast, M3ID) ---------------------------------
    def text_only_ids(self, row_ids: list[int]) -> list[int]:
        """A prompt's token ids with its image taken out: the chat prompt the model would get with no image."""
        return [t for t in row_ids if t != self.image_token_id]

    def text_position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions of a left-padded text-only prompt (no image): (B, S); M-RoPE families (3, B, S), the text
        position on every axis."""
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # (B, S)

    # --- sharing the image prefix between questions ------------------------------------------------------------
    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """The template tokens between the image and the question, the same for every question (found by building
        prompts for two questions that differ from their first character)."""
        tokenizer = self.processor.tokenizer
        first, second = (tokenizer(self.build_prompt(q), add_special_tokens=False)["input_ids"] for q in ("A", "Z"))
        if self.image_token_id not in first:
            return ()
        start = len(first) - first[::-1].index(self.image_token_id)  # just after the image placeholder
        shared = 0
        while start + shared < min(len(first), len(second)) and first[start + shared] == second[start + shared]:
            shared += 1
        return tuple(first[start:start + shared])

    def shared_prefix_length(self, row_ids: list[int], split: str = "template") -> int:
        """How many leading tokens of a prompt (its real tokens, no padding) every question about the same image
        shares: up to and including the last image token, then (``split="template"``) the template text that
        follows it, or (``split="image"``) nothing more, for a method that edits every row after the image; at
        least one token is left to the question."""
        last = len(row_ids) - 1 - row_ids[::-1].index(self.image_token_id)
        shared = 0
        for expected in self.template_after_image if split == "template" else ():
            if last + 1 + shared >= len(row_ids) or row_ids[last + 1 + shared] != expected:
                break
            shared += 1
        return min(last + 1 + shared, len(row_ids) - 1)

    def shares_prefix_exactly(self, inputs: dict, new_tokens: int | None = None) -> bool:
        """Whether the prompts of ``inputs`` (laid out for sharing: every row's image prefix ends at one column, the
        question after a gap of masked padding) give the same answers from a stored image prefix as whole, while
        decoding adds up to ``new_tokens`` tokens (None: a number not known in advance). True for causal masks; a
        family whose image tokens see the question (prefix-LM) says False, and one whose sliding window could span
        the gap says so when it does. False: the batch is prefilled whole.

        Here: exact unless the text model has sliding-window layers (its config's ``sliding_window``, on the layers
        ``layer_types`` marks ``sliding_attention``, or on all when it names none) and some row has a gap: a window
        counts columns, so such a row would see its image prefix from further away than its positions say. With
        gaps, exact only when the laid-out width plus ``new_tokens`` fits in the window (it then binds nowhere)."""
        if self.prefix_lm:  # the image tokens attend to the question: a stored image prefix cannot be reused
            return False
        text = self.model.config.get_text_config()
        window = getattr(text, "sliding_window", None)
        layer_types = getattr(text, "layer_types", None)
        if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
            return True
        mask = inputs["attention_mask"].bool()  # (B, S)
        started = mask.long().cumsum(-1) > 0  # (B, S): from each row's first real token on
        gapped = bool((started & ~mask).any())
        return not gapped or (new_tokens is not None and mask.shape[1] + new_tokens <= int(window))

    def select_vision(self, inputs: dict, rows: list[int]) -> dict:
        """The vision inputs of the images of batch rows ``rows`` (one image per row)."""
        batch = inputs["input_ids"].shape[0]
        return {k: inputs[k][rows] for k in self.drop_on_continue
                if isinstance(inputs.get(k), torch.Tensor) and inputs[k].shape[0] == batch}

    def continuation_positions(self, inputs: dict, start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pure: the position ids of columns ``start``.. for a forward on a cache that holds columns 0..start−1,
        (B, S − start), and the per-row decode offsets a prefill of these rows would leave in the model for later
        decoding steps (None here; M-RoPE families return (3, B, S − start) and their (B, 1) offsets). Hand the
        offsets to ``set_decode_offsets`` before decoding on from such a cache."""
        return self.prefill_position_ids(inputs)[:, start:], None

    def set_decode_offsets(self, offsets: torch.Tensor | None) -> None:
        """Ready the model to decode on from a cache it did not prefill itself: store the per-row position offsets
        that ``continuation_positions`` returned, as a prefill would have (nothing to store for 1-D RoPE)."""

    # --- image tokens ------------------------------------------------------------------------------------------
    def image_cols(self, inputs: dict) -> torch.Tensor:
        """(B, S) bool: the key columns that hold image tokens (left padding shifts them per row)."""
        return inputs["input_ids"] == self.image_token_id

    def layouts(self, inputs: dict, images: list[Image.Image]) -> list[RowLayout]:
        """One ``RowLayout`` per batch row; image k of the batch is the k-th image segment in row order."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        out, image_index = [], 0
        for b in range(ids.shape[0]):
            row_ids = ids[b][mask[b]].cpu().numpy()
            positions = np.nonzero(row_ids == self.image_token_id)[0]
            layout = RowLayout(image_positions=positions, no_grid=self.no_grid_reason)
            for segment in self.image_segments(row_ids, positions):
                image = images[image_index]
                layout.images.append(self.views(inputs, image_index, segment, (image.width, image.height)))
                image_index += 1
            out.append(layout)
        return out

    def image_segments(self, row_ids: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """The image-token positions of one row (its real tokens, no padding) split into one array per image: here
        each run of consecutive positions is one image. Families whose image tokens are interrupted by marker tokens
        (tile separators, row breaks) split by those markers instead."""
        return contiguous_segments(positions)

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        raise NotImplementedError

    @staticmethod
    def _check_count(segment: np.ndarray, expected: int, family: str) -> None:
        if len(segment) != expected:
            raise RuntimeError(f"{family}: found {len(segment)} image tokens for an image whose grid implies "
                               f"{expected}; the processor and the model config disagree")
