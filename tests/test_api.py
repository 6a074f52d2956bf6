"""Public API behaviour: registries, answers, the CLI and one clear error for each kind of bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig

import visfocus as vf
from visfocus.cli import main as cli_main
from visfocus.interventions import Batch
from visfocus.models import ADAPTERS
from visfocus.testing import FAMILIES

QUESTION = "Is the cup on the table? Answer with yes or no."


def test_every_adapter_family_has_a_fixture_and_back():
    assert {cls.family for cls in ADAPTERS.values()} == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(vf.METHODS))
def test_every_registered_method_runs_with_defaults(name, tiny_vlms, image):
    out = tiny_vlms["qwen2_5_vl"].answer(image, QUESTION, method=vf.method(name), max_new_tokens=2)
    vocab = tiny_vlms["qwen2_5_vl"].model.config.get_text_config().vocab_size
    assert out.first_token_logits.shape == out.first_token_scores.shape == (vocab,)
    assert torch.isfinite(out.first_token_logits).all()  # the model's raw logits; the scores may rule tokens out
    assert 0 < out.confidence <= 1
    assert out.confidence == pytest.approx(float(torch.softmax(out.first_token_scores, dim=-1).max()))
    assert set(out.extras) <= set(vf.METHODS[name].extras)  # only the per-row decisions it declares
    assert name in vf.methods()


@pytest.mark.parametrize("name", sorted(set(vf.METHODS) - {"baseline"}))
def test_every_method_has_a_valid_search_grid(name):
    grid = vf.METHODS[name].search_grid
    assert grid, f"{name} has no search grid"
    for key, values in grid.items():
        for value in values:
            vf.method(name, **{key: value})  # every candidate is a valid parameter value


def test_methods_lists_parameters_with_defaults():
    listed = vf.methods()
    assert set(listed) == set(vf.METHODS)
    assert listed["scaling_vis"] == {"alpha": 0.5, "layers": None, "decode": False}


def test_a_prepared_batch_holds_what_a_method_receives(tiny_vlms, image, other_image):
    vlm = tiny_vlms["qwen3_vl"]
    questions = ["Where is the cup?", "Where is the dog in relation to the cat?"]
    batch = vlm.prepare([image, other_image], questions, [["left", "right"], None], record_trace=True)
    assert isinstance(batch, Batch) and batch.size == 2 and batch.num_layers == vlm.num_layers == 2
    assert batch.questions == questions and batch.options == [("left", "right"), None]
    assert [im.size for im in batch.images] == [image.size, other_image.size] and batch.adapter is vlm.adapter
    ids = batch.runner.inputs["input_ids"]  # (2, S), left padded
    assert batch.runner.image_cols.shape == ids.shape
    assert all(a is b for a, b in zip(batch.runner.layouts, batch.layouts, strict=True))  # what traces carry
    for row, layout in enumerate(batch.layouts):  # each row's layout names exactly its image-token columns
        view = layout.images[0][0]
        assert view.image_size == batch.images[row].size
        assert int(batch.runner.image_cols[row].sum()) == view.rows * view.cols == len(layout.image_positions)


def test_a_forked_batch_adds_its_cost_and_trace_to_the_first(tiny_vlms, image, other_image):
    batch = tiny_vlms["llava"].prepare([image], ["Where is the cup?"], record_trace=True)
    batch.runner.generate((), max_new_tokens=1)
    passes = batch.runner.cost.forward_passes
    forked = batch.fork(images=[other_image])
    assert forked.questions == batch.questions and forked.images[0].size == other_image.size
    assert forked.runner.cost is batch.runner.cost and forked.runner.recorder is batch.runner.recorder
    forked.runner.generate((), max_new_tokens=1)
    assert batch.runner.cost.forward_passes == passes + 1


def test_answer_reports_confidence_of_raw_first_token_logits(tiny_vlms, image):
    out = tiny_vlms["llava"].answer(image, QUESTION, max_new_tokens=3)
    probs = torch.softmax(out.first_token_logits, dim=-1)
    assert out.confidence == pytest.approx(float(probs.max()))
    assert torch.equal(out.first_token_scores, out.first_token_logits)  # no method: decoded from the raw logits
    first_id = int(out.first_token_logits.argmax())
    assert out.first_token == tiny_vlms["llava"].processor.decode([first_id])
    assert out.extras == {} and out.trace is None  # no method: no alpha_used, no decision
    assert out.cost["forward_passes"] >= 1 and out.cost["batch_size"] == 1


def test_answer_accepts_paths_and_arrays(tiny_vlms, image, tmp_path):
    path = tmp_path / "img.png"
    image.save(path)
    vlm = tiny_vlms["qwen3_vl"]
    from_pil = vlm.answer(image, QUESTION, max_new_tokens=1)
    from_path = vlm.answer(str(path), QUESTION, max_new_tokens=1)
    import numpy as np

    from_array = vlm.answer(np.asarray(image), QUESTION, max_new_tokens=1)
    assert torch.equal(from_pil.first_token_logits, from_path.first_token_logits)
    assert torch.equal(from_pil.first_token_logits, from_array.first_token_logits)


# --- bad input: one clear error each -------------------------------------------------------------------------------

def test_unknown_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(vf.VisfocusError, match="cannot load model") as err:
        vf.load(str(tmp_path / "no-such-model"))
    assert "\n" not in str(err.value)


def test_unsupported_architecture_names_the_supported_families(tmp_path):
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(vf.VisfocusError, match="unsupported model architecture 'llama'") as err:
        vf.load(str(tmp_path))
    for family in FAMILIES:
        assert family in str(err.value)
    assert "`visfocus list models`" in str(err.value) and "\n" not in str(err.value)


def test_non_image_file_is_one_clear_error(tiny_vlms, tmp_path):
    bogus = tmp_path / "photo.jpg"
    bogus.write_text("this is not a picture")
    with pytest.raises(vf.VisfocusError, match="not a readable image file"):
        tiny_vlms["qwen3_vl"].answer(str(bogus), QUESTION)
    with pytest.raises(vf.VisfocusError, match="image file not found"):
        tiny_vlms["qwen3_vl"].answer(str(tmp_path / "missing.png"), QUESTION)


def test_question_without_image_is_one_clear_error(tiny_vlms):
    with pytest.raises(vf.VisfocusError, match="needs an image"):
        tiny_vlms["qwen3_vl"].answer(None, QUESTION)


def test_empty_question_and_mismatched_batch(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    with pytest.raises(vf.VisfocusError, match="non-empty string"):
        vlm.answer(image, "   ")
    with pytest.raises(vf.VisfocusError, match="one image per question"):
        vlm.answer_batch([image, image], [QUESTION])
    with pytest.raises(vf.VisfocusError, match="max_new_tokens"):
        vlm.answer(image, QUESTION, max_new_tokens=0)


@pytest.mark.parametrize("alpha", [-0.5, math.nan, math.inf])
def test_bad_alpha_is_rejected(alpha):
    with pytest.raises(vf.VisfocusError, match="alpha"):
        vf.method("scaling_vis", alpha=alpha)


def test_unknown_method_or_parameter_names_the_options():
    with pytest.raises(vf.VisfocusError, match="scaling_vis"):
        vf.method("no_such_method")
    with pytest.raises(vf.VisfocusError, match="alpha"):
        vf.method("scaling_vis", beta=0.3)


def test_out_of_range_layers_are_rejected_at_run_time(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match="out of range"):
        tiny_vlms["llava"].answer(image, QUESTION, method=vf.method("scaling_vis", layers=(0, 7)))


# --- CLI -----------------------------------------------------------------------------------------------------------

def test_cli_eval_default_is_the_organism_and_says_so(capsys, tmp_path):
    assert cli_main(["eval", "--limit", "3", "--output_path", str(tmp_path), "--method", "scaling_vis",
                     "--method_args", "alpha=2.0,layers=0;1"]) == 0
    captured = capsys.readouterr()
    assert "model organism" in captured.err and "not a real VLM's" in captured.err
    (samples,) = tmp_path.rglob("samples_scenes_test.jsonl")
    assert samples.parent.parent.name == "organism"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 3 and all(r["extras"]["alpha_used"] == 2.0 for r in rows)
    assert "scenes_test: accuracy" in captured.out


def test_cli_eval_reads_a_yaml_config(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"tasks: synthetic_spatial\nlimit: 2\nbatch_size: 2\noutput_path: {tmp_path / 'runs'}\n")
    assert cli_main(["eval", "--config", str(config), "--limit", "1"]) == 0  # the flag overrides the file
    (samples,) = (tmp_path / "runs").rglob("samples_synthetic_spatial.jsonl")
    assert len(samples.read_text().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("taskz: vsr\n")
    assert cli_main(["eval", "--config", str(bad)]) == 2
    assert "unknown keys ['taskz']" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "/no/such/model", "--limit", "1"], "cannot load model"),
    (["eval", "--tasks", "no_such_task"], "unknown task"),
    (["eval", "--method", "scaling_vis", "--method_args", "alpha=-1"], "alpha must be"),
    (["eval", "--method", "scaling_vis", "--method_args", "alpha"], "KEY=VALUE"),
    (["eval", "--method", "nope"], "unknown method"),
    (["eval", "--batch_size", "0"], "--batch_size"),
    (["eval", "--model_args", "dtype=float8", "--limit", "1"], "model argument dtype must be one of auto, float32"),
])
def test_cli_bad_input_is_one_error_line(argv, message, capsys, tmp_path):
    assert cli_main([*argv, "--output_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("visfocus: error:")]) == 1
    assert message in err[-1]
    assert not list(tmp_path.rglob("results.json"))  # nothing half-made is left behind


@pytest.mark.parametrize("argv, message", [
    (["bench", "--layers", "0"], "--layers must be ≥ 1"),
    (["bench", "--configs", "plain_sdpa,warp_drive"], "unknown configs ['warp_drive']"),
    (["bench", "--dtypes", "float8"], "dtypes ['float8']"),
])
def test_bench_bad_input_is_one_error_line_before_any_model_is_built(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("visfocus: error:") and message in err[0]


def test_cli_list_shows_methods_and_families(capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*vf.METHODS, *vf.tasks()]:
        assert name in out
    for family in FAMILIES:
        assert family in out


SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"


GENERATED = ("synthetic_spatial", "scenes_train", "scenes_dev", "scenes_test", "scenes_train_v1")  # need no data


def test_task_registry_names():
    names = vf.tasks()
    assert len(names) == 6 + 18 + 9 + len(GENERATED)
    assert {"vsr_zeroshot_dev", "whatsup_controlled_a_test", "pope_gqa_adversarial", *GENERATED} <= set(names)


@pytest.mark.parametrize("name", vf.tasks())
def test_every_registered_task_loads_and_parses_its_gold(name):
    if name not in GENERATED and not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    t = vf.task(name, data_root=SHARED_DATA if name not in GENERATED else None)
    assert len(t) > 0
    for record in (t[0], t[len(t) - 1]):
        assert record.gold in record.options
        assert t.parse(f"The answer is {record.gold}.", record) == record.gold
        assert t.is_correct(f"{record.gold}", record.gold, record)


@pytest.mark.parametrize("name", [None, "deco"])
def test_return_scores_gives_the_scores_of_every_generated_token(name, tiny_vlms, image, other_image):
    vlm = tiny_vlms["llava"]
    method = vf.method(name, layers=(0, 1)) if name else None
    questions = ["Is the cup on the table?", "Where is the dog? Answer in a few words."]
    answers = vlm.answer_batch([image, other_image], questions, method, max_new_tokens=4, return_scores=True)
    vocab = vlm.model.get_output_embeddings().weight.shape[0]
    for answer in answers:
        assert answer.step_scores.shape == (len(answer.tokens), vocab) and 1 <= len(answer.tokens) <= 4
        assert answer.step_scores.argmax(-1).tolist() == answer.tokens  # greedy: each token is its row's argmax
        # the plain model sets no processor: its scores are the raw logits; a correcting method's are its own
        first = answer.first_token_scores if name else answer.first_token_logits
        assert torch.equal(answer.step_scores[0], first)
        assert vlm.processor.decode(answer.tokens, skip_special_tokens=True).strip() == answer.text
    assert vlm.answer(image, questions[0], method, max_new_tokens=2).step_scores is None  # only when asked


def test_return_scores_must_be_a_bool(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match="return_scores must be True or False, got 'yes'"):
        tiny_vlms["llava"].answer(image, "Is the cup on the table?", return_scores="yes")
