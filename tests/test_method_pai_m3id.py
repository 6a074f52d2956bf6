"""PAI and M3ID against an independent eager reference: a second copy of each tiny model whose attention is written
here (explicit q·kᵀ, mask, the PAI edit z + α|z| on the image columns of the last query row of every forward in the
chosen layers, softmax), decoded greedily by hand, with the text-only prompt built from the prompt *text* (the image
placeholder cut out of the string) and run by its own plain forward."""

from __future__ import annotations

import math

import pytest
import torch
from eager_reference import text_forward, text_only_ids
from transformers import AttentionInterface, AutoModelForImageTextToText, LogitsProcessor, LogitsProcessorList
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import visfocus as vf
import visfocus.interventions.m3id  # noqa: F401  (registration)
import visfocus.interventions.pai  # noqa: F401  (registration)
from visfocus.interventions.base import resolve_layers
from visfocus.testing import FAMILIES

NAME = "visfocus_test_pai_eager"
SETTINGS: dict = {"alpha": 0.0, "layers": None, "magnitude": "per_head", "image_cols": None, "edit_first": True}
QUESTION = "Is there a cup on the table? Answer yes or no."
STEPS = 3
TOL = 1e-4


def pai_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                            **kwargs):
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)  # (B, H, K, D)
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling  # (B, H, Q, K)
    if softcap is not None:  # the layer's attention-logit soft-capping (Gemma 2), as its eager attention
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        logits = logits + attention_mask[:, :, :, :kv_len].float()
    else:
        logits = logits.masked_fill(~torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len), float("-inf"))
    layers = SETTINGS["layers"]
    prompt_forward = q_len == kv_len
    if SETTINGS["alpha"] and (layers is None or module.layer_idx in layers) and \
            (SETTINGS["edit_first"] or not prompt_forward):
        cols = SETTINGS["image_cols"]  # (B, S) the prompt's image columns
        cols = torch.cat([cols, cols.new_zeros(cols.shape[0], max(0, kv_len - cols.shape[1]))], 1)[:, :kv_len]
        z = logits[:, :, -1, :]  # (B, H, K) the last query row, after the mask (as the reference code)
        magnitude = z.abs() if SETTINGS["magnitude"] == "per_head" else z.abs().mean(1, keepdim=True)
        logits[:, :, -1, :] = torch.where(cols[:, None, :], z + SETTINGS["alpha"] * magnitude, z)
    probs = torch.softmax(logits, dim=-1)
    return torch.matmul(probs, value.float()).to(query.dtype).transpose(1, 2).contiguous(), probs


@pytest.fixture(scope="module")
def references(tiny_dirs):
    AttentionInterface.register(NAME, pai_reference_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return {family: AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation={"": "sdpa", "text_config": NAME, "vision_config": "sdpa"}
    ).eval() for family, path in tiny_dirs.items()}


class _Force(LogitsProcessor):
    """Makes the reference's generate take the given tokens (its raw logits are still reported)."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens, self.step = tokens, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[self.step]] = 0.0
        self.step += 1
        return forced


@torch.no_grad()
def _greedy(model, inputs: dict, steps: int, alpha: float, image_cols, layers, magnitude="per_head",
            edit_first: bool = True, tokens: list[int] | None = None):
    """Per step, the (1, V) raw logits of the reference's own greedy ``generate`` (or of ``tokens`` forced), with the
    PAI edit on the last query row of every forward (``edit_first=False``: not in the prompt's forward)."""
    SETTINGS.update(alpha=alpha, layers=layers, magnitude=magnitude, image_cols=image_cols, edit_first=edit_first)
    processors = LogitsProcessorList([_Force(tokens)]) if tokens else None
    out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, logits_processor=processors)
    return [logits.float() for logits in out.logits]


@torch.no_grad()
def _text_only(model, vlm, tokens: list[int]):
    """(1, V) logits of the text-only prompt followed by ``tokens``, one plain forward (no edit)."""
    SETTINGS.update(alpha=0.0, edit_first=True)
    ids = text_only_ids(vlm, QUESTION)
    ids = torch.cat([ids, torch.tensor([tokens], dtype=ids.dtype)], dim=1) if tokens else ids
    return text_forward(model)(input_ids=ids).logits[:, -1].float()


def _run(vlm, image, method, steps=STEPS):
    batch = vlm.prepare([image], [QUESTION])
    result = method.apply(batch, max_new_tokens=steps)
    return batch, result


