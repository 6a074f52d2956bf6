"""DeCo: the candidate cut, the anchor choice and the blend by hand; a run's scores (first and later steps) checked
against an independent computation from a plain forward with all hidden states on every family; a batch against each
row alone; α = 0 against the plain model; the default layer fraction; sampling after the correction; one error per bad
parameter.

The tiny fixtures have 2 decoder layers, so hidden-state indices 0 (embedding output) and 1 (input of decoder layer 1)
are the only anchor candidates there, and the default fraction "0.625:0.9" holds none of them; the default itself is
checked on an 8-layer variant built here (on 2 layers it falls back to layer 1, ``resolve_layers``)."""

from __future__ import annotations

import math

import pytest
import torch

import visfocus as vf
import visfocus.interventions.deco  # noqa: F401  (registers "deco")
from visfocus.api import Sampling
from visfocus.interventions.base import parse_method_args, resolve_layers
from visfocus.interventions.deco import DEFAULT_LAYERS, deco_scores
from visfocus.steer.forced import eos_token_ids
from visfocus.testing import FAMILIES, fixtures

QUESTIONS = ["Is the cup on the table? Answer with yes or no.", "Where is the dog?"]
TINY = (0, 1)  # every anchor candidate of the 2-layer fixtures
INF = float("inf")


# --- an independent reference: plain forwards, plain Python for the choices -----------------------------------------

def _forward(vlm, inputs, extra_tokens=None):
    """A plain forward over the prompt (and ``extra_tokens`` (B, k) appended) with all hidden states; the positions
    generate gives a left-padded prompt."""
    kwargs = dict(inputs)
    if extra_tokens is not None and extra_tokens.shape[1] > 0:
        k = extra_tokens.shape[1]
        kwargs["input_ids"] = torch.cat([inputs["input_ids"], extra_tokens], dim=1)
        appended = {"attention_mask": 1, **vlm.adapter.appended_token_inputs}  # as generate extends them
        for key in ("attention_mask", "mm_token_type_ids", "token_type_ids"):
            if key in kwargs:
                fill = appended.get(key, 0)
                kwargs[key] = torch.cat([inputs[key], inputs[key].new_full((inputs[key].shape[0], k), fill)], dim=1)
    positions = vlm.adapter.prefill_position_ids(kwargs)  # None for Qwen: the model computes its M-RoPE positions
    if positions is not None:
        kwargs["position_ids"] = positions
    with torch.no_grad():
        return vlm.model(**kwargs, output_hidden_states=True)


def _reference_step(vlm, out, layers, alpha, top_k, top_p):
    """From one plain forward: per row the DeCo scores (V,), the candidate ids, l* and m — written with loops."""
    norm, lm_head = vlm.adapter.final_norm, vlm.adapter.lm_head
    final = out.logits[:, -1].float()  # (B, V)
    with torch.no_grad():
        anchor = {j: lm_head(norm(out.hidden_states[j][:, -1])).float() for j in layers}  # transformers' indexing
    rows = []
    for b in range(final.shape[0]):
        probs = torch.softmax(final[b].double(), -1).tolist()
        order = sorted(range(len(probs)), key=lambda t: -probs[t])[:top_k]
        kept, total = [], 0.0
        for t in order:  # the token that reaches top_p is kept, then stop
            kept.append(t)
            total += probs[t]
            if total >= top_p:
                break
        best, best_layer = -1.0, None
        for j in layers:  # strict >: the earlier layer (then the more probable candidate) wins a tie
            q = torch.softmax(anchor[j][b].double(), -1)
            for t in kept:
                if q[t].item() > best:
                    best, best_layer = q[t].item(), j
        scores = torch.full_like(final[b], -INF)
        for t in kept:
            scores[t] = final[b, t] + alpha * best * anchor[best_layer][b, t]
        rows.append((scores, kept, best_layer, best))
    return rows


def _assert_scores(got, expected, tol=1e-4):
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
    finite = torch.isfinite(expected)
    assert (got[finite] - expected[finite]).abs().max().item() <= tol


# --- the pure function ----------------------------------------------------------------------------------------------

def _kept(scores):
    return torch.isfinite(scores).nonzero().squeeze(-1).tolist()


