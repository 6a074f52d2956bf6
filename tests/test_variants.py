"""Variants as columns (``visfocus.steer.variants``): k re-runs of the last prompt token computed in the prompt's own
forward equal the re-runs themselves, on every family, with and without shared prefixes, in padded batches."""

from __future__ import annotations

import pytest
import torch

import visfocus as vf
from visfocus.interventions import Batch
from visfocus.steer.edits import ScaleLogits
from visfocus.steer.prefix import PrefixStore
from visfocus.steer.variants import UNEDITED, finished_after_first, separate_passes
from visfocus.testing import FAMILIES, make_image

QUESTIONS = ["Where is the cup in relation to the table? Answer with left, right, on or under.",
             "Is the dog on the table?"]  # different lengths: the batch is padded


def _images():
    return [make_image(224, 160, seed=1), make_image(160, 256, seed=2)]


def _agree(got, expected, tol=1e-4):
    for a, b in zip(got, expected, strict=True):
        assert (a.first_token_logits - b.first_token_logits).abs().max().item() <= tol
        assert a.text == b.text
        assert a.extras == b.extras or a.extras["branch"] == b.extras["branch"]


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_adaptvis_in_one_forward_equals_separate_passes(family, share_prefix, tiny_vlms):
    vlm, images = tiny_vlms[family], _images()
    plain = [a.confidence for a in vlm.answer_batch(images, QUESTIONS, max_new_tokens=1)]
    # a threshold between the two rows' confidences: one row smooths, the other sharpens
    decode = FAMILIES.index(family) % 2 == 1  # the rarer option on every other family
    method = vf.method("adaptvis", alpha_low=0.2, alpha_high=3.0, threshold=sum(plain) / 2, decode=decode)
    got = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=3, share_prefix=share_prefix)
    with separate_passes():
        expected = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=3, share_prefix=share_prefix)
    _agree(got, expected)
    assert {a.extras["branch"] for a in got} == {"smooth", "sharpen"}
    one_forward = got[0].cost["forward_passes"] < expected[0].cost["forward_passes"]
    assert one_forward == (not vlm.adapter.prefix_lm)  # a prefix-LM prompt keeps the separate passes


