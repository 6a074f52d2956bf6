"""AdaptVis: one prefill plus a re-run of the last prompt token equals the naive two-full-prefill reference."""

from __future__ import annotations

import pytest
import torch

import visfocus as vf
from visfocus.interventions.adaptvis import option_token_ids
from visfocus.steer.variants import separate_passes
from visfocus.testing import FAMILIES

QUESTION = "Where is the cup in relation to the table? Answer with left, right, on or under."
OPTIONS = ("left", "right", "on", "under")


def _naive(vlm, image, question, params: dict, max_new_tokens=3):
    """Two full passes: the unedited answer gives the confidence, then ScalingVis with the chosen α."""
    plain = vlm.answer(image, question, max_new_tokens=1)
    smooth = plain.confidence < params["threshold"]
    alpha = params["alpha_low"] if smooth else params["alpha_high"]
    edited = vlm.answer(image, question, method=vf.method("scaling_vis", alpha=alpha), max_new_tokens=max_new_tokens)
    return edited, ("smooth" if smooth else "sharpen"), plain


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("threshold", [0.0, 1.0])  # 0 forces the sharpen branch, 1 the smooth one
def test_adaptvis_equals_two_pass_reference(family, threshold, tiny_vlms, image):
    vlm = tiny_vlms[family]
    params = {"alpha_low": 0.2, "alpha_high": 3.0, "threshold": threshold}
    out = vlm.answer(image, QUESTION, method=vf.method("adaptvis", **params), max_new_tokens=3)
    expected, branch, plain = _naive(vlm, image, QUESTION, params)
    assert out.extras["branch"] == branch == ("sharpen" if threshold == 0.0 else "smooth")
    assert out.extras["alpha_used"] == (0.2 if branch == "smooth" else 3.0)
    assert out.extras["confidence_used"] == pytest.approx(plain.confidence, abs=1e-6)
    assert (out.first_token_logits - expected.first_token_logits).abs().max().item() <= 1e-4
    assert out.text == expected.text


def test_rows_of_a_batch_take_their_own_branch(tiny_vlms, image, other_image):
    vlm = tiny_vlms["qwen2_5_vl"]
    questions = [QUESTION, "Is the dog on the table or under the table, left of the cat? Answer yes or no."]
    plain = [vlm.answer(img, q, max_new_tokens=1).confidence for img, q in zip([image, other_image], questions)]
    assert plain[0] != plain[1]
    params = {"alpha_low": 0.3, "alpha_high": 2.5, "threshold": (plain[0] + plain[1]) / 2}
    batch = vlm.answer_batch([image, other_image], questions, method=vf.method("adaptvis", **params),
                             max_new_tokens=2)
    assert {a.extras["branch"] for a in batch} == {"smooth", "sharpen"}
    for b, (img, q) in enumerate(zip([image, other_image], questions)):
        expected, branch, _ = _naive(vlm, img, q, params, max_new_tokens=2)
        assert batch[b].extras["branch"] == branch
        assert (batch[b].first_token_logits - expected.first_token_logits).abs().max().item() <= 1e-4


def test_costs_one_forward(tiny_vlms, image):
    """The unedited row and both branches run in the prompt's one forward, two more columns than a plain answer."""
    vlm = tiny_vlms["llava"]
    plain = vlm.answer(image, QUESTION, max_new_tokens=1, share_prefix=False)
    out = vlm.answer(image, QUESTION, method=vf.method("adaptvis"), max_new_tokens=1, share_prefix=False)
    assert out.cost["forward_passes"] == plain.cost["forward_passes"] == 1
    assert out.cost["prefill_tokens"] == plain.cost["prefill_tokens"] + 2


def test_separate_passes_cost_one_prefill_plus_one_token(tiny_vlms, image):
    vlm = tiny_vlms["llava"]
    plain = vlm.answer(image, QUESTION, max_new_tokens=1, share_prefix=False)
    with separate_passes():
        out = vlm.answer(image, QUESTION, method=vf.method("adaptvis"), max_new_tokens=1, share_prefix=False)
    assert out.cost["forward_passes"] == 2  # the prefill and the re-run of the last prompt token
    assert out.cost["prefill_tokens"] == plain.cost["prefill_tokens"] + 1


