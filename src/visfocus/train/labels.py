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


def end_of_turn(adapter) -> str:
    """The token that closes the assistant's turn (``Adapter.end_of_turn``: what the chat template writes after an
    answer, else the tokenizer's eos)."""
    eos = adapter.end_of_turn
    if not eos:
        raise VisfocusError(f"{adapter.family}: neither the chat template nor the tokenizer names a token that ends "
                            "the answer")
    return eos


def answer_text(prompt: str, answer: str) -> str:
    """The answer as it continues the prompt: after a prompt ending in non-space ("ASSISTANT:") a space comes first."""
    return answer if not prompt or prompt[-1].isspace() else " " + answer


def build_batch(adapter, images: list[Image.Image], questions: list[str],
                answers: list[str]) -> dict[str, torch.Tensor]:
    """Model inputs for a left-padded batch of chat prompt + answer + end-of-turn, made by the family's own processor
    call (``Adapter.encode_prompts``: its vision inputs batched as it batches them), with ``labels`` (B, S):
    IGNORE_INDEX everywhere but each row's answer and end tokens."""
    if not len(images) == len(questions) == len(answers) or not images:
        raise VisfocusError(f"a training batch needs one image, question and answer per row, got {len(images)}, "
                            f"{len(questions)} and {len(answers)}")
    for question, answer in zip(questions, answers):
        if not answer or not answer.strip():
            raise VisfocusError(f"an empty answer cannot be trained on (question: {question!r})")
    prompts = [adapter.build_prompt(q) for q in questions]
    targets = [answer_text(p, a) + end_of_turn(adapter) for p, a in zip(prompts, answers)]
    inputs = adapter.encode_prompts(list(images), [p + t for p, t in zip(prompts, targets)])
    ids = inputs["input_ids"]  # (B, S), image tokens expanded, left-padded
    labels = torch.full_like(ids, IGNORE_INDEX)  # (B, S)
    tokenizer = adapter.processor.tokenizer
    for b, target in enumerate(targets):
        target_ids = torch.tensor(tokenizer(target, add_special_tokens=False)["input_ids"], dtype=ids.dtype)  # (T,)
        n = target_ids.numel()
        if n == 0 or n >= int(inputs["attention_mask"][b].sum()) or not torch.equal(ids[b, -n:], target_ids):
            raise VisfocusError(f"{adapter.family}: the tokenized answer {target!r} is not the tail of the processed "
                                "input ids (the tokenizer merges it with the prompt); cannot place the labels")
        labels[b, -n:] = target_ids
    inputs["labels"] = labels
    return inputs


def build_example(adapter, image: Image.Image, question: str, answer: str) -> dict[str, torch.Tensor]:
    """``build_batch`` of one row: input_ids/attention_mask/labels (1, S) plus the processor's vision inputs."""
    return build_batch(adapter, [image], [question], [answer])
