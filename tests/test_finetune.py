"""Fine-tuning: answer-only labels placed on the processed ids, left-padded collation, LoRA / frozen-vision weight
changes, a falling loss, resumption equal to an uninterrupted run (after a stop, a kill at any instant of a checkpoint
save, or a full disk), checkpoints with no pickle in them, and a loadable best checkpoint."""

from __future__ import annotations

import errno
import importlib
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visfocus as vf
from visfocus.errors import VisfocusError
from visfocus.testing import FAMILIES
from visfocus.train import FinetuneConfig
from visfocus.train.checkpoint import FILES, is_complete, recover, sibling
from visfocus.train.finetune import finetune, vision_parameters
from visfocus.train.labels import IGNORE_INDEX, build_batch, build_example

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


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_is_its_rows_left_padded(tiny_vlms, image, other_image, family):
    """A training batch is the family's own processor call: each row equals that row built alone, left-padded, and
    the batch runs through the model."""
    vlm = tiny_vlms[family]
    questions, answers = ["Where?", "Where is the small red cup now?"], ["left", "right of it"]
    batch = build_batch(vlm.adapter, [image, other_image], questions, answers)
    length = batch["input_ids"].shape[1]
    for row, (picture, question, answer) in enumerate(zip((image, other_image), questions, answers)):
        alone = build_example(vlm.adapter, picture, question, answer)
        n = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, length - n:], alone["input_ids"][0])
        assert torch.equal(batch["labels"][row, length - n:], alone["labels"][0])
        assert (batch["labels"][row, :length - n] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][row, :length - n] == 0).all()
    reference = vlm.adapter.encode([image, other_image], questions)
    assert set(batch) - {"labels"} == set(reference)
    with torch.no_grad():
        assert torch.isfinite(vlm.model(**batch).loss)


def test_answer_must_be_nonempty(tiny_vlms, image):
    with pytest.raises(VisfocusError, match="empty answer"):
        build_example(tiny_vlms["qwen3_vl"].adapter, image, "Where?", " ")


def _config(tiny_dirs, tmp_path, name: str, **kw) -> FinetuneConfig:
    base = dict(model=str(tiny_dirs["qwen3_vl"]), task="synthetic_spatial", output_dir=str(tmp_path / name),
                limit=4, batch_size=2, max_steps=3, lr=1e-3, lora_r=4, lora_alpha=8)
    return FinetuneConfig(**{**base, **kw})


# Where Qwen-VL and LLaVA keep their vision side, written out independently of ``vision_parameters``.
VISION_PREFIXES = ("model.visual.", "model.vision_tower.", "model.multi_modal_projector.", "model.image_newline")


def _vision_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(VISION_PREFIXES)}


@pytest.mark.parametrize("family", ["qwen3_vl", "llava", "llava_next"])
def test_the_vision_side_is_everything_outside_the_text_decoder(tiny_vlms, family):
    vlm = tiny_vlms[family]
    assert set(vision_parameters(vlm.model, vlm.adapter.text_model)) == _vision_names(vlm.model) != set()


def test_lora_with_frozen_vision_trains_only_adapters(tiny_dirs, tmp_path):
    original = vf.load(str(tiny_dirs["qwen3_vl"])).model.state_dict()
    summary = finetune(_config(tiny_dirs, tmp_path, "lora", lora=True, freeze_vision=True))
    trained = load_file(f"{summary['checkpoint_dir']}/trainable.safetensors")
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
    a = load_file(f"{whole['checkpoint_dir']}/trainable.safetensors")
    b = load_file(f"{resumed['checkpoint_dir']}/trainable.safetensors")
    assert a and a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)  # bit for bit
    steps = [json.loads(line)["step"] for line in open(resumed["log"]) if '"loss"' in line]
    assert steps == [1, 2, 3, 4]  # the resumed run skipped the finished steps
    with pytest.raises(VisfocusError, match="another configuration"):
        finetune(_config(tiny_dirs, tmp_path, "parts", **{**common, "lr": 1e-4}))


# --- checkpoints: no pickles, a kill at any instant of a save, a full disk --------------------------------------------
RESUMABLE = dict(lora=True, lora_dropout=0.1, limit=3, batch_size=1, grad_accum=2, max_steps=3, save_every=1)
FILESYSTEM_CHANGES = ("mkdir", "write", "fsync", "replace", "rename", "unlink", "rmdir")


