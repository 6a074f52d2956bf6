"""One supervised example per (image, question, answer), with the loss on the answer and the end-of-turn token only.

The labels are placed from the *processed* ``input_ids`` (after the processor expanded the image placeholder into N
image tokens), by matching the tokenized answer at the end of the sequence. Measuring the prompt length on the prompt
text instead (one placeholder token) is the survey script's bug (docs/methods.md §10.3): it supervises most image
tokens, the question and the assistant header."""

from __future__ import annotations

import torch
from PIL import Image

from visfocus.errors import VisfocusError

IGNORE_INDEX = -100
TEXT_KEYS = ("input_ids", "attention_mask", "labels")


def end_of_turn(adapter) -> str:
    """The token that closes the assistant's turn: ``<|im_end|>`` for Qwen, the tokenizer's eos (``</s>``) for LLaVA."""
    if adapter.family.startswith("qwen"):
        return "<|im_end|>"
    eos = adapter.processor.tokenizer.eos_token
    if not eos:
        raise VisfocusError(f"{adapter.family}: the tokenizer has no eos token to end the answer with")
    return eos


def answer_text(prompt: str, answer: str) -> str:
    """The answer as it continues the prompt: after a prompt ending in non-space ("ASSISTANT:") a space comes first."""
    return answer if not prompt or prompt[-1].isspace() else " " + answer


def build_example(adapter, image: Image.Image, question: str, answer: str) -> dict[str, torch.Tensor]:
    """Model inputs (batch of one: input_ids/attention_mask/labels (1, S) plus the processor's vision inputs) for the
    chat prompt + answer + end-of-turn; labels are IGNORE_INDEX everywhere but the answer and end tokens."""
    if not answer or not answer.strip():
        raise VisfocusError(f"an empty answer cannot be trained on (question: {question!r})")
    prompt = adapter.build_prompt(question)
    target = answer_text(prompt, answer) + end_of_turn(adapter)
    tokenizer = adapter.processor.tokenizer
    tokenizer.padding_side = "left"
    inputs = dict(adapter.processor(images=[image], text=[prompt + target], return_tensors="pt",
                                    **adapter.special_tokens_kwargs(prompt)))
    ids = inputs["input_ids"]  # (1, S), image tokens expanded
    target_ids = torch.tensor(tokenizer(target, add_special_tokens=False)["input_ids"], dtype=ids.dtype)  # (T,)
    n = target_ids.numel()
    if n == 0 or n >= ids.shape[1] or not torch.equal(ids[0, -n:], target_ids):
        raise VisfocusError(f"{adapter.family}: the tokenized answer {target!r} is not the tail of the processed "
                            "input ids (the tokenizer merges it with the prompt); cannot place the labels")
    labels = torch.full_like(ids, IGNORE_INDEX)  # (1, S)
    labels[0, -n:] = target_ids
    inputs["labels"] = labels
    return inputs


def _left_pad(rows: list[torch.Tensor], length: int, value: int) -> torch.Tensor:
    """Stack (1, S_i) rows into (B, length), padded on the left with ``value``."""
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for b, row in enumerate(rows):
        out[b, length - row.shape[1]:] = row[0]
    return out


def collate(examples: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A left-padded batch, vision inputs joined as the family's processor batches them.

    Qwen: pixel_values rows (sum of patches, D) concatenated, image_grid_thw (B, 3) stacked, mm_token_type_ids padded
    with 0. LLaVA: pixel_values (B, 3, H, W). LLaVA-NeXT: pixel_values (B, max_patches, 3, H, W), zero-padded as the
    processor does; image_sizes (B, 2) stacked (the model keeps only each image's real patches)."""
    if not examples:
        raise VisfocusError("cannot collate an empty batch")
    length = max(e["input_ids"].shape[1] for e in examples)
    batch = {"input_ids": _left_pad([e["input_ids"] for e in examples], length, pad_token_id),
             "attention_mask": _left_pad([e["attention_mask"] for e in examples], length, 0),
             "labels": _left_pad([e["labels"] for e in examples], length, IGNORE_INDEX)}
    if "mm_token_type_ids" in examples[0]:
        batch["mm_token_type_ids"] = _left_pad([e["mm_token_type_ids"] for e in examples], length, 0)
    if "image_grid_thw" in examples[0]:  # Qwen: patches of all images as rows of one matrix
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in examples])  # (sum P_i, D)
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in examples])  # (B, 3)
    elif "image_sizes" in examples[0]:  # LLaVA-NeXT: (1, P_i, 3, H, W) each, padded to max P
        most = max(e["pixel_values"].shape[1] for e in examples)
        pixels = [e["pixel_values"] for e in examples]
        padded = [torch.cat([p, p.new_zeros((1, most - p.shape[1], *p.shape[2:]))], dim=1) for p in pixels]
        batch["pixel_values"] = torch.cat(padded)  # (B, most, 3, H, W)
        batch["image_sizes"] = torch.cat([e["image_sizes"] for e in examples])  # (B, 2)
    else:
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in examples])  # (B, 3, H, W)
    known = set(batch)
    extra = sorted(set(examples[0]) - known)
    if extra:
        raise VisfocusError(f"collate does not know how to batch the processor outputs {', '.join(extra)}")
    return batch