def _inputs(batch):
    return {k: v for k, v in batch.runner.inputs.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("magnitude", ["per_head", "head_mean"])
def test_pai_edit_equals_the_eager_reference_at_every_step(family, magnitude, tiny_vlms, references, image):
    vlm = tiny_vlms[family]
    method = vf.method("pai", alpha=0.5, gamma=1.0, magnitude=magnitude, layers=None)
    batch, result = _run(vlm, image, method)
    expected = _greedy(references[family], _inputs(batch), STEPS, 0.5, batch.runner.image_cols, None, magnitude)
    plain = _greedy(references[family], _inputs(batch), 1, 0.0, batch.runner.image_cols, None)
    assert len(result.generation.step_logits) == len(expected) == STEPS
    for got, want in zip(result.generation.step_logits, expected):
        assert (got.float() - want).abs().max().item() <= TOL
    assert (expected[0] - plain[0]).abs().max().item() > 1e-3  # the edit really moves the logits


@pytest.mark.parametrize("family", ["qwen3_vl", "llava"])
def test_pai_default_layers_are_the_third_to_the_last(family, tiny_vlms, references, image):
    vlm = tiny_vlms[family]
    assert resolve_layers("0.0625:1", 32) == tuple(range(2, 32))  # the reference's range(2, 32)
    layers = resolve_layers("0.0625:1", vlm.num_layers)
    batch, result = _run(vlm, image, vf.method("pai", gamma=1.0), steps=2)
    expected = _greedy(references[family], _inputs(batch), 2, 0.2, batch.runner.image_cols, set(layers))
    for got, want in zip(result.generation.step_logits, expected):
        assert (got.float() - want).abs().max().item() <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_pai_contrast_with_the_text_only_prompt_equals_the_reference(family, tiny_vlms, references, image):
    vlm, reference = tiny_vlms[family], references[family]
    gamma, alpha = 1.5, 0.5
    batch, result = _run(vlm, image, vf.method("pai", alpha=alpha, gamma=gamma, layers=None))
    conditional = _greedy(reference, _inputs(batch), 1, alpha, batch.runner.image_cols, None)[0]
    scores = result.generation.first_scores
    # the first-token logits are the edited model's raw logits: PAI's without the contrast (γ = 1)
    _, edited = _run(vlm, image, vf.method("pai", alpha=alpha, gamma=1.0, layers=None), steps=1)
    # (up to float rounding: with the contrast the text-only stream decodes as rows of the same, wider batch)
    assert (result.generation.first_logits - edited.generation.first_logits).abs().max().item() <= 1e-5
    assert (result.generation.first_logits - conditional).abs().max().item() <= TOL
    l_c = conditional.log_softmax(-1)
    l_u = _text_only(reference, vlm, []).log_softmax(-1)
    expected = (gamma * l_c - (gamma - 1) * l_u).masked_fill(l_c < l_c.max() + math.log(0.1), float("-inf"))
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(scores), finite) and finite.sum() >= 1
    assert (scores[finite] - expected[finite]).abs().max().item() <= TOL
    # the second step: both streams fed the chosen token
    token = int(result.generation.new_tokens[0, 0])
    conditional_2 = _greedy_with(reference, batch, [token], alpha)
    l_c2, l_u2 = conditional_2.log_softmax(-1), _text_only(reference, vlm, [token]).log_softmax(-1)
    expected_2 = (gamma * l_c2 - (gamma - 1) * l_u2).masked_fill(l_c2 < l_c2.max() + math.log(0.1), float("-inf"))
    finite_2 = torch.isfinite(expected_2)
    step_2 = _method_scores_at_step(vlm, image, vf.method("pai", alpha=alpha, gamma=gamma, layers=None), 1)
    assert (step_2[finite_2] - expected_2[finite_2]).abs().max().item() <= TOL


def _greedy_with(model, batch, tokens: list[int], alpha: float):
    """(1, V) raw logits after the prompt and ``tokens``, the PAI edit on the last row of every forward."""
    if not tokens:
        return _greedy(model, _inputs(batch), 1, alpha, batch.runner.image_cols, None)[0]
    return _greedy(model, _inputs(batch), len(tokens) + 1, alpha, batch.runner.image_cols, None,
                   tokens=[*tokens, 0])[-1]


def _method_scores_at_step(vlm, image, method, step: int) -> torch.Tensor:
    """(1, V) the scores the method decoded from at ``step`` (captured from generate's processed scores)."""
    captured = []
    original = vlm.model.generate

    def generate(*args, generation_config, **kwargs):
        generation_config.output_scores = True
        out = original(*args, generation_config=generation_config, **kwargs)
        captured.append(out.scores)
        return out

    vlm.model.generate = generate
    try:
        _run(vlm, image, method, steps=step + 1)
    finally:
        vlm.model.generate = original
    return captured[-1][step][:1].float()  # the question's row (a side stream decoded as rows follows it)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_next"])
def test_first_token_unedited_differs_from_the_default_exactly_on_the_first_token(family, tiny_vlms, references,
                                                                                   image):
    vlm, reference = tiny_vlms[family], references[family]
    kwargs = {"alpha": 0.8, "gamma": 1.0, "layers": None}
    batch, quirk = _run(vlm, image, vf.method("pai", first_token_unedited=True, **kwargs))
    _, default = _run(vlm, image, vf.method("pai", **kwargs))
    _, unedited = _run(vlm, image, vf.method("pai", alpha=0.0, gamma=1.0))
    # the first token's row is not edited: the plain model's first logits, unlike the default's
    assert (quirk.generation.step_logits[0] - unedited.generation.step_logits[0]).abs().max().item() <= TOL
    assert (quirk.generation.step_logits[0] - default.generation.step_logits[0]).abs().max().item() > 1e-3
    # the decoding rows are edited: the reference with the edit from the second token on
    expected = _greedy(reference, _inputs(batch), STEPS, 0.8, batch.runner.image_cols, None, edit_first=False)
    for got, want in zip(quirk.generation.step_logits, expected):
        assert (got.float() - want).abs().max().item() <= TOL


