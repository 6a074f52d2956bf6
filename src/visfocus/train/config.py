"""What ``visfocus finetune`` takes: the typed, validated configuration and its command-line flags (no torch here,
so the CLI starts fast)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from visfocus.errors import VisfocusError

# The text decoder's projections LoRA adapts (attention and MLP; GLM fuses gate and up into gate_up_proj).
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj")
LOGGERS = ("jsonl", "tensorboard", "mlflow")
SDPA = {"": "sdpa", "text_config": "sdpa", "vision_config": "sdpa"}


def _identity(default: Any = dataclasses.MISSING) -> Any:
    """A field whose value changes the trained weights: a checkpoint written under another value is refused, never
    resumed (``IDENTITY_KEYS``)."""
    return field(default=default, metadata={"identity": True})


@dataclass
class FinetuneConfig:
    model: str = _identity()
    task: str = _identity()
    output_dir: str
    eval_task: str | None = None  # None: no evaluation, the last weights go to best/
    data_root: str | None = _identity(None)
    lora: bool = _identity(False)
    lora_r: int = _identity(64)
    lora_alpha: int = _identity(256)
    lora_dropout: float = _identity(0.05)
    freeze_vision: bool = _identity(False)
    epochs: int = _identity(1)
    max_steps: int | None = _identity(None)  # overrides epochs
    batch_size: int = _identity(1)
    grad_accum: int = _identity(1)
    lr: float = _identity(2e-5)
    weight_decay: float = _identity(0.0)
    warmup_steps: int = _identity(0)
    eval_every: int | None = None  # None: evaluate at the end only
    eval_limit: int | None = None
    limit: int | None = _identity(None)  # train on the first `limit` records
    save_every: int | None = None  # None: checkpoint at each evaluation (and at the end)
    seed: int = _identity(0)
    dtype: str = _identity("float32")  # bfloat16/float16: autocast on CUDA over fp32 master weights; ignored on CPU
    device: str = "cpu"
    max_new_tokens: int = 8
    log_to: tuple[str, ...] = ("jsonl",)

    def validate(self) -> None:
        for name, value, low in (("--epochs", self.epochs, 1), ("--max_steps", self.max_steps, 1),
                                 ("--batch_size", self.batch_size, 1), ("--grad_accum", self.grad_accum, 1),
                                 ("--warmup_steps", self.warmup_steps, 0), ("--eval_every", self.eval_every, 1),
                                 ("--eval_limit", self.eval_limit, 1), ("--limit", self.limit, 1),
                                 ("--save_every", self.save_every, 1), ("--lora_r", self.lora_r, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise VisfocusError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if not self.lr > 0:
            raise VisfocusError(f"--lr must be > 0, got {self.lr!r}")
        unknown = [name for name in self.log_to if name not in LOGGERS]
        if unknown:
            raise VisfocusError(f"unknown --log_to {', '.join(unknown)}; choose from {', '.join(LOGGERS)}")
        for name in ("tensorboard", "mlflow"):  # fail before the model loads, not after
            if name in self.log_to and importlib.util.find_spec(name) is None:
                raise VisfocusError(f"--log_to {name} needs the {name} package (pip install {name})")


# Changing these changes the trained weights, so a checkpoint written under other values is refused, never resumed.
IDENTITY_KEYS = tuple(f.name for f in dataclasses.fields(FinetuneConfig) if f.metadata.get("identity"))

def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FinetuneConfig(model="", task="", output_dir="")
    parser.add_argument("--model", required=True, help="Hub id or local folder")
    parser.add_argument("--task", required=True, help="training task (records' gold answers are the targets)")
    parser.add_argument("--eval_task", default=None, help="task evaluated every --eval_every steps and at the end")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters on the language model only")
    parser.add_argument("--freeze_vision", action="store_true", help="freeze the vision tower and its projector")
    for name in ("lora_r", "lora_alpha", "epochs", "batch_size", "grad_accum", "warmup_steps", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("max_steps", "eval_every", "eval_limit", "limit", "save_every"):
        parser.add_argument(f"--{name}", type=int, default=None)
    for name in ("lora_dropout", "lr", "weight_decay"):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    parser.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--dtype", default=defaults.dtype)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--log_to", default="jsonl", help="comma-separated: jsonl, tensorboard, mlflow")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    names = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"log_to"}
    log_to = tuple(dict.fromkeys(["jsonl", *(s.strip() for s in args.log_to.split(",") if s.strip())]))
    return FinetuneConfig(**{k: getattr(args, k) for k in names}, log_to=log_to)
