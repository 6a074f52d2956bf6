"""``visfocus organism train --out DIR --seed 0``: rebuild the model organism from scratch, and ``visfocus organism
card``: print the shipped one's model card.

Training is ``visfocus finetune``'s loop (full fine-tuning, answer-only labels) from the random initialisation of
``visfocus.organism.model``, on ``scenes_train``, evaluated on ``scenes_dev`` as it goes (the best dev checkpoint is
kept). The result is evaluated on dev and test with ``visfocus eval``'s own runner, so the model card's numbers are
exactly what ``visfocus eval`` prints for it. ``DIR`` receives ``init-seed<N>/`` (the untrained model),
``training/`` (log, checkpoint, best), ``eval/`` (the run folders) and ``model/`` (the organism: weights, processor,
MODEL_CARD.md, card.json — what ships in ``visfocus/organism/weights``). Re-running the same command resumes an
interrupted run.

Deterministic for a given seed and thread count (default 2 threads, as the shipped organism was trained); other
thread counts change the floating-point summation order and so the weights slightly."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from visfocus.errors import VisfocusError

TRAIN_TASK, DEV_TASK, TEST_TASK = "scenes_train", "scenes_dev", "scenes_test"
# Each organism version's training task: v2 (the built-in one) sees on/under 0.5 % each, v1 4 % each; the rest of the
# recipe is the same.
VERSIONS = {"v2": TRAIN_TASK, "v1": "scenes_train_v1"}
LATEST = "v2"
# The training recipe (visfocus finetune flags). Steps are optimizer steps of batch_size records.
RECIPE: dict[str, Any] = {"batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "max_steps": 1500, "weight_decay": 0.01,
                          "eval_every": 250, "max_new_tokens": 2}
CARD_FILES = ("MODEL_CARD.md", "card.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="organism_command", required=True, metavar="{train,card}")
    train = sub.add_parser("train", help="rebuild the model organism from scratch (about 10 minutes on 2 CPU cores)")
    train.add_argument("--out", required=True, help="output folder (the organism lands in OUT/model)")
    train.add_argument("--seed", type=int, default=0, help="initialisation, data order and scene seed (default 0)")
    train.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: the shipped organism's)")
    train.add_argument("--version", choices=sorted(VERSIONS), default=LATEST,
                       help=f"which organism's training mix (default {LATEST}, the built-in one; v1: on/under "
                            "4 %% each)")
    train.add_argument("--max_steps", type=int, default=RECIPE["max_steps"], help=argparse.SUPPRESS)
    sub.add_parser("card", help="print the shipped organism's model card")


def run(args: argparse.Namespace) -> int:
    if args.organism_command == "card":
        from visfocus.organism import organism_path

        print((organism_path() / "MODEL_CARD.md").read_text(encoding="utf-8"))
        return 0
    if args.threads < 1 or args.max_steps < 1:
        raise VisfocusError("--threads and --max_steps must be ≥ 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise VisfocusError(f"--out {args.out} is a file, not a folder")
    card = train_organism(Path(args.out), seed=args.seed, threads=args.threads, max_steps=args.max_steps,
                          version=args.version)
    print(render_card(card))
    print(f"\nwritten: {Path(args.out) / 'model'}")
    return 0


def evaluate_splits(model_dir: Path, output_path: Path) -> dict[str, Any]:
    """Dev and test metrics of the model in ``model_dir``, computed exactly as ``visfocus eval --model DIR``."""
    from visfocus.evaluate import RunConfig, evaluate

    out = evaluate(RunConfig(model=str(model_dir), tasks=[DEV_TASK, TEST_TASK], output_path=str(output_path)))
    return {name: _summary(out["tasks"][name]["metrics"]) for name in (DEV_TASK, TEST_TASK)}


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "accuracy", "mean_confidence", "auroc_confidence_vs_correct", "n_unparsed", "per_relation")
    return {k: metrics[k] for k in keys if k in metrics}


def train_organism(out: Path, seed: int = 0, threads: int = 2, max_steps: int | None = None,
                   version: str = LATEST) -> dict[str, Any]:
    """Build, train, evaluate and card the organism ``version`` under ``out``; returns the card (also in
    ``out/model``)."""
    import torch
    import transformers

    from visfocus.benchmarks.scenes import SPLITS
    from visfocus.organism.model import TEXT, VISION, build_untrained
    from visfocus.train.config import FinetuneConfig
    from visfocus.train.finetune import finetune

    torch.set_num_threads(threads)
    if seed != 0:  # the scene splits are registered tasks with seed 0; the seed here moves the init and data order
        print(f"[visfocus] seed {seed}: initialisation and batch order change; the scenes stay those of seed 0",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    recipe = dict(RECIPE, max_steps=max_steps or RECIPE["max_steps"])
    init = out / f"init-seed{seed}"  # a run with another seed never starts from this one's initialisation
    if not (init / "model.safetensors").is_file():
        build_untrained(init, seed=seed)
    train_task = VERSIONS[version]
    config = FinetuneConfig(model=str(init), task=train_task, eval_task=DEV_TASK, output_dir=str(out / "training"),
                            seed=seed, **recipe)
    summary = finetune(config)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(summary["best_dir"], model_dir)
    metrics = evaluate_splits(model_dir, out / "eval")
    n_params = sum(t.numel() for t in _weights(model_dir).values())
    card = {
        "name": "visfocus model organism", "version": version, "architecture": "Qwen3VLForConditionalGeneration",
        "parameters": n_params, "text_config": TEXT, "vision_config": VISION,
        "data": {"train": train_task, "dev": DEV_TASK, "test": TEST_TASK,
                 "splits": {split: {"relation_mix": dict(zip(("left", "right", "on", "under"), SPLITS[key][0])),
                                    "n_records": SPLITS[key][1]}
                            for split, key in (("train", train_task.removeprefix("scenes_")), ("dev", "dev"),
                                               ("test", "test"))}},
        "recipe": recipe, "seed": seed, "threads": threads,
        "command": f"visfocus organism train --out DIR --seed {seed}"
                   + (f" --version {version}" if version != LATEST else "")
                   + (f" --threads {threads}" if threads != 2 else "")
                   + (f" --max_steps {recipe['max_steps']}" if recipe["max_steps"] != RECIPE["max_steps"] else ""),
        "best_step": summary["best_step"], "best_dev_accuracy_during_training": summary["best_metric"],
        "training_seconds": round(summary["train_seconds"], 1),
        "machine": f"{platform.machine()}, {threads} torch threads, torch {torch.__version__}, "
                   f"transformers {transformers.__version__}",
        "metrics": metrics,
    }
    (model_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (model_dir / "MODEL_CARD.md").write_text(render_card(card) + "\n", encoding="utf-8")
    return card


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def relation_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown rows: relation, n, accuracy, mean confidence, then the overall line."""
    lines = ["| relation | n | accuracy | mean confidence |", "|---|---|---|---|"]
    for relation, values in metrics.get("per_relation", {}).items():
        conf = values.get("mean_confidence")
        lines.append(f"| {relation} | {values['n']} | {values['accuracy']:.4f} | "
                     + ("–" if conf is None else f"{conf:.4f}") + " |")
    conf = metrics.get("mean_confidence")
    lines.append(f"| **all** | {metrics['n']} | {metrics['accuracy']:.4f} | "
                 + ("–" if conf is None else f"{conf:.4f}") + " |")
    return lines


