"""Sampling (``answer_batch(sampling=...)``) and teacher-forced continuation scoring (``score_continuations``) under
every method, on tiny random models: scores against a plain forward, against each method's own greedy decoding, in
batches of uneven continuations, and one clear error for each kind of bad input."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import visfocus as vf
from visfocus.api import ContinuationScore, Sampling
from visfocus.interventions.base import param_specs
from visfocus.steer.forced import ForcedContinuation
from visfocus.steer.variants import separate_passes
from visfocus.testing import FAMILIES

QUESTIONS = ["Is the cup on the table?", "Where is the dog?", "Describe the image.", "What colour is the cat?"]
TOL = 1e-4

# every registered method, with parameters that change what it does (VEA reads the middle layers, no profile needed)
METHOD_KWARGS = {
    "baseline": {},
    "scaling_vis": {"alpha": 0.5, "decode": True},
    "adaptvis": {},  # tiny models are unsure: the smoothing branch, α = 0.5
    "clvs": {"smoothing": 0.5, "decode": True},
    "dola": {},
    "vcd": {},
    "vea": {},
    "pai": {"alpha": 0.5, "gamma": 1.5, "layers": None},
    "m3id": {"decay": 0.5},
    "vaf": {"enhance": 1.5, "suppress": 0.8, "layers": None},
    "deco": {},
}
SCORING_FAMILIES = ["qwen2_5_vl", "llava"]


def test_every_registered_method_is_scored_here():
    assert set(METHOD_KWARGS) == set(vf.METHODS)


def _images(a, b, n):
    return [a if i % 2 == 0 else b for i in range(n)]


def _method(name):
    return vf.method(name, **METHOD_KWARGS[name])


def _assert_close(got: list[float], expected: list[float], tol: float = TOL) -> None:
    """Equal to ``tol``, relative beyond magnitude 1: M3ID's late steps weigh l_c − l_u by (1 − γ_t)/γ_t, which
    amplifies fp32 rounding into log-probabilities near −70 that differ by 1e-4 between a padded batch and a lone
    row."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g == e) if math.isinf(e) else abs(g - e) <= tol * max(1.0, abs(e)), (got, expected)


# --- the forcing processor on its own -------------------------------------------------------------------------------

def test_forced_continuation_forces_records_and_resets():
    forced = ForcedContinuation([[3, 1], [2]], end_token=0)
    forced.start(prompt_len=5)
    scores = torch.tensor([[0.0, 1.0, 2.0, -math.inf], [5.0, 1.0, 0.0, 0.0]])  # (2, 4)
    first = forced(torch.zeros(2, 5, dtype=torch.long), scores.clone())
    assert first.argmax(-1).tolist() == [3, 2] and torch.isinf(first).sum() == 6  # a ruled-out token is still taken
    second = forced(torch.zeros(2, 6, dtype=torch.long), scores.clone())
    assert second.argmax(-1).tolist() == [1, 0]  # row 1 is over: the end token
    log_probs = scores.log_softmax(-1)
    assert forced.token_logprobs() == [[-math.inf, pytest.approx(float(log_probs[0, 1]))],
                                       [pytest.approx(float(log_probs[1, 2]))]]
    assert forced.greedy() == [False, False]
    forced.start(prompt_len=5)  # a new generate call: the record starts again
    with pytest.raises(RuntimeError, match="decoded 0 of the 2"):
        forced.greedy()


# --- scoring -----------------------------------------------------------------------------------------------------

