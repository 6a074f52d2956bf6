"""The fine-tuning loop behind ``visfocus finetune``: full or LoRA, optionally with the vision tower frozen, fp32
master weights, linear warmup/decay, gradient accumulation, clipping 1.0, seeded order, resumable checkpoints and
periodic evaluation with the eval task's own parsing and metrics (the best model is kept, merged, in ``best/``).

Layout of ``output_dir``: ``train_log.jsonl`` (one line per step, plus eval lines), ``checkpoint/`` (written every
``save_every`` steps — default: at each evaluation — and at the end; nothing pickled: ``trainable.safetensors`` with
the trainable weights, ``optimizer.safetensors`` + ``optimizer.json`` with the optimizer, scheduler and RNG states,
``state.json`` with the step, losses, best metric and config), ``best/`` (a ``visfocus.load``-able model + processor),
``tensorboard/`` on request. A save goes to ``checkpoint.tmp/`` first and is swapped in through ``checkpoint.old/``,
so a kill at any instant leaves one complete checkpoint, which the next run resumes from (see
``visfocus.train.checkpoint``). A checkpoint written by an older visfocus (pickled ``trainable.pt``/``optimizer.pt``)
is refused, never unpickled: move it away to start fresh.

Steps are optimizer steps (``grad_accum`` micro-batches of ``batch_size`` each). The sample order of epoch e is a
permutation seeded by ``seed + e``, so a resumed run sees exactly the batches the uninterrupted one would."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from visfocus.errors import VisfocusError
from visfocus.train.checkpoint import load_checkpoint, read_state, recover, save_checkpoint
from visfocus.train.config import LORA_PROJECTIONS, SDPA, FinetuneConfig, add_arguments, config_from_args
from visfocus.train.labels import build_batch
from visfocus.train.loggers import Loggers


# --- the model --------------------------------------------------------------------------------------------------
def vision_parameters(model: torch.nn.Module, decoder: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every parameter outside the text decoder (``decoder``, with its token embeddings) and the LM head: the vision
    tower, its projector or merger and any learned image parameter (LLaVA-NeXT's ``image_newline``), wherever the
    family keeps them."""
    text = {id(p) for p in decoder.parameters()} | {id(p) for p in model.get_output_embeddings().parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) not in text}


def _prepare(config: FinetuneConfig):
    """(vlm, trainable model): the loaded VLM (LoRA layers injected in place, so ``vlm`` answers with them) and the
    module to train — the peft wrapper for LoRA, else the model itself."""
    from visfocus.api import load_model

    vlm = load_model(config.model, {"dtype": "float32", "device": config.device})  # fp32 master weights
    model = vlm.model
    if config.freeze_vision:
        for parameter in vision_parameters(model, vlm.adapter.text_model).values():
            parameter.requires_grad_(False)
    trainable = model
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=lora_targets(model, vlm.adapter.text_model))
        with warnings.catch_warnings():  # peft itself reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            trainable = get_peft_model(model, lora)  # freezes all but the adapters, injects them into `model` in place
    return vlm, trainable


def lora_targets(model: torch.nn.Module, decoder: torch.nn.Module) -> list[str]:
    """The full names of the text decoder's linear projections (``LORA_PROJECTIONS``): LoRA adapts the language
    model wherever the family keeps it (``language_model``, SmolVLM's ``text_model``), never the vision tower."""
    inside = {id(module) for module in decoder.modules()}
    return [name for name, module in model.named_modules()
            if id(module) in inside and isinstance(module, torch.nn.Linear)
            and name.rsplit(".", 1)[-1] in LORA_PROJECTIONS]


def _use_attention(model, name: str | dict) -> None:
    model.set_attn_implementation(name)


# --- data ---------------------------------------------------------------------------------------------------------
def _records(name: str, config: FinetuneConfig, limit: int | None) -> tuple[Any, list]:
    from visfocus.benchmarks import task
    from visfocus.run.records import check_images

    t = task(name, config.data_root)
    records = t.records[:limit] if limit else list(t.records)
    if not records:
        raise VisfocusError(f"task '{name}' has no records to use")
    check_images({name: records}, skip_missing=False)
    return t, records


def _image(record):
    from visfocus.api import load_image

    return load_image(record.image if record.image is not None else record.image_path)


def _micro_batches(step: int, n_records: int, config: FinetuneConfig) -> list[list[int]]:
    """The record indices of the ``grad_accum`` micro-batches of optimizer step ``step`` (0-based)."""
    per_epoch = math.ceil(n_records / config.batch_size)
    steps_per_epoch = math.ceil(per_epoch / config.grad_accum)
    epoch, within = divmod(step, steps_per_epoch)
    order = torch.randperm(n_records, generator=torch.Generator().manual_seed(config.seed + epoch)).tolist()
    first = within * config.grad_accum
    return [order[m * config.batch_size:(m + 1) * config.batch_size]
            for m in range(first, min(first + config.grad_accum, per_epoch))]


def total_steps(n_records: int, config: FinetuneConfig) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * math.ceil(math.ceil(n_records / config.batch_size) / config.grad_accum)