@pytest.mark.parametrize("top_k, top_p, kept", [
    (20, 0.4, [0]),  # 0.5 ≥ 0.4 at once: the most probable token only
    (20, 0.7, [0, 1]),  # 0.5 < 0.7 ≤ 0.75: the token that crosses top_p is kept
    (20, 0.8, [0, 1, 2]),  # 0.75 < 0.8 ≤ 0.875
    (20, 0.99, [0, 1, 2, 3, 4]),  # 0.9375 < 0.99 ≤ 1.0
    (2, 0.9, [0, 1]),  # never reached within the top 2: all k kept
    (3, 0.99, [0, 1, 2]),
    (1, 0.99, [0]),
])
def test_candidates_are_the_top_k_cut_where_the_cumulative_probability_reaches_top_p(top_k, top_p, kept):
    final = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]]).log()  # (1, 5) cumulative 0.5, 0.75, 0.875, 0.9375, 1
    scores, _, _ = deco_scores(final, {0: torch.zeros(1, 5)}, alpha=0.5, top_k=top_k, top_p=top_p)
    assert _kept(scores[0]) == kept


def test_anchor_choice_and_blend_by_hand():
    alpha = 0.6
    final = torch.tensor([[0.6, 0.3, 0.05, 0.05], [0.25, 0.25, 0.25, 0.25]]).log()  # (B=2, V=4)
    anchors = {
        3: torch.tensor([[0.1, 0.2, 0.6, 0.1], [0.0, 0.0, 0.0, 0.0]]).log(),  # row 0: 0.6 is outside C, so max 0.2
        5: torch.tensor([[0.3, 0.1, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0]]).log(),  # row 0: 0.3 on token 0
    }
    anchors[3][1] = torch.tensor([2.0, 0.0, 0.0, 0.0])  # row 1: the same logits in both layers, an exact tie
    anchors[5][1] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    scores, layers, max_probs = deco_scores(final, anchors, alpha=alpha, top_k=20, top_p=0.85)
    # row 0: cumulative 0.6, 0.9 → C = {0, 1}; l* = 5, m = 0.3 (layer 3's 0.6 is on token 2, outside C)
    # row 1: cumulative 0.25, 0.5, 0.75, 1.0 → C = everything; tie between layers 3 and 5 → the earlier, 3;
    #        m = e²/(e² + 3) = 7.389056 / 10.389056 = 0.711235
    assert layers == [5, 3]
    assert max_probs[0] == pytest.approx(0.3, abs=1e-6) and max_probs[1] == pytest.approx(0.711235, abs=1e-6)
    # raw logits blended: z_L + α·m·z_{l*}; row 0 tokens 0, 1: ln 0.6 + 0.18·ln 0.3, ln 0.3 + 0.18·ln 0.1
    #   = −0.510826 − 0.216714 = −0.727540, −1.203973 − 0.414465 = −1.618438
    torch.testing.assert_close(scores[0], torch.tensor([-0.727540, -1.618438, -INF, -INF]), atol=1e-5, rtol=0)
    # row 1: ln 0.25 + 0.6·0.711235·(2, 0, 0, 0) = −1.386294 + (0.853482, 0, 0, 0)
    torch.testing.assert_close(scores[1], torch.tensor([-0.532812, -1.386294, -1.386294, -1.386294]), atol=1e-5,
                               rtol=0)


def test_alpha_zero_is_the_plain_logits_on_the_candidates():
    gen = torch.Generator().manual_seed(0)
    final, anchors = torch.randn(3, 50, generator=gen), {j: torch.randn(3, 50, generator=gen) for j in (1, 4)}
    scores, _, _ = deco_scores(final, anchors, alpha=0.0, top_k=20, top_p=0.9)
    kept = torch.isfinite(scores)
    assert torch.equal(scores[kept], final[kept])
    assert kept[torch.arange(3), final.argmax(-1)].all()  # the greedy token is always a candidate