def _plain_logprobs(vlm, image, question: str, tokens: list[int]) -> list[float]:
    """Log-probabilities of ``tokens`` after the prompt from one plain forward over prompt + continuation (no engine,
    no cache, no steering: the model's own positions)."""
    inputs = vlm.adapter.encode([image], [question])  # one row: no padding
    cont = torch.tensor([tokens])  # (1, T)
    full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], cont], 1))  # (1, S + T)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    if "mm_token_type_ids" in inputs:  # Qwen: the continuation is text
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(cont)], 1)
    S = inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = vlm.model(**full).logits[0, S - 1:-1].float()  # (T, V): the logits that predict each token
    return logits.log_softmax(-1).gather(-1, cont.T)[:, 0].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_baseline_scores_equal_a_plain_forward(family, tiny_vlms, image):
    vlm = tiny_vlms[family]
    question, text = QUESTIONS[0], " yes, it is on the table"
    (score,) = vlm.score_continuations([image], [question], [text])
    assert isinstance(score, ContinuationScore)
    assert score.tokens == vlm.processor.tokenizer("yes, it is on the table", add_special_tokens=False)["input_ids"]
    assert len(score.tokens) > 3
    _assert_close(score.token_logprobs, _plain_logprobs(vlm, image, question, score.tokens))
    assert score.logprob == pytest.approx(sum(score.token_logprobs), abs=1e-6)
    assert score.logprob < 0


def _greedy_run(vlm, images, questions, method, monkeypatch, max_new_tokens=4):
    """The method's greedy answers, with the token ids and processed per-step scores of its (last) ``generate`` call:
    per row, the tokens up to and including the first end-of-sequence token, and (T, V) log-softmaxed scores."""
    calls = []
    original = vlm.model.generate

    def generate(*args, generation_config, **kwargs):
        generation_config.output_scores = True  # the scores the method decoded from, after every processor
        out = original(*args, generation_config=generation_config, **kwargs)
        calls.append((kwargs["input_ids"].shape[1], out))
        return out

    monkeypatch.setattr(vlm.model, "generate", generate)
    # generate from the prompt (AdaptVis's variant columns would start it after the first token; the two paths
    # give the same answers: tests/test_variants.py)
    with separate_passes():
        vlm.answer_batch(images, questions, method, max_new_tokens=max_new_tokens)
    monkeypatch.undo()
    prompt_len, out = calls[-1]
    eos = vlm.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    B = len(questions)  # generate's first B rows (a side stream decoded as rows follows them)
    rows, log_probs = [], torch.stack(out.scores, 1)[:B].float().log_softmax(-1)  # (B, T, V)
    for ids in out.sequences[:B, prompt_len:].tolist():
        end = next((i for i, t in enumerate(ids) if t in eos), len(ids) - 1)
        rows.append(ids[:end + 1])
    return rows, log_probs


@pytest.mark.parametrize("family", SCORING_FAMILIES)
@pytest.mark.parametrize("name", sorted(METHOD_KWARGS))
def test_every_method_scores_its_own_greedy_answer_as_greedy(name, family, tiny_vlms, image, other_image,
                                                             monkeypatch):
    vlm, method = tiny_vlms[family], _method(name)
    images, questions = _images(image, other_image, 2), QUESTIONS[:2]
    rows, log_probs = _greedy_run(vlm, images, questions, method, monkeypatch)
    scores = vlm.score_tokens(images, questions, rows, method)
    for b, (row, score) in enumerate(zip(rows, scores, strict=True)):
        expected = [float(log_probs[b, i, t]) for i, t in enumerate(row)]
        assert score.greedy and score.tokens == row
        _assert_close(score.token_logprobs, expected)
        assert all(math.isfinite(v) for v in expected)
    # another first token (the runner-up of the method's first step): not greedy, the same first distribution
    other = [[int(log_probs[b, 0].topk(2).indices[1]), *row[1:]] for b, row in enumerate(rows)]
    for b, score in enumerate(vlm.score_tokens(images, questions, other, method)):
        assert not score.greedy
        _assert_close(score.token_logprobs[:1], [float(log_probs[b, 0, other[b][0]])])


# every method that acts on the model somewhere (the baseline declares no site)
ACTING = sorted(name for name, cls in vf.METHODS.items() if cls.sites)