def batch_loss(model, adapter, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Mean cross-entropy over the batch's supervised tokens (the model shifts the labels itself)."""
    positions = adapter.prefill_position_ids(batch)  # left padding: positions as generate gives them (None: M-RoPE)
    extra = {} if positions is None else {"position_ids": positions}
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return model(**batch, **extra, use_cache=False).loss


# --- the best model -----------------------------------------------------------------------------------------------
def save_model(folder: Path, vlm, trainable, lora: bool) -> None:
    """A ``visfocus.load``-able copy of the current weights (LoRA merged into a copy; training goes on unmerged)."""
    model = copy.deepcopy(trainable).merge_and_unload() if lora else vlm.model
    model.save_pretrained(folder)
    vlm.processor.save_pretrained(folder)


# --- evaluation -----------------------------------------------------------------------------------------------------
def evaluate_in_process(vlm, t, records: list, attention: str, batch_size: int, max_new_tokens: int) -> dict:
    """The eval task's metrics for the current weights, answered by the visfocus engine as ``visfocus eval`` does."""
    model = vlm.model
    was_training = model.training
    _use_attention(model, {"": "sdpa", "text_config": attention, "vision_config": "sdpa"})
    model.eval()
    rows = []
    try:
        with torch.no_grad():
            for start in range(0, len(records), batch_size):
                batch = records[start:start + batch_size]
                answers = vlm.answer_batch([_image(r) for r in batch], [r.question for r in batch],
                                           max_new_tokens=max_new_tokens, options=[r.options or None for r in batch])
                for r, a in zip(batch, answers):
                    parsed = t.parse(a.text, r)
                    rows.append({"id": r.id, "gold": r.gold, "output": a.text, "parsed": parsed,
                                 "correct": t.is_correct(a.text, parsed, r), "confidence": a.confidence,
                                 "relation": r.relation, "group": r.group, "pair": r.pair})
    finally:
        _use_attention(model, SDPA)
        model.train(was_training)
    return t.score(rows)


# --- the loop -----------------------------------------------------------------------------------------------------
@dataclass
class _Training:
    """Everything one ``finetune`` call trains with, built by ``_setup``; ``state`` is what a checkpoint saves."""

    config: FinetuneConfig
    vlm: Any
    model: Any  # the module trained: the peft wrapper for LoRA, else the model itself
    params: list
    optimizer: Any
    scheduler: Any
    steps: int  # optimizer steps in all
    state: dict[str, Any]
    train_task: Any
    records: list
    eval_task: Any
    eval_records: list
    autocast_dtype: torch.dtype | None
    loggers: Loggers
    attention: str  # the visfocus attention function, for evaluation
    seconds_before: float = 0.0  # wall time of earlier launches (resumed)
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / "checkpoint"

    @property
    def best_dir(self) -> Path:
        return self.output_dir / "best"


def finetune(config: FinetuneConfig, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume) as ``config`` says; returns steps, final train loss, best metric and the output paths.

    stop_after_steps: simulate a kill — after that optimizer step, write the checkpoint and raise KeyboardInterrupt."""
    config.validate()
    checkpoint = Path(config.output_dir) / "checkpoint"
    resumed = read_state(checkpoint, config) if recover(checkpoint) else None  # refusals come before the slow loading
    training = _setup(config, resumed)
    bar = tqdm(total=training.steps, initial=training.state["step"], desc="finetune", unit="step", file=sys.stderr,
               dynamic_ncols=True)
    try:
        while training.state["step"] < training.steps:
            _train_step(training)
            bar.update(1)
            bar.set_postfix(loss=f"{training.state['last_loss']:.4f}")
            _after_step(training, stop_after_steps)
        _finish(training)
    finally:
        bar.close()
        training.loggers.close()
    return _summary(training)


def _setup(config: FinetuneConfig, resumed: dict[str, Any] | None) -> _Training:
    """Seed, read the tasks, load the model, build optimizer and schedule (restored from the checkpoint when
    ``resumed``), open the loggers."""
    from visfocus.steer.attention import register

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    train_task, records = _records(config.task, config, config.limit)
    eval_task, eval_records = (_records(config.eval_task, config, config.eval_limit) if config.eval_task
                               else (None, []))
    autocast_dtype = _autocast_dtype(config)
    vlm, model = _prepare(config)
    _use_attention(vlm.model, SDPA)  # training: plain SDPA on the text decoder, no steering
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise VisfocusError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = total_steps(len(records), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps, config))
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"step": 0, "best_metric": None, "best_step": None, "evaluated_step": None,
                             "last_loss": None, "config": dataclasses.asdict(config)}
    if resumed is not None:
        load_checkpoint(output_dir / "checkpoint", model, optimizer, scheduler)
        state = {**resumed, "config": dataclasses.asdict(config)}
    return _Training(config, vlm, model, params, optimizer, scheduler, steps, state, train_task, records, eval_task,
                     eval_records, autocast_dtype, Loggers(output_dir, tuple(config.log_to), config),
                     register(), seconds_before=state.get("seconds", 0.0))


def _autocast_dtype(config: FinetuneConfig) -> torch.dtype | None:
    """bfloat16/float16 autocast over the fp32 master weights on CUDA; on the CPU, float32 (with a warning)."""
    if config.dtype in ("float32", "fp32"):
        return None
    if str(config.device).startswith("cuda"):
        from visfocus.models.loading import _dtype

        return _dtype(config.dtype)
    warnings.warn(f"dtype {config.dtype} on {config.device}: training in float32 (autocast only on CUDA)",
                  stacklevel=4)
    return None


def _lr_factor(step: int, steps: int, config: FinetuneConfig) -> float:
    """Linear warmup to lr, then linear decay to 0 at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    return max(0.0, (steps - step) / max(1, steps - config.warmup_steps))


def _train_step(tr: _Training) -> None:
    """One optimizer step over its ``grad_accum`` micro-batches: loss, gradients clipped to 1.0, step, log."""
    tr.model.train()
    config, step = tr.config, tr.state["step"]
    micro = _micro_batches(step, len(tr.records), config)
    n_tokens, loss_sum = 0, 0.0
    for indices in micro:
        rows = [tr.records[i] for i in indices]
        batch = build_batch(tr.vlm.adapter, [_image(r) for r in rows], [r.question for r in rows],
                            [tr.train_task.target_text(r) for r in rows])
        batch = {k: v.to(config.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        loss = batch_loss(tr.model, tr.vlm.adapter, batch, tr.autocast_dtype)
        (loss / len(micro)).backward()
        loss_sum += float(loss.detach())
        n_tokens += int((batch["labels"] != -100).sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.params, 1.0)
    lr = tr.scheduler.get_last_lr()[0]
    tr.optimizer.step()
    tr.scheduler.step()
    tr.optimizer.zero_grad(set_to_none=True)
    tr.state["step"] = step + 1
    tr.state["last_loss"] = loss_sum / len(micro)
    tr.state["seconds"] = tr.seconds_before + time.perf_counter() - tr.started
    tr.loggers.log(tr.state["step"], {"loss": tr.state["last_loss"], "lr": lr, "grad_norm": float(grad_norm),
                                      "tokens": n_tokens})


def _after_step(tr: _Training, stop_after_steps: int | None) -> None:
    """Evaluate every ``eval_every`` steps (not at the last: ``_finish`` does), checkpoint every ``save_every``
    (default: at each evaluation), and the simulated kill of ``stop_after_steps``."""
    config, done = tr.config, tr.state["step"]
    save_every = config.save_every or config.eval_every
    if config.eval_every and done % config.eval_every == 0 and done < tr.steps:
        _evaluate_and_keep_best(tr, done)
    if (save_every and done % save_every == 0) or done == stop_after_steps:
        save_checkpoint(tr.checkpoint, tr.model, tr.optimizer, tr.scheduler, tr.state)
    if done == stop_after_steps and done < tr.steps:
        raise KeyboardInterrupt(f"stopped after step {done} (stop_after_steps)")


def _evaluate_and_keep_best(tr: _Training, step: int) -> None:
    """The eval task's metrics now; a better main metric than the best so far saves the model to ``best/``."""
    if tr.eval_task is None:
        return
    tr.state["evaluated_step"] = step
    metrics = evaluate_in_process(tr.vlm, tr.eval_task, tr.eval_records, tr.attention, tr.config.batch_size,
                                  tr.config.max_new_tokens)
    value = metrics.get(tr.eval_task.main_metric)
    tr.loggers.log(step, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    if value is not None and (tr.state["best_metric"] is None or value > tr.state["best_metric"]):
        tr.state["best_metric"], tr.state["best_step"] = value, step
        save_model(tr.best_dir, tr.vlm, tr.model, tr.config.lora)


def _finish(tr: _Training) -> None:
    """After the last step: its evaluation (unless done), ``best/`` as the last weights when nothing is evaluated,
    and the final checkpoint."""
    if tr.eval_task is not None and tr.state["evaluated_step"] != tr.state["step"]:
        _evaluate_and_keep_best(tr, tr.state["step"])
    if tr.eval_task is None:
        save_model(tr.best_dir, tr.vlm, tr.model, tr.config.lora)
    save_checkpoint(tr.checkpoint, tr.model, tr.optimizer, tr.scheduler, tr.state)


def _summary(tr: _Training) -> dict[str, Any]:
    return {"steps": tr.state["step"], "final_loss": tr.state["last_loss"], "best_metric": tr.state["best_metric"],
            "metric": tr.eval_task.main_metric if tr.eval_task else None, "best_step": tr.state["best_step"],
            "output_dir": str(tr.output_dir), "best_dir": str(tr.best_dir), "checkpoint_dir": str(tr.checkpoint),
            "log": str(tr.output_dir / "train_log.jsonl"), "trainable_parameters": sum(p.numel() for p in tr.params),
            "train_seconds": tr.state.get("seconds", 0.0)}


def run(args: argparse.Namespace) -> int:
    summary = finetune(config_from_args(args))
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visfocus finetune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except VisfocusError as err:
        print(f"visfocus: error: {err}", file=sys.stderr)
        return 2