# --- on the tiny models ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("top_k, top_p", [(20, 0.9), (200, 0.3)])
def test_first_step_scores_match_an_independent_reference(family, top_k, top_p, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    batch = vlm.prepare([image, other_image], QUESTIONS)  # left padded
    result = vf.method("deco", layers=TINY, top_k=top_k, top_p=top_p).apply(batch, max_new_tokens=1)
    plain = _forward(vlm, batch.runner.inputs)
    expected = _reference_step(vlm, plain, TINY, 0.6, top_k, top_p)
    assert batch.runner.inputs["attention_mask"].min() == 0  # one row really is padded
    # the first-token logits are the model's own, the scores DeCo's
    assert (result.generation.first_logits - plain.logits[:, -1].float()).abs().max().item() <= 1e-5
    for b, (scores, _, layer, m) in enumerate(expected):
        _assert_scores(result.generation.first_scores[b], scores)
        assert result.extras[b]["anchor_layer"] == layer
        assert result.extras[b]["anchor_prob"] == pytest.approx(m, abs=1e-5)
        assert int(result.generation.new_tokens[b, 0]) == int(scores.argmax())  # the scores chose the token
    assert set(expected[0][1]) != set(expected[1][1])  # the rows' candidates differ
    if top_k == 200:  # the top_p cut acts inside the top k
        assert all(len(kept) < top_k for _, kept, _, _ in expected)
    assert not hasattr(result, "alpha_used") and all("alpha_used" not in row for row in result.extras)
    assert result.extras[0]["candidate_layers"] == list(TINY)


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_5_vl"])
def test_every_step_matches_the_reference_and_its_anchor_layer_is_recorded(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    batch = vlm.prepare([image, other_image], QUESTIONS)
    result = vf.method("deco", layers=TINY, alpha=1.0).apply(batch, max_new_tokens=3)
    tokens = result.generation.new_tokens  # (B, T)
    eos = eos_token_ids(vlm.model.generation_config)
    for b in range(2):
        row = tokens[b].tolist()
        steps = next((t + 1 for t, tok in enumerate(row) if tok in eos), len(row))
        assert len(result.extras[b]["anchor_layers"]) == steps
        assert result.extras[b]["anchor_layers"][0] == result.extras[b]["anchor_layer"]
    for t in range(tokens.shape[1]):  # step t sees the prompt and the first t generated tokens
        expected = _reference_step(vlm, _forward(vlm, batch.runner.inputs, tokens[:, :t]), TINY, 1.0, 20, 0.9)
        for b, (scores, _, layer, _) in enumerate(expected):
            if t < len(result.extras[b]["anchor_layers"]):
                assert int(tokens[b, t]) == int(scores.argmax())
                assert result.extras[b]["anchor_layers"][t] == layer


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_a_batch_equals_each_row_alone(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    method = vf.method("deco", layers=TINY)
    together = method.apply(vlm.prepare([image, other_image], QUESTIONS), max_new_tokens=3)
    for b, (im, question) in enumerate(zip([image, other_image], QUESTIONS, strict=True)):
        alone = method.apply(vlm.prepare([im], [question]), max_new_tokens=3)
        steps = len(alone.extras[0]["anchor_layers"])
        assert together.generation.new_tokens[b, :steps].tolist() == alone.generation.new_tokens[0, :steps].tolist()
        _assert_scores(together.generation.first_scores[b], alone.generation.first_scores[0], tol=1e-5)
        _assert_scores(together.generation.first_logits[b], alone.generation.first_logits[0], tol=1e-5)
        got, want = together.extras[b], alone.extras[0]
        assert got["anchor_layers"] == want["anchor_layers"] and got["anchor_layer"] == want["anchor_layer"]
        assert got["anchor_prob"] == pytest.approx(want["anchor_prob"], abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_answers_equal_the_plain_model(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    plain = vlm.answer_batch([image, other_image], QUESTIONS, max_new_tokens=4)
    same = vlm.answer_batch([image, other_image], QUESTIONS, method=vf.method("deco", alpha=0.0, layers=TINY),
                            max_new_tokens=4)
    assert [a.text for a in same] == [a.text for a in plain]
    for a, p in zip(same, plain, strict=True):  # the scores: the plain logits on C, −inf elsewhere
        kept = torch.isfinite(a.first_token_scores)
        assert kept[p.first_token_logits.argmax()] and not kept.all()
        assert (a.first_token_scores[kept] - p.first_token_logits[kept]).abs().max().item() <= 1e-5
        assert (a.first_token_logits - p.first_token_logits).abs().max().item() <= 1e-5  # the model's own logits


def test_sampling_warps_the_deco_scores_after_the_correction(tiny_vlms, image, other_image):
    vlm, method = tiny_vlms["llava"], vf.method("deco", layers=TINY)
    greedy = method.apply(vlm.prepare([image, other_image], QUESTIONS), max_new_tokens=1)
    batch = vlm.prepare([image, other_image], QUESTIONS)
    batch.runner.generation_defaults = Sampling(temperature=2.0).generation_settings()  # as answer_batch sets it
    torch.manual_seed(0)
    sampled = method.apply(batch, max_new_tokens=1)
    # the temperature divides the DeCo scores: it did not act on the logits DeCo cut and blended
    for b in range(2):
        _assert_scores(sampled.generation.first_scores[b], greedy.generation.first_scores[b] / 2.0, tol=1e-6)
    assert torch.equal(sampled.generation.first_logits, greedy.generation.first_logits)  # the raw logits: unwarped
    assert sampled.extras == greedy.extras
    chosen = sampled.generation.new_tokens[:, 0]  # (B,) sampled from the candidates
    assert torch.isfinite(sampled.generation.first_scores[torch.arange(2), chosen]).all()
    out = vlm.answer(image, QUESTIONS[1], method=method, max_new_tokens=2, sampling=Sampling(temperature=1.0, seed=3))
    assert out.extras["anchor_layer"] in TINY  # the public API lets DeCo sample


# --- the default layers ---------------------------------------------------------------------------------------------

def test_the_default_fraction_is_the_reference_layers_on_32_layers():
    assert resolve_layers(DEFAULT_LAYERS, 32) == tuple(range(20, 29))  # the reference's early_exit_layers
    assert vf.method("deco").resolved(32) == {"layers": list(range(20, 29))}
    assert resolve_layers(DEFAULT_LAYERS, 28) == tuple(range(18, 26))  # 0.625·28 = 17.5, 0.9·28 = 25.2
    assert resolve_layers(DEFAULT_LAYERS, 8) == (5, 6, 7)
    assert resolve_layers(DEFAULT_LAYERS, 4) == (3,)
    assert vf.methods()["deco"] == {"alpha": 0.6, "top_k": 20, "top_p": 0.9, "layers": "0.625:0.9"}


def test_fractions_resolve_on_the_tiny_models(tiny_vlms, image):
    vlm = tiny_vlms["llava"]

    def layers(**kwargs):
        return vlm.answer(image, QUESTIONS[0], method=vf.method("deco", **kwargs),
                          max_new_tokens=1).extras["candidate_layers"]
    assert layers() == [1]  # the default holds no layer of 2; layer 1's span [0.5, 1) overlaps it most
    assert layers(layers="0:0.5") == [0]
    assert layers(layers="0:1") == [0, 1]
    assert layers(layers=None) == [0, 1]  # None: every layer


@pytest.fixture(scope="module")
def deep_llava(tmp_path_factory):
    """The tiny LLaVA with 8 decoder layers, so that the default fraction holds layers 5, 6, 7."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(fixtures.TEXT, "num_hidden_layers", 8)
        path = fixtures.build_tiny("llava", tmp_path_factory.mktemp("deep") / "llava")
    return vf.load(str(path))


def test_the_default_fraction_on_an_8_layer_model_matches_the_reference(deep_llava, image, other_image):
    vlm = deep_llava
    assert vlm.num_layers == 8
    batch = vlm.prepare([image, other_image], QUESTIONS)
    result = vf.method("deco").apply(batch, max_new_tokens=1)
    plain = _forward(vlm, batch.runner.inputs)
    expected = _reference_step(vlm, plain, (5, 6, 7), 0.6, 20, 0.9)
    assert (result.generation.first_logits - plain.logits[:, -1].float()).abs().max().item() <= 1e-5
    for b, (scores, _, layer, m) in enumerate(expected):
        assert result.extras[b]["candidate_layers"] == [5, 6, 7]
        _assert_scores(result.generation.first_scores[b], scores)
        assert result.extras[b]["anchor_layer"] == layer
        assert result.extras[b]["anchor_prob"] == pytest.approx(m, abs=1e-5)


# --- parameters -----------------------------------------------------------------------------------------------------

def test_command_line_arguments_are_typed():
    assert parse_method_args("deco", "alpha=0.5,top_k=10,top_p=0.8,layers=20;21") == {
        "alpha": 0.5, "top_k": 10, "top_p": 0.8, "layers": (20, 21)}
    assert parse_method_args("deco", "layers=0.5:0.75") == {"layers": "0.5:0.75"}
    assert parse_method_args("deco", "layers=none") == {"layers": None}


@pytest.mark.parametrize("kwargs, name", [
    ({"alpha": -0.1}, "alpha"), ({"alpha": math.nan}, "alpha"), ({"alpha": True}, "alpha"),
    ({"top_k": 0}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_k": True}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": -0.2}, "top_p"), ({"top_p": math.inf}, "top_p"),
    ({"layers": ()}, "layers"), ({"layers": (True,)}, "layers"), ({"layers": (0.5,)}, "layers"),
    ({"layers": "middle"}, "layers"), ({"layers": "0.9:0.1"}, "layers"), ({"layers": 3}, "layers"),
])
def test_bad_parameters_raise_one_clear_error(kwargs, name):
    with pytest.raises(vf.VisfocusError, match=name) as err:
        vf.method("deco", **kwargs)
    assert "\n" not in str(err.value)


def test_layers_beyond_the_decoder_raise_one_clear_error(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match=r"out of range.*0\.\.1") as err:
        tiny_vlms["qwen3_vl"].answer(image, QUESTIONS[0], method=vf.method("deco", layers=(1, 2)))
    assert "\n" not in str(err.value)