@pytest.mark.parametrize("name", ACTING)
def test_scores_differ_between_methods(name, tiny_vlms, image):
    vlm, text = tiny_vlms["qwen2_5_vl"], "yes it is"
    plain = vlm.score_continuations([image], [QUESTIONS[0]], [text])[0].token_logprobs
    assert all(math.isfinite(v) for v in plain)
    steered = vlm.score_continuations([image], [QUESTIONS[0]], [text], _method(name))[0].token_logprobs
    # a method that rules a token out (−inf: DoLa's head set, VCD's and DeCo's cuts) differs by infinitely much
    assert max(abs(a - b) for a, b in zip(steered, plain, strict=True)) > 1e-4, name


@pytest.mark.parametrize("name", sorted(vf.METHODS))
def test_a_batch_of_uneven_continuations_scores_as_each_alone(name, tiny_vlms, image, other_image):
    vlm, method = tiny_vlms["qwen2_5_vl"], _method(name)
    images, questions = _images(image, other_image, 3), QUESTIONS[:3]
    texts = ["yes", " the dog is under the table", "on the left"]
    batched = vlm.score_continuations(images, questions, texts, method)
    assert len({len(s.tokens) for s in batched}) == 3
    for im, q, text, got in zip(images, questions, texts, batched, strict=True):
        (alone,) = vlm.score_continuations([im], [q], [text], method, share_prefix=False)
        assert got.tokens == alone.tokens and got.greedy == alone.greedy
        _assert_close(got.token_logprobs, alone.token_logprobs)


def test_scoring_leaves_the_runner_and_answers_as_they_were(tiny_vlms, image):
    vlm = tiny_vlms["llava"]
    before = vlm.answer(image, QUESTIONS[0], max_new_tokens=4)
    vlm.score_continuations([image], [QUESTIONS[0]], ["no"])
    after = vlm.answer(image, QUESTIONS[0], max_new_tokens=4)
    assert after.text == before.text and torch.equal(after.first_token_logits, before.first_token_logits)
    assert vlm.score_continuations([], [], []) == []


def test_bad_continuations_are_one_clear_error(tiny_vlms, image):
    vlm = tiny_vlms["llava"]
    for empty in ("", "   "):
        with pytest.raises(vf.VisfocusError, match="non-empty string"):
            vlm.score_continuations([image], [QUESTIONS[0]], [empty])
    with pytest.raises(vf.VisfocusError, match="one continuation per context"):
        vlm.score_continuations([image, image], QUESTIONS[:2], ["yes"])
    with pytest.raises(vf.VisfocusError, match="one continuation per context"):
        vlm.score_continuations([image], [QUESTIONS[0]], "yes")
    with pytest.raises(vf.VisfocusError, match="one image per context"):
        vlm.score_continuations([image], QUESTIONS[:2], ["yes", "no"])
    with pytest.raises(vf.VisfocusError, match="context must be a non-empty string"):
        vlm.score_continuations([image], [" "], ["yes"])
    eos = vlm.model.generation_config.eos_token_id
    with pytest.raises(vf.VisfocusError, match="end-of-sequence token before its end"):
        vlm.score_tokens([image], [QUESTIONS[0]], [[5, eos, 6]])
    with pytest.raises(vf.VisfocusError, match="token ids must be integers"):
        vlm.score_tokens([image], [QUESTIONS[0]], [[5, 10**6]])
    with pytest.raises(vf.VisfocusError, match="at least one token"):
        vlm.score_tokens([image], [QUESTIONS[0]], [[]])
    (closed,) = vlm.score_tokens([image], [QUESTIONS[0]], [[5, eos]])  # the end token may close a continuation
    assert closed.tokens == [5, eos] and len(closed.token_logprobs) == 2


# --- sampling ----------------------------------------------------------------------------------------------------

def _texts(vlm, images, method, sampling):
    answers = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=4, sampling=sampling)
    return [a.text for a in answers]