def test_confidence_modes_are_defined_as_documented(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    logits = vlm.answer(image, QUESTION, max_new_tokens=1).first_token_logits  # (V,)
    probs = torch.softmax(logits, dim=-1)
    ids = option_token_ids(vlm.processor.tokenizer, OPTIONS)
    expected = {"max_prob": probs.max().item(), "max_logit": logits.max().item(),
                "option_prob": probs[ids].max().item()}
    for mode, value in expected.items():
        out = vlm.answer(image, QUESTION, options=OPTIONS, max_new_tokens=1,
                         method=vf.method("adaptvis", confidence=mode, threshold=0.5 if mode != "max_logit" else 3.0))
        assert out.extras["confidence_used"] == pytest.approx(value, rel=1e-5)
        assert out.extras["confidence_mode"] == mode
    assert expected["max_logit"] != pytest.approx(expected["max_prob"])
    assert expected["option_prob"] <= expected["max_prob"]


def test_option_tokens_cover_spellings_and_true_false(tiny_vlms):
    tok = tiny_vlms["llava"].processor.tokenizer
    ids = option_token_ids(tok, ("yes", "no"))
    for word in ("yes", "Yes", " no", "True", " False"):
        assert tok.encode(word, add_special_tokens=False)[0] in ids


def test_bad_parameters_are_rejected(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match="threshold"):
        vf.method("adaptvis", threshold=1.5)
    vf.method("adaptvis", confidence="max_logit", threshold=12.0)  # a logit-scale threshold is fine there
    with pytest.raises(vf.VisfocusError, match="confidence must be one of"):
        vf.method("adaptvis", confidence="entropy")
    with pytest.raises(vf.VisfocusError, match="alpha_low"):
        vf.method("adaptvis", alpha_low=-0.1)
    with pytest.raises(vf.VisfocusError, match="needs the answer options"):
        tiny_vlms["llava"].answer(image, QUESTION, method=vf.method("adaptvis", confidence="option_prob"))


def _official_branch(confidence: float, threshold: float) -> str:
    """The official code's rule (llava15.py): C = np.round(C, 2); weight1 (smooth) if C < threshold."""
    import numpy as np

    return "smooth" if np.round(confidence, 2) < threshold else "sharpen"


def test_two_decimal_rounding_takes_the_official_branch_exactly_where_rounding_matters(tiny_vlms, image):
    vlm = tiny_vlms["llava"]
    # the confidence AdaptVis compares (its own unedited row; a plain answer's may differ in the last float bits)
    c = vlm.answer(image, QUESTION, max_new_tokens=1, method=vf.method("adaptvis")).extras["confidence_used"]
    rounded = round(c, 2)
    assert rounded != c
    # thresholds on both sides of C and of round(C, 2), and between them: only there do the two rules disagree
    low, high = min(c, rounded), max(c, rounded)
    between = (low + high) / 2
    for threshold in (low - 0.01, between, high + 0.01, rounded, c):
        params = {"alpha_low": 0.2, "alpha_high": 3.0, "threshold": threshold}
        raw = vlm.answer(image, QUESTION, max_new_tokens=1, method=vf.method("adaptvis", **params))
        official = vlm.answer(image, QUESTION, max_new_tokens=1,
                              method=vf.method("adaptvis", confidence_decimals=2, **params))
        assert official.extras["branch"] == _official_branch(c, threshold)
        assert official.extras["confidence_compared"] == pytest.approx(rounded)
        assert raw.extras["branch"] == ("smooth" if c < threshold else "sharpen")
        assert (raw.extras["branch"] != official.extras["branch"]) == (low < threshold <= high)
        assert official.extras["alpha_used"] == (0.2 if official.extras["branch"] == "smooth" else 3.0)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_confidence_decimals_must_be_a_whole_number(value):
    with pytest.raises(vf.VisfocusError, match="confidence_decimals must be an integer ≥ 0 or None"):
        vf.method("adaptvis", confidence_decimals=value)
