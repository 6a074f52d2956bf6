"""The built-in model organism: a deterministic untrained build, a tokenizer that speaks the scenes' language in
Qwen3-VL's chat format, the shipped weights' model card equal to what `visfocus eval` computes, every method running
on it, and `visfocus organism train` end to end (a two-step run) with resumption."""

from __future__ import annotations

import hashlib
import json

import pytest

import visfocus as vf
from visfocus.benchmarks.scenes import COLOURS, REFERENCE_COLOURS, REFERENCE_SHAPES, RELATIONS, SHAPES
from visfocus.cli import main as cli_main
from visfocus.organism import ORGANISMS, WEIGHTS_DIR, organism_path, resolve
from visfocus.organism.model import build_untrained, tokenizer

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_untrained_build_is_deterministic_per_seed(tmp_path):
    a, b, c = (build_untrained(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert _digest(a / "model.safetensors") == _digest(b / "model.safetensors")
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")
    assert (a / "tokenizer.json").read_text() == (c / "tokenizer.json").read_text()


def test_tokenizer_has_one_token_per_word_and_qwen3_vl_chat_format():
    tok = tokenizer()
    for word in RELATIONS:  # answers: alone after "assistant\n", and inside the question after a space
        assert len(tok.tokenize(word)) == 1 and len(tok.tokenize(" " + word)) == 1, word
    for word in [*COLOURS, *SHAPES, *REFERENCE_COLOURS, *REFERENCE_SHAPES]:  # inside the question
        assert len(tok.tokenize(" " + word)) == 1, word
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Where?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    for special in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id


@pytest.fixture(scope="module")
def card():
    return json.loads((organism_path() / "card.json").read_text(encoding="utf-8"))


def test_shipped_organism_is_a_small_qwen3_vl_with_its_card(card):
    files = {p.name for p in WEIGHTS_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "MODEL_CARD.md", "card.json"} <= files
    assert (WEIGHTS_DIR / "model.safetensors").stat().st_size < 10 * 2**20
    config = json.loads((WEIGHTS_DIR / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"] and config["model_type"] == "qwen3_vl"
    text = (WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    test = card["metrics"]["scenes_test"]
    assert f"| **all** | {test['n']} | {test['accuracy']:.4f} |" in text
    assert "not** a stand-in" in text


def test_default_eval_runs_the_organism_and_equals_its_model_card(card, capsys, tmp_path):
    assert cli_main(["eval", "--output_path", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "model organism" in captured.err
    (results,) = tmp_path.rglob("results.json")
    got = json.loads(results.read_text())["tasks"]["scenes_test"]["metrics"]
    want = card["metrics"]["scenes_test"]
    assert got["n"] == want["n"] == 800
    assert got["accuracy"] == want["accuracy"]
    for relation, values in want["per_relation"].items():
        assert got["per_relation"][relation]["accuracy"] == values["accuracy"]
        assert got["per_relation"][relation]["mean_confidence"] == pytest.approx(values["mean_confidence"], abs=1e-4)
    assert f"scenes_test: accuracy {want['accuracy']:.4f} on 800 samples" in captured.out
    assert "under" in captured.out  # the per-relation table


def test_the_rare_relations_are_rare_in_training_and_unfamiliar_at_test(card):
    """The organism is evidence of AdaptVis's situation only if on/under really are rare and really are harder."""
    mix = card["data"]["splits"]["train"]["relation_mix"]
    assert card["version"] == "v2" and card["data"]["train"] == "scenes_train"
    assert mix == {"left": 0.495, "right": 0.495, "on": 0.005, "under": 0.005}
    test = card["metrics"]["scenes_test"]["per_relation"]
    common = min(test["left"]["accuracy"], test["right"]["accuracy"])
    assert max(test["on"]["accuracy"], test["under"]["accuracy"]) < common - 0.2
    assert max(test["on"]["mean_confidence"], test["under"]["mean_confidence"]) < min(
        test["left"]["mean_confidence"], test["right"]["mean_confidence"]) - 0.1
    assert "on 0.5% (60 scenes)" in (WEIGHTS_DIR / "MODEL_CARD.md").read_text()


def test_the_readme_and_the_guide_show_the_cards_test_numbers(card):
    """The pages' baseline row and per-relation claims are the shipped organism's, not an earlier one's."""
    test = card["metrics"]["scenes_test"]
    rel = test["per_relation"]
    common = sum(round(rel[r]["accuracy"] * rel[r]["n"]) for r in ("left", "right"))  # right answers
    rare = sum(round(rel[r]["accuracy"] * rel[r]["n"]) for r in ("on", "under"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    guide = (ROOT / "docs" / "guides" / "organism.md").read_text(encoding="utf-8")
    assert f"| baseline | {test['accuracy']:.4f} |" in readme
    assert f"answers {common} of 400\nleft/right scenes right" in readme and f"and {rare} of 400 on/under" in readme
    assert f"accuracy {test['accuracy']:.4f} on 800 samples" in guide
    for relation, values in rel.items():
        assert f"{relation:<12}{values['n']:>6}{values['accuracy']:>10.4f}{values['mean_confidence']:>12.4f}" in guide


def test_organism_v1_stays_reachable_by_name_and_equals_its_card(capsys, tmp_path):
    assert resolve("organism-v1") == str(ORGANISMS["organism-v1"]) != str(WEIGHTS_DIR)
    assert resolve("organism") == str(WEIGHTS_DIR)
    assert resolve("Qwen/Qwen3-VL-2B-Instruct") == "Qwen/Qwen3-VL-2B-Instruct"
    v1 = json.loads((ORGANISMS["organism-v1"] / "card.json").read_text())
    assert v1["data"]["splits"]["train"]["relation_mix"]["on"] == 0.04
    assert cli_main(["eval", "--model", "organism-v1", "--output_path", str(tmp_path)]) == 0
    (results,) = tmp_path.rglob("results.json")
    got = json.loads(results.read_text())["tasks"]["scenes_test"]["metrics"]
    assert got["accuracy"] == v1["metrics"]["scenes_test"]["accuracy"]
    for relation, values in v1["metrics"]["scenes_test"]["per_relation"].items():
        assert got["per_relation"][relation]["accuracy"] == values["accuracy"]


def test_a_local_folder_named_like_an_organism_is_read_as_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "organism-v1").mkdir()
    assert resolve("organism-v1") == "organism-v1"


@pytest.fixture(scope="module")
def organism():
    return vf.load(str(organism_path()))


@pytest.mark.parametrize("method", sorted(vf.METHODS))
def test_every_method_runs_on_the_organism(method, organism):
    vlm = organism
    record = vf.task("scenes_dev").records[0]
    answer = vlm.answer(record.image, record.question, method=None if method == "baseline" else vf.method(method),
                        options=record.options, max_new_tokens=2)
    # the first token is an answer; an edit may change what follows (VEA on scenes_dev's first scene: "leftleft")
    assert answer.first_token.strip() in RELATIONS


def test_organism_train_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "org"
    assert cli_main(["organism", "train", "--out", str(out), "--max_steps", "2"]) == 0
    card = json.loads((out / "model" / "card.json").read_text())
    assert card["recipe"]["max_steps"] == 2 and card["seed"] == 0 and card["threads"] == 2
    assert set(card["metrics"]) == {"scenes_dev", "scenes_test"}
    assert card["metrics"]["scenes_test"]["n"] == 800
    assert "--max_steps 2" in card["command"]
    assert "| relation | n | accuracy | mean confidence |" in (out / "model" / "MODEL_CARD.md").read_text()
    vf.load(str(out / "model"))  # loadable
    log = (out / "training" / "train_log.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in log) == 2
    capsys.readouterr()
    assert cli_main(["organism", "train", "--out", str(out), "--max_steps", "2"]) == 0  # complete: nothing retrained
    log_again = (out / "training" / "train_log.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in log_again) == 2


def test_organism_card_command_prints_the_card(capsys):
    assert cli_main(["organism", "card"]) == 0
    assert "# The visfocus model organism" in capsys.readouterr().out


def test_missing_weights_give_one_clear_error(tmp_path):
    with pytest.raises(vf.VisfocusError, match="weights are missing.*visfocus organism train --out DIR"):
        organism_path(tmp_path)


def test_organism_bad_input_is_one_error_line(capsys, tmp_path):
    assert cli_main(["organism", "train", "--out", str(tmp_path / "x"), "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("visfocus: error:")
    (tmp_path / "file").write_text("keep me")
    assert cli_main(["organism", "train", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me"