# every method that takes the caller's sampling (VEA answers from a forked batch, which must sample too)
@pytest.mark.parametrize("name", sorted(name for name, cls in vf.METHODS.items() if cls.supports_sampling))
def test_sampling_follows_the_seed(name, tiny_vlms, image, other_image):
    vlm, method = tiny_vlms["qwen3_vl"], _method(name)
    images = _images(image, other_image, len(QUESTIONS))
    greedy = _texts(vlm, images, method, None)
    first = _texts(vlm, images, method, Sampling(temperature=5.0, seed=1))
    assert _texts(vlm, images, method, Sampling(temperature=5.0, seed=1)) == first
    assert _texts(vlm, images, method, Sampling(temperature=5.0, seed=2)) != first
    assert first != greedy
    assert _texts(vlm, images, method, None) == greedy  # sampling leaves nothing behind


def _processors(vlm, image, sampling, monkeypatch) -> list:
    """The logits processors ``generate`` builds for one answer under ``sampling``."""
    built = []
    original = vlm.model._get_logits_processor

    def record(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(vlm.model, "_get_logits_processor", record)
    vlm.answer(image, QUESTIONS[0], max_new_tokens=2, sampling=sampling)
    monkeypatch.undo()
    return list(built[-1])


def test_sampling_builds_only_the_warpers_asked_for(tiny_vlms, image, monkeypatch):
    vlm = tiny_vlms["llava"]
    plain = _processors(vlm, image, Sampling(temperature=2.0), monkeypatch)
    assert [type(p) for p in plain if isinstance(p, (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper))] \
        == [TemperatureLogitsWarper]  # top_k=None: no top-k filter (not transformers' default of 50)
    narrow = _processors(vlm, image, Sampling(temperature=2.0, top_k=5, top_p=0.9), monkeypatch)
    (top_k,) = [p for p in narrow if isinstance(p, TopKLogitsWarper)]
    assert top_k.top_k == 5 and any(isinstance(p, TopPLogitsWarper) for p in narrow)
    assert not any(isinstance(p, TemperatureLogitsWarper) for p in _processors(vlm, image, None, monkeypatch))


def test_a_forked_batch_decodes_as_the_first(tiny_vlms, image, other_image):
    batch = tiny_vlms["llava"].prepare([image], [QUESTIONS[0]])
    batch.runner.generation_defaults = Sampling(temperature=2.0).generation_settings()
    forced = batch.runner.force([[5, 6]])
    forked = batch.fork(images=[other_image])
    assert forked.runner.generation_defaults == batch.runner.generation_defaults and forked.runner.forced is forced


OWN_WAY = sorted(name for name, cls in vf.METHODS.items() if not cls.supports_sampling)


def test_dola_and_vcd_decode_their_own_way():
    assert {"dola", "vcd"} <= set(OWN_WAY)  # DoLa is greedy by definition, VCD samples under its own parameters


@pytest.mark.parametrize("name", OWN_WAY)
def test_methods_that_decode_their_own_way_refuse_sampling(name, tiny_vlms, image):
    vlm, sampling = tiny_vlms["llava"], Sampling(temperature=1.0)
    own_switch = "sample" in {spec.name for spec in param_specs(name)}  # VCD: sample=true (and its seed)
    how = "sample=true" if own_switch else "decodes greedily"
    with pytest.raises(vf.VisfocusError, match=f"'{name}' does not take sampling.*{how}") as err:
        vlm.answer(image, QUESTIONS[0], vf.method(name), sampling=sampling)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"temperature": math.nan}, "temperature"), ({"temperature": True}, "temperature"),
    ({"temperature": 1.0, "top_p": 0.0}, "top_p"), ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
    ({"temperature": 1.0, "top_k": 0}, "top_k"), ({"temperature": 1.0, "top_k": 2.5}, "top_k"),
    ({"temperature": 1.0, "seed": "7"}, "seed"),
])
def test_bad_sampling_is_one_clear_error(kwargs, message):
    with pytest.raises(vf.VisfocusError, match=message) as err:
        Sampling(**kwargs)
    assert "\n" not in str(err.value)


def test_sampling_must_be_a_sampling(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match="sampling must be"):
        tiny_vlms["llava"].answer(image, QUESTIONS[0], sampling={"temperature": 1.0})
