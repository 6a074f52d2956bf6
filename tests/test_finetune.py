"""Fine-tuning: answer-only labels placed on the processed ids, left-padded collation, LoRA / frozen-vision weight
changes, a falling loss, resumption equal to an uninterrupted run, and a loadable best checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import visfocus as vf
from visfocus.errors import VisfocusError
from visfocus.train import FinetuneConfig
from visfocus.train.finetune import finetune, vision_modules
from visfocus.train.labels import IGNORE_INDEX, build_example, collate

END = {"qwen3_vl": "<|im_end|>", "llava": "</s>"}


@pytest.mark.parametrize("family", ["qwen3_vl", "llava"])
def test_labels_cover_exactly_the_answer_and_end_token(tiny_vlms, image, family):
    vlm = tiny_vlms[family]
    tok = vlm.processor.tokenizer
    ex = build_example(vlm.adapter, image, "Where is the cup?", "left")
    ids, labels = ex["input_ids"][0], ex["labels"][0]  # (S,)
    supervised = labels != IGNORE_INDEX
    n = int(supervised.sum())
    assert supervised[-n:].all() and not supervised[:-n].any()  # one block at the very end
    assert torch.equal(labels[supervised], ids[supervised])
    assert tok.convert_ids_to_tokens(ids[supervised].tolist())[-1] == END[family]
    assert tok.decode(ids[supervised]).strip() == "left" + END[family]
    image_tokens = ids == vlm.adapter.image_token_id
    assert image_tokens.sum() > 1 and (labels[image_tokens] == IGNORE_INDEX).all()
    # the survey bug: a text-only prompt length would fall far short of the processed prompt
    text_prompt_len = len(tok(vlm.adapter.build_prompt("Where is the cup?"), add_special_tokens=False).input_ids)
    assert text_prompt_len < len(ids) - n


@pytest.mark.parametrize("family", ["qwen3_vl", "llava", "llava_next"])
def test_collate_left_pads_and_keeps_rows_aligned(tiny_vlms, image, other_image, family):
    vlm = tiny_vlms[family]
    a = build_example(vlm.adapter, image, "Where?", "left")
    b = build_example(vlm.adapter, other_image, "Where is the small red cup now?", "right of it")
    pad = vlm.processor.tokenizer.pad_token_id
    batch = collate([a, b], pad)
    length = batch["input_ids"].shape[1]
    for row, ex in enumerate((a, b)):
        n = ex["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, length - n:], ex["input_ids"][0])
        assert torch.equal(batch["labels"][row, length - n:], ex["labels"][0])
        assert (batch["labels"][row, :length - n] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][row, :length - n] == 0).all()
    reference = vlm.adapter.encode([image, other_image], ["Where?", "Where is the small red cup now?"])
    assert set(batch) - {"labels"} == set(reference)
    assert batch["pixel_values"].shape[1:] == reference["pixel_values"].shape[1:]
    with torch.no_grad():  # the batch runs through the model
        assert torch.isfinite(vlm.model(**batch).loss)


def test_answer_must_be_nonempty(tiny_vlms, image):
    with pytest.raises(VisfocusError, match="empty answer"):
        build_example(tiny_vlms["qwen3_vl"].adapter, image, "Where?", " ")


def _config(tiny_dirs, tmp_path, name: str, **kw) -> FinetuneConfig:
    base = dict(model=str(tiny_dirs["qwen3_vl"]), task="synthetic_spatial", output_dir=str(tmp_path / name),
                limit=4, batch_size=2, max_steps=3, lr=1e-3, lora_r=4, lora_alpha=8)
    return FinetuneConfig(**{**base, **kw})


def _vision_names(model) -> set[str]:
    names = set()
    for module in vision_modules(model):
        ids = {id(p) for p in module.parameters()}
        names |= {n for n, p in model.named_parameters() if id(p) in ids}
    return names


def test_lora_with_frozen_vision_trains_only_adapters(tiny_dirs, tmp_path):
    original = vf.load(str(tiny_dirs["qwen3_vl"])).model.state_dict()
    summary = finetune(_config(tiny_dirs, tmp_path, "lora", lora=True, freeze_vision=True))
    trained = torch.load(f"{summary['checkpoint_dir']}/trainable.pt")
    assert trained and all("lora_" in n and "language_model" in n for n in trained)  # base + vision stayed frozen
    assert any(n.endswith("lora_B.default.weight") and v.abs().sum() > 0 for n, v in trained.items())  # from 0
    merged = vf.load(summary["best_dir"]).model.state_dict()
    vision = _vision_names(vf.load(str(tiny_dirs["qwen3_vl"])).model)
    assert vision and all(torch.equal(merged[n], original[n]) for n in vision)
    assert all(torch.equal(merged[n], original[n]) for n in original if "norm" in n or "embed_tokens" in n)
    assert not torch.equal(merged["model.language_model.layers.0.self_attn.q_proj.weight"],
                           original["model.language_model.layers.0.self_attn.q_proj.weight"])


def test_full_finetune_with_frozen_vision_changes_language_only(tiny_dirs, tmp_path):
    original = vf.load(str(tiny_dirs["llava"])).model.state_dict()
    summary = finetune(_config(tiny_dirs, tmp_path, "full", model=str(tiny_dirs["llava"]), freeze_vision=True))
    trained = vf.load(summary["best_dir"]).model.state_dict()
    vision = _vision_names(vf.load(str(tiny_dirs["llava"])).model)
    assert vision and all(torch.equal(trained[n], original[n]) for n in vision)
    language = [n for n in original if "language_model" in n and n.endswith("proj.weight")]
    assert language and all(not torch.equal(trained[n], original[n]) for n in language)


def test_full_finetune_lowers_the_training_loss(tiny_dirs, tmp_path):
    summary = finetune(_config(tiny_dirs, tmp_path, "loss", limit=2, max_steps=8))  # the same 2 samples each step
    losses = [json.loads(line)["loss"] for line in open(summary["log"]) if '"loss"' in line]
    assert len(losses) == 8 and summary["steps"] == 8
    assert sum(losses[-2:]) / 2 < 0.5 * sum(losses[:2]) / 2


def test_a_stopped_run_resumes_to_the_same_weights(tiny_dirs, tmp_path):
    common = dict(lora=True, lora_dropout=0.1, limit=3, batch_size=1, grad_accum=2, max_steps=4, save_every=1)
    whole = finetune(_config(tiny_dirs, tmp_path, "whole", **common))
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(tiny_dirs, tmp_path, "parts", **common), stop_after_steps=2)
    resumed = finetune(_config(tiny_dirs, tmp_path, "parts", **common))
    assert whole["steps"] == resumed["steps"] == 4
    a = torch.load(f"{whole['checkpoint_dir']}/trainable.pt")
    b = torch.load(f"{resumed['checkpoint_dir']}/trainable.pt")
    assert a.keys() == b.keys() and all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    steps = [json.loads(line)["step"] for line in open(resumed["log"]) if '"loss"' in line]
    assert steps == [1, 2, 3, 4]  # the resumed run skipped the finished steps
    with pytest.raises(VisfocusError, match="another configuration"):
        finetune(_config(tiny_dirs, tmp_path, "parts", **{**common, "lr": 1e-4}))


def test_best_checkpoint_loads_and_answers(tiny_dirs, tmp_path, image):
    summary = finetune(_config(tiny_dirs, tmp_path, "best", lora=True, eval_task="synthetic_spatial",
                               eval_every=2, eval_limit=4, max_steps=3))
    assert summary["metric"] == "accuracy" and 0.0 <= summary["best_metric"] <= 1.0
    evals = [json.loads(line) for line in open(summary["log"]) if "eval/accuracy" in line]
    assert [e["step"] for e in evals] == [2, 3]
    answer = vf.load(summary["best_dir"]).answer(image, "Is the circle left of the square?", max_new_tokens=3)
    assert isinstance(answer.text, str) and answer.cost["forward_passes"] >= 1


def test_bad_settings_fail_clearly(tiny_dirs, tmp_path):
    with pytest.raises(VisfocusError, match="--batch_size"):
        finetune(_config(tiny_dirs, tmp_path, "bad", batch_size=0))
    with pytest.raises(VisfocusError, match="unknown --log_to"):
        finetune(_config(tiny_dirs, tmp_path, "bad", log_to=("jsonl", "aim")))