class Killed(BaseException):
    """A simulated kill: no ``except Exception`` / ``except OSError`` of the code under test catches it."""


@pytest.fixture(scope="module")
def uninterrupted(tiny_dirs, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The trainable weights after the uninterrupted RESUMABLE run: what each interrupted one must reach bit for bit."""
    summary = finetune(_config(tiny_dirs, tmp_path_factory.mktemp("uninterrupted"), "run", **RESUMABLE))
    return load_file(f"{summary['checkpoint_dir']}/trainable.safetensors")


def _stop_after(tiny_dirs, tmp_path: Path, name: str, step: int) -> Path:
    """Run RESUMABLE in ``tmp_path/name`` until it stops after ``step``; its checkpoint folder."""
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(tiny_dirs, tmp_path, name, **RESUMABLE), stop_after_steps=step)
    return tmp_path / name / "checkpoint"


def _finish(tiny_dirs, tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    """Resume RESUMABLE in ``tmp_path/name`` to its end; the trainable weights it saved."""
    summary = finetune(_config(tiny_dirs, tmp_path, name, **RESUMABLE))
    assert summary["steps"] == 3
    return load_file(f"{summary['checkpoint_dir']}/trainable.safetensors")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a and a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)  # bit for bit


def _step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))["step"]


def test_checkpoints_hold_no_pickle_and_resume_without_unpickling(tiny_dirs, tmp_path, monkeypatch, uninterrupted):
    checkpoint = _stop_after(tiny_dirs, tmp_path, "run", 2)
    assert sorted(os.listdir(checkpoint.parent)) == ["checkpoint", "train_log.jsonl"]  # no .tmp / .old left
    assert sorted(os.listdir(checkpoint)) == sorted(FILES)
    assert not [p for p in checkpoint.parent.rglob("*") if p.suffix in (".pt", ".pkl", ".pickle", ".bin")]
    tensors = load_file(checkpoint / "optimizer.safetensors")
    rest = json.loads((checkpoint / "optimizer.json").read_text(encoding="utf-8"))
    assert rest["rng"]["torch"] == {"__tensor__": "rng.torch"} and tensors["rng.torch"].dtype == torch.uint8
    assert rest["rng"]["python"]["__tuple__"][0] == 3 and len(rest["rng"]["python"]["__tuple__"][1]["__tuple__"]) == 625
    assert {"optimizer.state.0.exp_avg", "optimizer.state.0.exp_avg_sq", "optimizer.state.0.step"} <= tensors.keys()
    assert rest["optimizer"]["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.999]}
    real_load, loads = torch.load, []

    def weights_only_load(*args, **kw):
        if kw.get("weights_only") is not True:
            raise AssertionError(f"torch.load without weights_only=True: {args}")
        loads.append(args)
        return real_load(*args, **kw)

    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(torch.serialization, "load", weights_only_load)
    _assert_same(_finish(tiny_dirs, tmp_path, "run"), uninterrupted)
    assert not [args for args in loads if "checkpoint" in str(args)]  # the checkpoint is never torch.load-ed


def _killable(name: str, kill: dict, k: int):
    """``os.<name>`` that raises Killed instead when it is the k-th filesystem change since ``kill`` was armed."""
    real = getattr(os, name)

    def change(*args, **kw):
        if kill["armed"]:
            kill["count"] += 1
            if kill["count"] == k:
                kill["armed"], kill["killed"] = False, True
                raise Killed(f"killed at os.{name}{args}")
        return real(*args, **kw)

    return change


def _kill_the_save_at(monkeypatch: pytest.MonkeyPatch, k: int) -> dict:
    """The k-th filesystem change (1-based) of a checkpoint save raises Killed instead of happening."""
    kill = {"armed": False, "count": 0, "killed": False}
    for name in FILESYSTEM_CHANGES:
        monkeypatch.setattr(os, name, _killable(name, kill, k))
    module = importlib.import_module("visfocus.train.finetune")
    real_save = module.save_checkpoint

    def armed_save(*args, **kw):
        kill["armed"] = not kill["killed"]
        try:
            real_save(*args, **kw)
        finally:
            kill["armed"] = False

    monkeypatch.setattr(module, "save_checkpoint", armed_save)
    return kill


def test_a_kill_at_any_instant_of_a_save_leaves_a_checkpoint_to_resume(tiny_dirs, tmp_path, monkeypatch,
                                                                       uninterrupted):
    base = _stop_after(tiny_dirs, tmp_path, "base", 1).parent  # checkpoint of step 1; the kills hit the one of step 2
    resumed_from = set()
    for k in itertools.count(1):
        run = tmp_path / f"kill{k}"
        shutil.copytree(base, run)
        with monkeypatch.context() as patch:
            kill = _kill_the_save_at(patch, k)
            with pytest.raises((Killed, KeyboardInterrupt)):
                finetune(_config(tiny_dirs, tmp_path, run.name, **RESUMABLE), stop_after_steps=2)
        if not kill["killed"]:  # k is past the save's last filesystem change: every instant has been tried
            break
        checkpoint = run / "checkpoint"
        assert any(is_complete(folder) for folder in (checkpoint, sibling(checkpoint, ".tmp"),
                                                      sibling(checkpoint, ".old")))
        assert recover(checkpoint) and is_complete(checkpoint)
        assert not sibling(checkpoint, ".tmp").exists() and not sibling(checkpoint, ".old").exists()
        resumed_from.add(_step(checkpoint))
        _assert_same(_finish(tiny_dirs, tmp_path, run.name), uninterrupted)
    assert k > 15 and resumed_from == {1, 2}  # many instants, killed both before and after the new one was complete


def test_a_checkpoint_left_as_old_is_put_back_and_resumed(tiny_dirs, tmp_path, uninterrupted):
    checkpoint = _stop_after(tiny_dirs, tmp_path, "old", 2)
    os.replace(checkpoint, sibling(checkpoint, ".old"))  # a swap stopped between its renames, the new copy incomplete
    sibling(checkpoint, ".tmp").mkdir()
    (sibling(checkpoint, ".tmp") / "trainable.safetensors").write_bytes(b"part of a file")
    assert recover(checkpoint) and is_complete(checkpoint) and _step(checkpoint) == 2
    assert sorted(os.listdir(checkpoint.parent)) == ["checkpoint", "train_log.jsonl"]
    _assert_same(_finish(tiny_dirs, tmp_path, "old"), uninterrupted)


@pytest.mark.parametrize("failing", ["write", "swap"])
def test_a_failed_save_is_one_error_and_keeps_the_previous_checkpoint(tiny_dirs, tmp_path, monkeypatch,
                                                                      uninterrupted, failing):
    checkpoint = _stop_after(tiny_dirs, tmp_path, "full", 1)
    before = load_file(checkpoint / "trainable.safetensors")
    real_replace = os.replace

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(src, dst, **kw):  # only the rename that puts checkpoint.tmp in place fails
        if Path(src).name == "checkpoint.tmp":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(os, *(("write", no_space) if failing == "write" else ("replace", read_only)))
        with pytest.raises(VisfocusError, match="No space left|Read-only") as err:
            finetune(_config(tiny_dirs, tmp_path, "full", **RESUMABLE))  # its first save, after step 2, fails
    assert "\n" not in str(err.value) and "run the same command to resume" in str(err.value)
    assert is_complete(checkpoint) and _step(checkpoint) == 1
    _assert_same(load_file(checkpoint / "trainable.safetensors"), before)
    assert not sibling(checkpoint, ".old").exists()
    assert sibling(checkpoint, ".tmp").exists() == (failing == "swap")  # complete then: a resume finishes its swap
    _assert_same(_finish(tiny_dirs, tmp_path, "full"), uninterrupted)


def test_pickled_or_incomplete_checkpoints_are_refused_and_kept(tiny_dirs, tmp_path):
    legacy = tmp_path / "legacy" / "checkpoint"
    legacy.mkdir(parents=True)
    for name in ("trainable.pt", "optimizer.pt", "state.json"):
        (legacy / name).write_bytes(b"never unpickled")
    with pytest.raises(VisfocusError, match="older visfocus.*cannot be resumed safely; move that folder away"):
        finetune(_config(tiny_dirs, tmp_path, "legacy"))
    assert sorted(os.listdir(legacy)) == ["optimizer.pt", "state.json", "trainable.pt"]
    partial = tmp_path / "partial" / "checkpoint"
    partial.mkdir(parents=True)
    (partial / "state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(VisfocusError, match="incomplete checkpoint .*move that folder away"):
        finetune(_config(tiny_dirs, tmp_path, "partial"))
    assert os.listdir(partial) == ["state.json"]


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