def render_card(card: dict[str, Any]) -> str:
    minutes = card["training_seconds"] / 60
    splits = card["data"]["splits"]
    n_train = splits["train"]["n_records"]
    mix = ", ".join(f"{k} {v:.1%} ({round(v * n_train):,} scenes)" for k, v in splits["train"]["relation_mix"].items())
    lines = [
        f"# The visfocus model organism ({card.get('version', 'v1')})",
        "",
        "A small vision-language model trained from scratch on rendered scenes, so that every visfocus method and "
        "analysis can be exercised end to end on a machine with no GPU and no downloads. It is **not** a stand-in for "
        "a real VLM's numbers: it has seen nothing but small coloured shapes beside boxes and shelves on plain "
        "backgrounds.",
        "",
        f"- Architecture: `{card['architecture']}` (the real transformers class), {card['parameters']:,} parameters; "
        f"text decoder {card['text_config']['num_hidden_layers']} layers × hidden {card['text_config']['hidden_size']} "
        f"({card['text_config']['num_attention_heads']} heads, {card['text_config']['num_key_value_heads']} KV heads), "
        f"vision tower {card['vision_config']['depth']} blocks × hidden {card['vision_config']['hidden_size']}, "
        "patch 16, 2×2 merge (a 192 px scene is 36 image tokens). Byte-level BPE tokenizer trained in code with "
        "Qwen's special tokens and Qwen3-VL's chat template.",
        f"- Data: `{card['data']['train']}` ({splits['train']['n_records']:,} scenes; relation mix {mix} — on/under "
        f"are deliberately rare, the situation AdaptVis is about), `{card['data']['dev']}` "
        f"({splits['dev']['n_records']}) and `{card['data']['test']}` ({splits['test']['n_records']}), both balanced. "
        "Each scene: a small coloured thing (6 colours × 3 shapes) left of, right of, on or under a large "
        "neutral-coloured box or shelf, as in WhatsUp's controlled images; a light background, a floor band half the "
        "time, a second small thing of another colour 30 % of the time (then only the question's colour word tells "
        "which one is meant); ground-truth boxes. Question: \"Where is the X in relation to the Y? Answer with left, "
        "right, on or under.\"",
        f"- Training: `visfocus finetune`'s loop, full fine-tuning from random initialisation, loss on the answer "
        f"and end-of-turn tokens only; {card['recipe']['max_steps']} steps × batch {card['recipe']['batch_size']}, "
        f"AdamW lr {card['recipe']['lr']} (warmup {card['recipe']['warmup_steps']}, linear decay), weight decay "
        f"{card['recipe']['weight_decay']}; the best `{card['data']['dev']}` checkpoint (step {card['best_step']}) "
        "is kept.",
        f"- Seed {card['seed']}. Command: `{card['command']}`. Training took {minutes:.1f} minutes on "
        f"{card['machine']}.",
        "",
    ]
    for name, metrics in card["metrics"].items():
        lines += [f"## {name} (greedy; `visfocus eval --tasks {name}` reproduces it)", "",
                  *relation_table(metrics), ""]
    return "\n".join(lines).rstrip()

