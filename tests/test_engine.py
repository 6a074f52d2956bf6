"""The engine's edits and traces against an independent eager reference, for every model family (fp32)."""

from __future__ import annotations

import pytest
import torch
from eager_reference import (
    SETTINGS,
    append_tokens,
    load_reference,
    post_image_selection,
    reference_last_logits,
    reference_scaled_logits,
)

import visfocus as vf
from visfocus.steer import Runner, ScaleLogits, SteerState, steering
from visfocus.testing import FAMILIES, make_image, tiny_model_dir

QUESTION = "Where is the cup in relation to the table?"


def _prepare(vlm, images, questions):
    inputs = vlm.adapter.encode(images, questions)
    return inputs, vlm.adapter.image_cols(inputs), vlm.adapter.prefill_position_ids(inputs)


@pytest.fixture(scope="module")
def references(tiny_dirs):
    return {family: load_reference(path) for family, path in tiny_dirs.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_scaling_vis_matches_eager_reference(family, alpha, tiny_vlms, references, image):
    vlm = tiny_vlms[family]
    out = vlm.answer(image, QUESTION, method=vf.method("scaling_vis", alpha=alpha), max_new_tokens=1)
    inputs, image_cols, positions = _prepare(vlm, [image], [QUESTION])
    expected = reference_last_logits(references[family], inputs, positions, image_cols, alpha)[0]
    assert torch.isfinite(out.first_token_logits).all()
    assert (out.first_token_logits - expected).abs().max().item() <= 1e-4
    plain = reference_last_logits(references[family], inputs, positions, image_cols, 1.0)[0]
    assert (expected - plain).abs().max().item() > 1e-3  # the edit really moves the logits


# Every registered method with an identity point lands on the plain model there: its raw first-token logits within
# 1e-4, tighter where a method is exact by construction (CLVS's β = 1, PAI's α = 0 / γ = 1 and M3ID's λ = 0 skip
# their work entirely). The scores it decoded from agree wherever it did not rule a token out (VCD and DeCo cut).
EXACT_AT_IDENTITY = {"clvs": 0.0, "pai": 0.0, "m3id": 0.0, "scaling_vis": 1e-5, "vea": 1e-5, "vaf": 1e-5,
                     "deco": 1e-5}


@pytest.mark.parametrize("name", sorted(name for name, cls in vf.METHODS.items() if cls.identity))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_at_its_identity_point_equals_the_unedited_model(name, family, tiny_vlms, image):
    vlm = tiny_vlms[family]
    if vf.METHODS[name].needs_grid and vlm.adapter.no_grid_reason:  # no grid to read: refused with the reason
        with pytest.raises(vf.VisfocusError, match="no spatial grid"):
            vlm.answer(image, QUESTION, method=vf.method(name, **vf.METHODS[name].identity), max_new_tokens=3)
        return
    plain = vlm.answer(image, QUESTION, max_new_tokens=3)
    same = vlm.answer(image, QUESTION, method=vf.method(name, **vf.METHODS[name].identity), max_new_tokens=3)
    assert same.text == plain.text
    tolerance = EXACT_AT_IDENTITY.get(name, 1e-4)
    assert (same.first_token_logits - plain.first_token_logits).abs().max().item() <= tolerance
    kept = same.first_token_scores.isfinite()
    assert kept[plain.first_token_logits.argmax()]
    assert (same.first_token_scores[kept] - plain.first_token_logits[kept]).abs().max().item() <= max(tolerance, 1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_scaling_only_changes_last_row(family, tiny_vlms, image):
    """An edit of the last prompt row leaves every other row as it was. In a prefix-LM the earlier rows attend to
    the last one, so an edit in a layer before the last reaches them (checked to happen); in the last layer only, it
    cannot."""
    vlm = tiny_vlms[family]
    inputs, image_cols, positions = _prepare(vlm, [image], [QUESTION])
    kwargs = dict(inputs, position_ids=positions) if positions is not None else dict(inputs)
    last_layer = frozenset({vlm.num_layers - 1})
    with torch.no_grad():
        plain = vlm.model(**kwargs).logits  # (1, S, V)
        with steering(SteerState(image_cols=image_cols, edits=(ScaleLogits(alpha=0.0),))):
            edited = vlm.model(**kwargs).logits  # (1, S, V)
        with steering(SteerState(image_cols=image_cols, edits=(ScaleLogits(alpha=0.0, layers=last_layer),))):
            edited_last_layer = vlm.model(**kwargs).logits  # (1, S, V)
    if vlm.adapter.prefix_lm:
        assert (edited[:, :-1] - plain[:, :-1]).abs().max().item() > 1e-3
    else:
        assert torch.equal(edited[:, :-1], plain[:, :-1])
    assert torch.equal(edited_last_layer[:, :-1], plain[:, :-1])
    assert (edited[:, -1] - plain[:, -1]).abs().max().item() > 1e-3
    assert (edited_last_layer[:, -1] - plain[:, -1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_single(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    method = vf.method("scaling_vis", alpha=0.5)
    questions = [QUESTION, "Is the dog on the table or under the table, left of the cat? Answer with yes or no."]
    batch = vlm.answer_batch([image, other_image], questions, method=method, max_new_tokens=4)
    inputs, _, _ = _prepare(vlm, [image, other_image], questions)
    assert (inputs["attention_mask"] == 0).any(), "the batch should need left padding"
    for b, (img, q) in enumerate(zip([image, other_image], questions)):
        alone = vlm.answer(img, q, method=method, max_new_tokens=4)
        assert batch[b].text == alone.text
        assert (batch[b].first_token_logits - alone.first_token_logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reuse_equals_from_scratch_edit(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    inputs, image_cols, positions = _prepare(vlm, [image, other_image], [QUESTION, "Where is the dog?"])
    runner = Runner(vlm.model, inputs, image_cols, drop_on_continue=vlm.adapter.drop_on_continue,
                    prefill_position_ids=positions)
    edit = ScaleLogits(alpha=2.0)
    scratch = runner.generate((edit,), max_new_tokens=3)
    prefix = runner.prefill()
    unedited = runner.generate((), max_new_tokens=1)
    assert (prefix.first_logits - unedited.first_logits).abs().max().item() <= 1e-4
    reused = runner.generate((edit,), max_new_tokens=3, prefix=prefix)
    assert (reused.first_logits - scratch.first_logits).abs().max().item() <= 1e-4
    assert torch.equal(reused.new_tokens, scratch.new_tokens)
    again = runner.generate((ScaleLogits(alpha=0.5),), max_new_tokens=1, prefix=prefix)  # the prefix is reusable
    assert (again.first_logits - runner.generate((ScaleLogits(alpha=0.5),)).first_logits).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_matches_eager_reference(family, tiny_vlms, references, image):
    vlm = tiny_vlms[family]
    out = vlm.answer(image, QUESTION, method=vf.method("scaling_vis", alpha=0.5), max_new_tokens=2, trace=True)
    inputs, image_cols, positions = _prepare(vlm, [image], [QUESTION])
    trace = out.trace
    assert trace.num_layers == vlm.num_layers
    reference_last_logits(references[family], inputs, positions, image_cols, 0.5)
    for key, recorded in (("rows", trace.last_row), ("rows_pre", trace.last_row_pre)):
        expected = torch.stack([SETTINGS[key][i] for i in range(vlm.num_layers)])  # (L, 1, H, S)
        assert (recorded - expected).abs().max().item() <= 1e-5
        assert torch.allclose(recorded.sum(-1), torch.ones(recorded.shape[:-1]), atol=1e-5)
    share = trace.image_share()  # (L, 1)
    assert ((share > 0) & (share < 1)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_image_map_uses_the_token_grid(family, tiny_vlms, image):
    vlm = tiny_vlms[family]
    out = vlm.answer(image, QUESTION, max_new_tokens=1, trace=True)
    layout = out.layout
    views = [v for views in layout.images for v in views]
    assert sum(v.rows * v.cols for v in views) <= len(layout.image_positions)
    if vlm.adapter.no_grid_reason:  # query tokens: no view, one clear error naming why (the trace itself is there)
        assert views == [] and torch.isfinite(out.trace.last_row).all()
        with pytest.raises(vf.VisfocusError, match="no spatial grid") as err:
            out.trace.image_map(layer=vlm.num_layers - 1)
        assert str(err.value) == vlm.adapter.no_grid_reason
        return
    heat = out.trace.image_map(layer=vlm.num_layers - 1)
    view = layout.images[0][0]
    assert heat.shape == (view.rows, view.cols)
    probs = out.trace.last_row[-1, 0].mean(0)  # (S,)
    assert heat.reshape(-1) == pytest.approx(probs[torch.as_tensor(view.columns)].numpy())


def test_alpha_zero_gives_uniform_image_attention(tiny_vlms, image):
    out = tiny_vlms["qwen3_vl"].answer(image, QUESTION, method=vf.method("scaling_vis", alpha=0.0), trace=True,
                                       max_new_tokens=1)
    cols = out.trace.image_cols[0]
    image_probs = out.trace.last_row[:, 0][..., cols]  # (L, H, n_image)
    assert torch.isfinite(out.trace.last_row).all()
    assert torch.allclose(image_probs, image_probs[..., :1].expand_as(image_probs), atol=1e-7)


def test_layer_selection_and_decode_flag(tiny_vlms, image):
    vlm = tiny_vlms["qwen2_vl"]
    plain = vlm.answer(image, QUESTION, max_new_tokens=6, share_prefix=False)
    first_layer = vlm.answer(image, QUESTION, method=vf.method("scaling_vis", alpha=0.0, layers=(0,)),
                             max_new_tokens=6, trace=True)
    assert torch.equal(first_layer.trace.last_row[1:], first_layer.trace.last_row_pre[1:])  # other layers untouched
    assert not torch.equal(first_layer.trace.last_row[0], first_layer.trace.last_row_pre[0])
    inputs, image_cols, positions = _prepare(vlm, [image], [QUESTION])
    runner = Runner(vlm.model, inputs, image_cols, drop_on_continue=vlm.adapter.drop_on_continue,
                    prefill_position_ids=positions)
    prefill_only = runner.generate((ScaleLogits(alpha=3.0),), max_new_tokens=2)
    every_step = runner.generate((ScaleLogits(alpha=3.0, rows="last_prompt_and_decode"),), max_new_tokens=2)
    assert torch.equal(prefill_only.first_logits, every_step.first_logits)
    assert torch.equal(prefill_only.new_tokens[:, 0], every_step.new_tokens[:, 0])
    assert (prefill_only.step_logits[1] - every_step.step_logits[1]).abs().max().item() > 1e-4
    assert plain.cost["forward_passes"] == 1 + plain.cost["decode_tokens"]


def test_cost_counts_passes_and_tokens(tiny_vlms, image):
    vlm = tiny_vlms["llava"]
    out = vlm.answer(image, QUESTION, max_new_tokens=3, share_prefix=False)
    n_new = len(vlm.processor.tokenizer(out.text, add_special_tokens=False)["input_ids"])
    assert out.cost["prefill_tokens"] == int(vlm.adapter.encode([image], [QUESTION])["input_ids"].shape[1])
    assert out.cost["forward_passes"] == 1 + out.cost["decode_tokens"]
    assert 1 <= out.cost["forward_passes"] <= 3 and n_new >= 0
    assert out.cost["seconds"] > 0


def _runner(vlm, images, questions, trace=True):
    inputs, image_cols, positions = _prepare(vlm, images, questions)
    return Runner(vlm.model, inputs, image_cols, drop_on_continue=vlm.adapter.drop_on_continue,
                  prefill_position_ids=positions, record_trace=trace), inputs, image_cols


def test_head_selection_edits_only_those_heads(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    runner, inputs, image_cols = _runner(vlm, [image], [QUESTION])
    runner.generate((ScaleLogits(alpha=0.0, layers=frozenset({0}), heads=(1,)),))
    trace = runner.recorder.finish(image_cols, inputs["attention_mask"], [])
    changed = (trace.last_row[0, 0] - trace.last_row_pre[0, 0]).abs().amax(-1)  # (H,) in layer 0
    assert changed[1] > 1e-3
    assert changed[[0, 2, 3]].max() == 0


def test_text_key_edit_leaves_image_logits_alone(tiny_vlms, image):
    vlm = tiny_vlms["llava"]
    runner, inputs, image_cols = _runner(vlm, [image], [QUESTION])
    runner.generate((ScaleLogits(alpha=0.0, layers=frozenset({0}), keys="text"),))
    trace = runner.recorder.finish(image_cols, inputs["attention_mask"], [])
    post, pre = trace.last_row[0, 0], trace.last_row_pre[0, 0]  # (H, S) in layer 0
    cols = image_cols[0]
    # Within the image block the ratios between keys are untouched; the text block becomes uniform.
    assert torch.allclose(post[:, cols] / post[:, cols].sum(-1, keepdim=True),
                          pre[:, cols] / pre[:, cols].sum(-1, keepdim=True), atol=1e-6)
    text = post[:, ~cols]
    assert torch.allclose(text, text[:, :1].expand_as(text), atol=1e-7)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_batched_trace_rows_equal_single_traces(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    questions = [QUESTION, "Is the dog on the table or under the table, left of the cat? Answer yes or no."]
    method = vf.method("scaling_vis", alpha=2.0)
    batch = vlm.answer_batch([image, other_image], questions, method=method, max_new_tokens=1, trace=True)
    for b, (img, q) in enumerate(zip([image, other_image], questions)):
        alone = vlm.answer(img, q, method=method, max_new_tokens=1, trace=True).trace
        assert batch[b].trace.last_row.shape == alone.last_row.shape
        assert (batch[b].trace.last_row - alone.last_row).abs().max().item() <= 1e-5
        assert torch.equal(batch[b].trace.image_cols, alone.image_cols)
        assert batch[b].trace.image_map(layer=1) == pytest.approx(alone.image_map(layer=1), abs=1e-5)


# --- rows="post_image_prompt_and_decode": every prompt row after the image, and every decoding row ---------------
POST_IMAGE = "post_image_prompt_and_decode"
PADDED_QUESTIONS = [QUESTION, "Is the dog on the table or under the table, left of the cat? Answer with yes or no."]


def _post_image_edits(image_factor=2.0, before_factor=0.5, layers=None):
    return (ScaleLogits(alpha=image_factor, keys="image", rows=POST_IMAGE, layers=layers),
            ScaleLogits(alpha=before_factor, keys="before_image", rows=POST_IMAGE, layers=layers))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padded", [False, True], ids=["single", "left_padded"])
def test_post_image_rows_match_eager_reference(family, padded, tiny_vlms, references, image, other_image):
    vlm = tiny_vlms[family]
    images, questions = ([image, other_image], PADDED_QUESTIONS) if padded else ([image], [QUESTION])
    inputs, image_cols, positions = _prepare(vlm, images, questions)
    assert (inputs["attention_mask"] == 0).any() == padded
    rows, factors = post_image_selection(inputs["input_ids"], inputs["attention_mask"], vlm.adapter.image_token_id,
                                         image_factor=2.0, before_factor=0.5)
    assert 3 <= int(rows.sum(-1).min()) and int(rows.sum(-1).max()) < 0.5 * rows.shape[1]  # tens of rows, not all
    edits = _post_image_edits()
    kwargs = dict(inputs, position_ids=positions) if positions is not None else dict(inputs)
    with torch.no_grad():
        plain = vlm.model(**kwargs).logits.float()  # (B, S, V)
        with steering(SteerState(image_cols=image_cols, edits=edits)):
            full = vlm.model(**kwargs).logits.float()  # (B, S, V): every position of the prefill
    expected = reference_scaled_logits(references[family], inputs, positions, image_cols, rows=rows, factors=factors,
                                       decode=True)
    real = inputs["attention_mask"].bool()  # (B, S)
    assert (full - expected)[real].abs().max().item() <= 1e-4
    untouched = real & ~rows.cumsum(-1).bool()  # up to and including each row's last image token
    if vlm.adapter.prefix_lm:  # the image rows attend to the edited rows after them: they move, as the reference's
        assert (full - plain)[untouched].abs().max().item() > 1e-4
    else:
        assert torch.equal(full[untouched], plain[untouched])
    assert ((full - plain)[rows].abs().amax(-1) > 1e-4).all()  # every selected row moves
    # generate: the prefill's last row, then the first decoding step (one row on the cache) against a full forward
    runner = Runner(vlm.model, inputs, image_cols, drop_on_continue=vlm.adapter.drop_on_continue,
                    prefill_position_ids=positions)
    out = runner.generate(edits, max_new_tokens=2, min_new_tokens=2)
    assert (out.step_logits[0].float() - expected[:, -1]).abs().max().item() <= 1e-4
    fed = append_tokens(inputs, out.new_tokens[:, :1], vlm.adapter.appended_token_inputs)
    decoded = reference_scaled_logits(references[family], fed, vlm.adapter.prefill_position_ids(fed), image_cols,
                                      rows=rows, factors=factors, decode=True)[:, -1]  # (B, V)
    assert (out.step_logits[1].float() - decoded).abs().max().item() <= 1e-4
    unedited_decode = reference_scaled_logits(references[family], fed, vlm.adapter.prefill_position_ids(fed),
                                              image_cols, rows=rows, factors=factors, decode=False)[:, -1]
    assert (decoded - unedited_decode).abs().max().item() > 1e-4  # the decoding row is edited too


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_next"])
def test_post_image_rows_in_one_layer_match_eager_reference(family, tiny_vlms, references, image, other_image):
    vlm = tiny_vlms[family]
    inputs, image_cols, positions = _prepare(vlm, [image, other_image], PADDED_QUESTIONS)
    rows, factors = post_image_selection(inputs["input_ids"], inputs["attention_mask"], vlm.adapter.image_token_id,
                                         image_factor=0.0, before_factor=3.0)
    runner = Runner(vlm.model, inputs, image_cols, drop_on_continue=vlm.adapter.drop_on_continue,
                    prefill_position_ids=positions)
    out = runner.generate(_post_image_edits(0.0, 3.0, layers=frozenset({0})), max_new_tokens=1)
    expected = reference_scaled_logits(references[family], inputs, positions, image_cols, rows=rows, factors=factors,
                                       decode=True, layers={0})[:, -1]
    assert torch.isfinite(out.first_logits).all()
    assert (out.first_logits - expected).abs().max().item() <= 1e-4


def test_post_image_rows_never_rerun_the_last_token_only(tiny_vlms, image):
    """Given a prefilled prompt, an edit of every row after the image runs the whole prompt under it (a re-run of
    the last token would leave the earlier rows unedited); the prefix stays usable."""
    vlm = tiny_vlms["llava"]
    inputs, image_cols, positions = _prepare(vlm, [image], [QUESTION])
    runner = Runner(vlm.model, inputs, image_cols, drop_on_continue=vlm.adapter.drop_on_continue,
                    prefill_position_ids=positions)
    prefix = runner.prefill()
    with_prefix = runner.generate(_post_image_edits(), prefix=prefix)
    assert torch.equal(with_prefix.first_logits, runner.generate(_post_image_edits()).first_logits)
    assert torch.isfinite(runner.generate((ScaleLogits(alpha=2.0),), prefix=prefix).first_logits).all()  # usable


def test_before_image_columns_and_row_blocks_equal_row_by_row():
    image_cols = torch.tensor([[0, 0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    before = ScaleLogits(keys="before_image").key_columns(image_cols)
    assert before.int().tolist() == [[1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0], [0] * 7]

    class RowByRow(ScaleLogits):
        columnwise = False

    scores = torch.randn(3, 4, 5, 7)  # (B, H, R, K)
    for keys in ("image", "text", "before_image"):
        for alpha, heads in ((0.5, None), ((2.0, 0.0, 3.0), (1, 3))):
            block = ScaleLogits(alpha=alpha, keys=keys, heads=heads).apply_rows(scores, image_cols)
            one_by_one = RowByRow(alpha=alpha, keys=keys, heads=heads).apply_rows(scores, image_cols)
            assert torch.equal(block, one_by_one)
            for r in range(5):
                assert torch.equal(block[:, :, r], ScaleLogits(alpha=alpha, keys=keys, heads=heads).apply(
                    scores[:, :, r], image_cols))


# --- the contract: the engine refuses a site or side stream the method did not declare ----------------------------
DECLARED = [(name, kind, what) for name, cls in sorted(vf.METHODS.items())
            for kind, declared in (("site", cls.sites), ("side_stream", cls.side_streams)) for what in sorted(declared)]


def _declaring(name: str, kind: str | None = None, what: str | None = None):
    """Method ``name`` (its defaults) declaring nothing (``kind`` None), or all it declares but ``what``."""
    cls = vf.METHODS[name]
    sites = frozenset() if kind is None else cls.sites - ({what} if kind == "site" else set())
    streams = frozenset() if kind is None else cls.side_streams - ({what} if kind == "side_stream" else set())
    undeclared = type(f"Undeclared{cls.__name__}", (cls,), {"sites": sites, "side_streams": streams})
    return undeclared(cls.Params())


@pytest.mark.parametrize("name", sorted(name for name, cls in vf.METHODS.items() if cls.sites or cls.side_streams))
def test_a_method_declaring_nothing_is_refused(name, tiny_vlms, image):
    vlm = tiny_vlms["qwen2_5_vl"]
    with pytest.raises(RuntimeError, match=f"method '{name}' uses the .* without declaring it"):
        _declaring(name).apply(vlm.prepare([image], [QUESTION]), max_new_tokens=2)
    vf.method(name).apply(vlm.prepare([image], [QUESTION]), max_new_tokens=2)  # as declared: runs


@pytest.mark.parametrize("name, kind, what", DECLARED)
def test_each_declared_site_and_stream_is_needed_and_enforced(name, kind, what, tiny_vlms, image):
    vlm = tiny_vlms["qwen2_5_vl"]
    with pytest.raises(RuntimeError, match=f"method '{name}' uses the {kind} '{what}' without declaring it"):
        _declaring(name, kind, what).apply(vlm.prepare([image], [QUESTION]), max_new_tokens=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_unedited_answer_equals_a_plain_sdpa_forward(family, tiny_vlms, image):
    """The prompt, positions and mask visfocus builds are the model's own: its unedited first-token logits equal a
    plain transformers forward with SDPA of the same inputs (one row, and a left-padded batch of two). transformers'
    SDPA attention ignores attention-logit soft-capping (Gemma 2's ``attn_logit_softcapping``), which the model's
    eager attention applies and visfocus applies too: for a text config that soft-caps, the plain forward is eager."""
    from transformers import AutoModelForImageTextToText

    vlm = tiny_vlms[family]
    softcaps = getattr(vlm.model.config.get_text_config(), "attn_logit_softcapping", None) is not None
    plain = AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir(family), attn_implementation="eager" if softcaps else "sdpa").eval()
    for images, questions in (([image], [QUESTION]),
                              ([image, make_image(160, 256, seed=2)], [QUESTION, "Is the dog under the table?"])):
        answers = vlm.answer_batch(images, questions, max_new_tokens=1)
        inputs = vlm.adapter.encode(images, questions)
        positions = vlm.adapter.prefill_position_ids(inputs)
        with torch.no_grad():
            expected = plain(**inputs, **({} if positions is None else {"position_ids": positions})).logits[:, -1]
        for b, answer in enumerate(answers):
            assert (answer.first_token_logits - expected[b].float()).abs().max().item() <= 1e-5