def _close(a, b) -> bool:
    """Equal nested results, floats to 1e-6 (NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, abs=1e-6, nan_ok=True)
    return a == b


def _runner(vlm, store=None):
    return Batch.build(vlm.adapter, _images(), QUESTIONS, prefix_store=store).runner


@pytest.mark.parametrize("family", ["qwen3_vl", "gemma3"])
@pytest.mark.parametrize("shared", [False, True])
def test_every_choice_continues_as_its_rerun_would(family, shared, tiny_vlms):
    """Choices per row (unedited, one variant, mixed), decoded as rows of one generate or in chunks, equal
    ``generate`` under the same edits with the last prompt token re-run."""
    vlm = tiny_vlms[family]
    store = PrefixStore() if shared else None
    edits = [ScaleLogits(alpha=0.3), ScaleLogits(alpha=2.5, heads=(0,))]
    runner = _runner(vlm, store)
    variants = runner.variant_pass([(edit,) for edit in edits])
    choices = [[UNEDITED, UNEDITED], [0, 0], [1, 1], [1, UNEDITED]]
    together = runner.continue_variants(variants, choices, max_new_tokens=4, keep_pass=True)
    chunked = runner.continue_variants(variants, choices, max_new_tokens=4, max_rows=2)
    for choice, got, again in zip(choices, together, chunked):
        per_row = tuple(1.0 if j == UNEDITED else edits[j].alpha for j in choice)  # α = 1 leaves a row as it is
        heads = None if 1 not in choice else (0,)
        reference = _runner(vlm, store).generate((ScaleLogits(alpha=per_row, heads=heads),), max_new_tokens=4)
        assert (got.first_logits - reference.first_logits).abs().max().item() <= 1e-4
        assert torch.equal(got.new_tokens, reference.new_tokens)
        assert torch.equal(again.new_tokens, got.new_tokens)
        for step, ref in zip(got.step_logits, reference.step_logits, strict=True):
            assert (step - ref.float()).abs().max().item() <= 1e-4


def test_kept_prompts_rerun_only_the_last_token_with_the_variants(tiny_vlms):
    """Inside ``keeping_prompts`` a prompt already answered starts from its kept cache: the forward holds its last
    token and the two variants only."""
    vlm, images = tiny_vlms["llava"], _images()
    method = vf.method("adaptvis", alpha_low=0.2, alpha_high=3.0, threshold=0.5)
    with vlm.keeping_prompts():
        vlm.answer_batch(images, QUESTIONS, max_new_tokens=1)
        got = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=2)
    assert got[0].cost["forward_passes"] == 2  # the variants' forward and one decoding step
    assert got[0].cost["prefill_tokens"] == 3  # the last prompt token and its two variants
    with separate_passes():
        expected = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=2, share_prefix=False)
    _agree(got, expected)


def test_a_trace_or_sampling_keeps_the_separate_passes(tiny_vlms):
    vlm, images = tiny_vlms["qwen3_vl"], _images()
    method = vf.method("adaptvis", threshold=0.5)
    traced = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=1, trace=True)
    assert traced[0].cost["forward_passes"] >= 2
    sampled = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=1,
                               sampling=vf.Sampling(temperature=0.7, seed=3))
    assert sampled[0].cost["forward_passes"] >= 2
    plain = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=1, share_prefix=False)
    assert plain[0].cost["forward_passes"] == 1
    assert [a.text for a in traced] == [a.text for a in plain]


def test_a_row_that_ends_at_its_first_token_is_padded_after_it():
    tokens = torch.tensor([[7, 5, 6, 8], [3, 4, 7, 9], [5, 5, 5, 5]])
    assert finished_after_first(tokens, eos=[7], pad=0).tolist() == [[7, 0, 0, 0], [3, 4, 7, 9], [5, 5, 5, 5]]
    assert finished_after_first(tokens[:2], eos=[7], pad=0).tolist() == [[7, 0, 0], [3, 4, 7]]


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_several_methods_from_one_forward_equal_each_alone(family, share_prefix, tiny_vlms):
    """The plain model, ScalingVis points and AdaptVis points (a sweep's trials) from one forward give each the
    answers it gives alone; a method that is not a variant method answers on its own beside them."""
    vlm, images = tiny_vlms[family], _images()
    plain = [a.confidence for a in vlm.answer_batch(images, QUESTIONS, max_new_tokens=1)]
    methods = [None, vf.method("scaling_vis", alpha=0.5), vf.method("scaling_vis", alpha=2.0, decode=True),
               vf.method("adaptvis", alpha_low=0.5, alpha_high=2.0, threshold=sum(plain) / 2),
               vf.method("adaptvis", alpha_low=0.8, alpha_high=2.0, threshold=0.0),
               vf.method("clvs")]
    together = vlm.answer_variants(images, QUESTIONS, methods, max_new_tokens=3, max_rows=4,
                                   share_prefix=share_prefix)
    for method, got in zip(methods, together, strict=True):
        alone = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=3, share_prefix=False)
        _agree(got, alone)
        assert [a.extras for a in got] == [a.extras for a in alone] or method.name == "adaptvis"
    # the five variant methods: one forward over the prompt and two decoding steps per group of continuations
    if not vlm.adapter.prefix_lm:
        assert together[0][0].cost["forward_passes"] < 5 * alone[0].cost["forward_passes"]


def test_a_sweep_by_rows_equals_the_sweep_one_trial_at_a_time(tiny_dirs, tmp_path):
    import json
    from pathlib import Path

    from visfocus.evaluate import RunConfig
    from visfocus.run.samples import read_samples
    from visfocus.sweep import sweep

    grid = {"alpha_low": [0.5, 0.8], "alpha_high": [1.5, 2.0]}
    outs = {}
    for by_rows in (True, False):
        base = RunConfig(model=str(tiny_dirs["qwen3_vl"]), limit=6, batch_size=3, max_new_tokens=3,
                         output_path=str(tmp_path / str(by_rows)))
        if by_rows:
            outs[by_rows] = sweep(base, "synthetic_spatial", "synthetic_spatial", "adaptvis", grid)
        else:
            with separate_passes():
                outs[by_rows] = sweep(base, "synthetic_spatial", "synthetic_spatial", "adaptvis", grid)
    rows, separate = outs[True], outs[False]
    assert rows["trials"] == separate["trials"] and rows["chosen"] == separate["chosen"]
    assert rows["search_space"] == separate["search_space"]
    assert _close(rows["test"], separate["test"])  # the same test metrics (confidences to float rounding)
    # every trial is its own run folder with the same sample rows (outputs, branches) either way
    folders = sorted(p for p in (tmp_path / "True").rglob("samples_synthetic_spatial.jsonl"))
    assert len(folders) >= len(rows["trials"])
    for path in folders:
        twin = tmp_path / "False" / path.relative_to(tmp_path / "True")
        got, expected = read_samples(path).rows, read_samples(twin).rows
        assert {k: (v["output"], v["extras"].get("branch")) for k, v in got.items()} == \
            {k: (v["output"], v["extras"].get("branch")) for k, v in expected.items()}
    assert json.loads(Path(rows["path"]).read_text())["chosen"] == rows["chosen"]


def test_answer_variants_refuses_bad_arguments_in_one_line(tiny_vlms):
    vlm, images = tiny_vlms["llava"], _images()
    with pytest.raises(vf.VisfocusError, match="needs a list of methods"):
        vlm.answer_variants(images, QUESTIONS, vf.method("adaptvis"))
    with pytest.raises(vf.VisfocusError, match="max_rows must be an integer"):
        vlm.answer_variants(images, QUESTIONS, [None, vf.method("scaling_vis")], max_rows=0)
    with pytest.raises(vf.VisfocusError, match="visfocus.method"):
        vlm.answer_variants(images, QUESTIONS, [None, "scaling_vis"])


@pytest.mark.parametrize("settings", [{"suppress_tokens": "favourites"},
                                      {"repetition_penalty": 1.8, "no_repeat_ngram_size": 2},
                                      {"min_new_tokens": 3, "bad_words_ids": "favourites"}])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_variants_follow_the_models_own_logits_processors(family, settings, tiny_vlms, restore_generation_configs):
    """The first token of a variant column is chosen under the processors of the model's generation config, as
    generate chooses it, and decoding goes on under them (min new tokens counting that first token)."""
    vlm, images = tiny_vlms[family], _images()
    methods = [None, vf.method("scaling_vis", alpha=2.0), vf.method("adaptvis", alpha_low=0.5, alpha_high=2.0)]
    free = vlm.answer_variants(images, QUESTIONS, methods, max_new_tokens=4)
    favourites = sorted({answer.tokens[0] for answers in free for answer in answers})
    for key, value in settings.items():
        value = favourites if key == "suppress_tokens" else [[t] for t in favourites] if value == "favourites" \
            else value
        setattr(vlm.model.generation_config, key, value)
    assert vlm.prepare(images, QUESTIONS).runner.variants_refused() is None
    together = vlm.answer_variants(images, QUESTIONS, methods, max_new_tokens=4)
    with separate_passes():
        alone = vlm.answer_variants(images, QUESTIONS, methods, max_new_tokens=4)
    for got, expected in zip(together, alone, strict=True):
        assert [a.tokens for a in got] == [a.tokens for a in expected]
        _agree(got, expected)
    if "favourites" in settings.values():  # the processors bite: no answer starts with a banned token
        assert not {answer.tokens[0] for answers in together for answer in answers} & set(favourites)
    assert together[0][0].cost["forward_passes"] < alone[0][0].cost["forward_passes"] * len(methods)


def test_a_processor_a_variant_cannot_follow_keeps_the_separate_passes(tiny_vlms, restore_generation_configs):
    vlm, images = tiny_vlms["llava"], _images()
    vlm.model.generation_config.begin_suppress_tokens = [5]  # counts from the prompt's end: not for a continuation
    assert "SuppressTokensAtBeginLogitsProcessor" in vlm.prepare(images, QUESTIONS).runner.variants_refused()
    methods = [None, vf.method("scaling_vis", alpha=2.0)]
    together = vlm.answer_variants(images, QUESTIONS, methods, max_new_tokens=3)
    with separate_passes():
        alone = vlm.answer_variants(images, QUESTIONS, methods, max_new_tokens=3)
    for got, expected in zip(together, alone, strict=True):
        assert [a.tokens for a in got] == [a.tokens for a in expected]
