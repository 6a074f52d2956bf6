"""Supervised fine-tuning of a VLM on a task's records: answer-only labels (``labels``) and the training loop with
LoRA / frozen vision, checkpoints, resumption and periodic evaluation with the task's own metrics (``finetune``)."""

from visfocus.train.config import FinetuneConfig

__all__ = ["FinetuneConfig"]  # the loop: visfocus.train.finetune.finetune; labels: visfocus.train.labels