def test_pai_identity_is_the_plain_model(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    plain = vlm.answer(image, QUESTION, max_new_tokens=4)
    out = vlm.answer(image, QUESTION, method=vf.method("pai", alpha=0.0, gamma=1.0), max_new_tokens=4)
    assert torch.equal(out.first_token_logits, plain.first_token_logits) and out.text == plain.text
    assert torch.equal(out.first_token_scores, plain.first_token_scores)


@pytest.mark.parametrize("family", FAMILIES)
def test_m3id_equals_the_reference_mixture_at_every_step(family, tiny_vlms, references, image):
    vlm, reference = tiny_vlms[family], references[family]
    decay, beta = 0.5, 0.1
    method = vf.method("m3id", decay=decay, beta=beta)
    batch, result = _run(vlm, image, method)
    tokens = result.generation.new_tokens[0].tolist()
    for t in range(1, STEPS + 1):  # t = 1 at the first answer token
        conditional = _greedy_with(reference, batch, tokens[:t - 1], 0.0)
        l_c, l_u = conditional.log_softmax(-1), _text_only(reference, vlm, tokens[:t - 1]).log_softmax(-1)
        gamma_t = math.exp(-decay * t)
        expected = (l_c + (1 - gamma_t) / gamma_t * (l_c - l_u)).masked_fill(
            conditional < conditional.max() + math.log(beta), float("-inf"))
        got = result.generation.first_scores if t == 1 else _method_scores_at_step(vlm, image, method, t - 1)
        finite = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(got), finite)
        assert (got[finite] - expected[finite]).abs().max().item() <= TOL
        assert int(expected.argmax()) == tokens[t - 1]
        if t == 1:  # the first-token logits are the plain model's own
            assert (result.generation.first_logits - conditional).abs().max().item() <= TOL
            _, plain = _run(vlm, image, vf.method("baseline"), steps=1)
            assert (result.generation.first_logits - plain.generation.first_logits).abs().max().item() <= 1e-5


def test_m3id_identity_is_the_plain_model(tiny_vlms, image):
    vlm = tiny_vlms["llava"]
    plain = vlm.answer(image, QUESTION, max_new_tokens=4)
    out = vlm.answer(image, QUESTION, method=vf.method("m3id", decay=0.0), max_new_tokens=4)
    assert torch.equal(out.first_token_logits, plain.first_token_logits) and out.text == plain.text
    assert torch.equal(out.first_token_scores, plain.first_token_scores)


def test_a_left_padded_batch_answers_as_each_row_alone(tiny_vlms, image, other_image):
    vlm = tiny_vlms["qwen2_5_vl"]
    questions = [QUESTION, "What colour is the large object in the middle of the picture?"]
    for method in (vf.method("pai", alpha=0.5, gamma=1.5), vf.method("m3id", decay=0.3)):
        batch = vlm.answer_batch([image, other_image], questions, method, max_new_tokens=3)
        for b, (img, q) in enumerate(zip([image, other_image], questions)):
            alone = vlm.answer(img, q, method=method, max_new_tokens=3)
            finite = torch.isfinite(alone.first_token_scores)
            assert torch.equal(torch.isfinite(batch[b].first_token_scores), finite)
            diff = (batch[b].first_token_scores[finite] - alone.first_token_scores[finite]).abs().max().item()
            assert diff <= TOL and batch[b].text == alone.text
            assert (batch[b].first_token_logits - alone.first_token_logits).abs().max().item() <= TOL


@pytest.mark.parametrize("method, kwargs, message", [
    ("pai", {"alpha": -0.1}, "alpha must be ≥ 0.0"), ("pai", {"gamma": 0.5}, "gamma must be ≥ 1.0"),
    ("pai", {"magnitude": "max"}, "magnitude must be one of per_head, head_mean"),
    ("pai", {"layers": "0.5:0.2"}, "needs 0 ≤ a < b ≤ 1"), ("pai", {"layers": "middle"}, "fraction range"),
    ("pai", {"first_token_unedited": "yes"}, "first_token_unedited must be true or false"),
    ("m3id", {"decay": -1.0}, "decay must be ≥ 0.0"), ("m3id", {"beta": 0.0}, r"beta must be in \(0, 1\]"),
])
def test_bad_parameters_are_one_clear_error(method, kwargs, message):
    with pytest.raises(vf.VisfocusError, match=message) as err:
        vf.method(method, **kwargs)
    assert "\n" not in str(err.value)
