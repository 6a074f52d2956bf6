"""The model's own logits processors run where each correcting method's official code runs them: after the
correction for VCD, DoLa, DeCo and M3ID (their official code applies ``logits_processor`` and then the warpers to the
corrected scores), and for PAI before it, as transformers runs the custom processor its official code passes to
``generate``, with the warpers after.

For every method at the logits site (from the registry) × every processor a generation config sets — repetition
penalty, no-repeat n-gram, min new tokens, bad words, suppressed tokens, and the sampling warpers where the method
samples — a whole decode of a left-padded batch is compared with an independent reference: plain full forwards over
the prompt and the tokens so far (no cache, no engine), the correction written here from each paper's equation, and
transformers' processor classes built here and applied in the official order. Equal: the tokens, and every step's
scores (fp32, max abs ≤ 1e-4, the same −inf set). Where sampling, both draw from torch's generator seeded alike.

Each row's processors read its own tokens only, as for the row alone (the official code decodes one sample at a time;
transformers' batched processors would also read a row's padding: the no-repeat n-gram bans the pad token of a
padded row)."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import pytest
import torch
from eager_reference import append_tokens, text_forward, text_only_ids
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import visfocus as vf
from visfocus.api import Sampling
from visfocus.interventions import METHODS
from visfocus.interventions.vcd import noised_pixels
from visfocus.steer.forced import eos_token_ids
from visfocus.testing import FAMILIES as ALL_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("llava", "qwen2_vl")  # a 1-D and an M-RoPE family; the order is the same code on every family
QUESTIONS = ["Is the cup on the table? Answer with yes or no.", "Where is the dog?"]
STEPS = 4
TOL = 1e-4
SEED = 0
SAMPLING = {"temperature": 0.7, "top_k": 5, "top_p": 0.8}

# Each correcting method's official code: does the model's processor list run after the correction?
OFFICIAL_AFTER = {
    "vcd": True,  # DAMO-NLP-SG/VCD vcd_sample.py: cd_logits = logits_processor(...); logits_warper(...)
    "dola": True,  # transformers' _dola_decoding / voidism/DoLa: logits_processor on the contrasted logits
    "deco": True,  # zjunlp/DeCo deco_greedy_search: the processor list on the blended, masked final_token_logits
    "m3id": True,  # sangminwoo/AvisC avisc_sample.py, use_m3id: logits_processor, logits_warper on m3id_logit
    "pai": False,  # LALBJ/PAI: CFGLogits passed to generate (transformers 4.37) runs after transformers' own
}
# the parameters each method runs with here: layers 0 and 1 are every candidate of the 2-layer fixtures; PAI without
# its attention edit, so that the contrast alone is compared; M3ID's λ large enough to move the scores in 4 steps
PARAMS = {"vcd": {"alpha": 1.0, "beta": 0.1}, "dola": {"layers": (0, 1)}, "deco": {"layers": (0, 1)},
          "m3id": {"decay": 0.5}, "pai": {"alpha": 0.0, "gamma": 1.5}}
CORRECTING = sorted(name for name, cls in METHODS.items() if "logits" in cls.sites)
PROCESSORS = ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "bad_words_ids", "suppress_tokens",
              "sampling")


def _samples(name: str) -> bool:
    cls = METHODS[name]
    return cls.supports_sampling or "sample" in {f.name for f in dataclasses.fields(cls.Params)}


CASES = [(name, processor) for name in CORRECTING for processor in PROCESSORS
         if processor != "sampling" or _samples(name)]


def test_every_correcting_method_has_a_reference_here():
    assert set(CORRECTING) == set(OFFICIAL_AFTER) == set(PARAMS)
    for name in CORRECTING:  # the declaration the engine reads is the official order
        assert METHODS[name].processors_after_correction is OFFICIAL_AFTER[name]


# --- the independent reference --------------------------------------------------------------------------------------

@torch.no_grad()
def _forward(vlm, inputs: dict, tokens: torch.Tensor, **replace):
    """A plain forward over the prompt and ``tokens`` (B, k), all hidden states, the positions generate gives."""
    kwargs = {**append_tokens(inputs, tokens, vlm.adapter.appended_token_inputs), **replace}
    positions = vlm.adapter.prefill_position_ids(kwargs)  # None: the model computes its own (M-RoPE)
    if positions is not None:
        kwargs["position_ids"] = positions
    return vlm.model(**kwargs, output_hidden_states=True)


@torch.no_grad()
def _text_only_logits(vlm, tokens: torch.Tensor) -> torch.Tensor:
    """(B, V) each row's text-only prompt (image cut out of the prompt text) followed by its tokens, alone."""
    rows = []
    for b, question in enumerate(QUESTIONS):
        ids = torch.cat([text_only_ids(vlm, question), tokens[b:b + 1]], dim=1)
        rows.append(text_forward(vlm.model)(input_ids=ids).logits[:, -1].float())
    return torch.cat(rows)


def _cut(scores: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    return scores.masked_fill(reference < reference.max(-1, keepdim=True).values + math.log(beta), -math.inf)


def _jsd(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    p, q = log_p.exp(), log_q.exp()
    m = (p + q) / 2
    return 0.5 * (p * (log_p - m.log())).nansum(-1) + 0.5 * (q * (log_q - m.log())).nansum(-1)


def _vcd(vlm, inputs, tokens, out, scores, step, p):
    noised = _forward(vlm, inputs, tokens, pixel_values=noised_pixels(inputs, p.noise_step, p.seed))
    contrasted = (1 + p.alpha) * scores - p.alpha * noised.logits[:, -1].float()
    return _cut(contrasted, scores, p.beta)


@torch.no_grad()
def _dola(vlm, inputs, tokens, out, scores, step, p):
    log_final = scores.log_softmax(-1)  # (B, V)
    rows = []
    for b in range(scores.shape[0]):
        premature = {j: vlm.adapter.lm_head(out.hidden_states[j][b, -1]).float().log_softmax(-1) for j in p.layers}
        divergence = {j: float(_jsd(log_final[b], log_q)) for j, log_q in premature.items()}
        chosen = max(p.layers, key=lambda j: (divergence[j], -p.layers.index(j)))  # ties: the earlier layer
        rows.append(_cut(log_final[b] - premature[chosen], log_final[b], p.relative_top))
    return torch.stack(rows)


@torch.no_grad()
def _deco(vlm, inputs, tokens, out, scores, step, p):
    rows = []
    for b in range(scores.shape[0]):
        probs = scores[b].softmax(-1)
        order = probs.argsort(descending=True)[:p.top_k].tolist()
        candidates, total = [], 0.0
        for token in order:  # up to and including the token that reaches top_p
            candidates.append(token)
            total += float(probs[token])
            if total >= p.top_p:
                break
        best = (-1.0, None)
        for layer in p.layers:
            anchor = vlm.adapter.lm_head(vlm.adapter.final_norm(out.hidden_states[layer][b, -1])).float()
            top = max(float(anchor.softmax(-1)[c]) for c in candidates)
            if top > best[0]:
                best = (top, anchor)
        blended = torch.full_like(scores[b], -math.inf)
        blended[candidates] = scores[b, candidates] + p.alpha * best[0] * best[1][candidates]
        rows.append(blended)
    return torch.stack(rows)


def _m3id(vlm, inputs, tokens, out, scores, step, p):
    gamma = math.exp(-p.decay * (step + 1))
    l_c, l_u = scores.log_softmax(-1), _text_only_logits(vlm, tokens).log_softmax(-1)
    return _cut(l_c + (1 - gamma) / gamma * (l_c - l_u), scores, p.beta)


def _pai(vlm, inputs, tokens, out, scores, step, p):
    l_c, l_u = scores.log_softmax(-1), _text_only_logits(vlm, tokens).log_softmax(-1)
    return _cut(p.gamma * (l_c - l_u) + l_u, l_c, 0.1)


CORRECTIONS = {"vcd": _vcd, "dola": _dola, "deco": _deco, "m3id": _m3id, "pai": _pai}


def _processors(settings: dict, prompt_len: int, eos: list[int]) -> list:
    """The non-warper processors ``settings`` asks for, in transformers' order, for one unpadded row."""
    out = []
    if settings.get("repetition_penalty", 1.0) != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"]))
    if settings.get("no_repeat_ngram_size"):
        out.append(NoRepeatNGramLogitsProcessor(settings["no_repeat_ngram_size"]))
    if settings.get("bad_words_ids"):
        out.append(NoBadWordsLogitsProcessor(settings["bad_words_ids"], eos_token_id=eos))
    if settings.get("min_new_tokens"):
        out.append(MinNewTokensLengthLogitsProcessor(prompt_len, settings["min_new_tokens"], eos))
    if settings.get("suppress_tokens"):
        out.append(SuppressTokensLogitsProcessor(settings["suppress_tokens"]))
    return out


def _warpers(sampling: dict | None) -> list:
    if sampling is None:
        return []
    return [TemperatureLogitsWarper(sampling["temperature"]), TopKLogitsWarper(sampling["top_k"]),
            TopPLogitsWarper(sampling["top_p"])]


def _apply(processors, ids, scores):
    for processor in processors:
        scores = processor(ids, scores)
    return scores


def _apply_per_row(processors, ids, mask, scores):
    """Each row's processors on its own tokens (its prompt without the padding, then the tokens so far): the row as
    it would decode alone. processors: one list per row; ids: (B, T); mask: (B, S) the prompt's."""
    real = torch.cat([mask.bool(), torch.ones_like(ids[:, mask.shape[1]:], dtype=torch.bool)], 1)  # (B, T)
    return torch.cat([_apply(row, ids[b, real[b]][None], scores[b:b + 1]) for b, row in enumerate(processors)])


def _reference(vlm, inputs, name, params, settings, sampling):
    """Per step (B, V) scores and the (B, T) tokens of a decode in the official order."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    B, eos = ids.shape[0], eos_token_ids(vlm.model.generation_config)
    processors = [_processors(settings, int(mask[b].sum()), eos) for b in range(B)]
    warpers, correct = _warpers(sampling), CORRECTIONS[name]
    tokens, steps = ids.new_zeros((B, 0)), []
    if sampling is not None:
        torch.manual_seed(SEED)
    for step in range(STEPS):
        out = _forward(vlm, inputs, tokens)
        sequence, raw = torch.cat([ids, tokens], 1), out.logits[:, -1].float()
        if OFFICIAL_AFTER[name]:
            scores = _apply_per_row(processors, sequence, mask, correct(vlm, inputs, tokens, out, raw, step, params))
        else:
            processed = _apply_per_row(processors, sequence, mask, raw.clone())
            scores = correct(vlm, inputs, tokens, out, processed, step, params)
        scores = _apply(warpers, sequence, scores)
        steps.append(scores)
        chosen = torch.multinomial(scores.softmax(-1), 1) if sampling is not None else scores.argmax(-1, True)
        tokens = torch.cat([tokens, chosen], 1)
    return torch.stack(steps, 1), tokens  # (B, T, V), (B, T)


# --- the comparison -------------------------------------------------------------------------------------------------

def _settings(vlm, processor: str, inputs) -> dict:
    """What the case sets in the model's generation config; bad words and suppressed tokens are the plain model's
    first-step favourites, so that they bite."""
    favourites = _forward(vlm, inputs, inputs["input_ids"][:, :0]).logits[:, -1].topk(2, dim=-1).indices  # (B, 2)
    return {"repetition_penalty": {"repetition_penalty": 1.8},
            "no_repeat_ngram_size": {"no_repeat_ngram_size": 1},
            "min_new_tokens": {"min_new_tokens": 3},
            "bad_words_ids": {"bad_words_ids": [[t] for t in favourites[:, 0].tolist()]},
            "suppress_tokens": {"suppress_tokens": favourites[:, 1].tolist()},
            "sampling": {}}[processor]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, processor", CASES)
def test_the_models_processors_run_in_the_official_order(name, processor, family, tiny_vlms, image, other_image,
                                                          restore_generation_configs):
    vlm = tiny_vlms[family]
    images = [image, other_image]
    inputs = vlm.prepare(images, QUESTIONS).runner.inputs  # the left-padded batch answer_batch encodes
    settings, sampling, params = _settings(vlm, processor, inputs), None, dict(PARAMS[name])
    for key, value in settings.items():
        setattr(vlm.model.generation_config, key, value)
    call = {}
    if processor == "sampling":
        sampling = SAMPLING
        if METHODS[name].supports_sampling:
            call["sampling"] = Sampling(**SAMPLING, seed=SEED)
        else:  # VCD samples its own way: its seed, the model's warper settings
            params.update(sample=True, seed=SEED)
            for key, value in SAMPLING.items():
                setattr(vlm.model.generation_config, key, value)
    method = vf.method(name, **params)
    answers = vlm.answer_batch(images, QUESTIONS, method, max_new_tokens=STEPS, share_prefix=False,
                               return_scores=True, **call)
    # DoLa's own penalty replaces the model's (its parameter, 1.2 by default)
    reference_settings = {**settings, "repetition_penalty": method.params.repetition_penalty} if name == "dola" \
        else settings
    expected, tokens = _reference(vlm, inputs, name, method.params, reference_settings, sampling)
    for b, answer in enumerate(answers):
        steps = len(answer.tokens)
        assert answer.tokens == tokens[b, :steps].tolist()
        got, want = answer.step_scores, expected[b, :steps]
        assert got.shape == want.shape
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite)
        assert (got[finite] - want[finite]).abs().max().item() <= TOL


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_decodes_under_the_processors_of_its_generation_config(family, tiny_vlms, image,
                                                                             restore_generation_configs):
    """A processor set in ``vlm.model.generation_config`` applies on every family, also where generate hands over to
    a language model with a config of its own (InstructBLIP); the answer's step scores are those it decoded from."""
    vlm = tiny_vlms[family]
    free = vlm.answer(image, QUESTIONS[0], max_new_tokens=2)
    vlm.model.generation_config.suppress_tokens = [free.tokens[0]]
    constrained = vlm.answer(image, QUESTIONS[0], max_new_tokens=2, return_scores=True)
    expected = free.first_token_logits.clone()
    expected[free.tokens[0]] = -math.inf
    assert constrained.tokens[0] == int(expected.argmax()) != free.tokens[0]
    assert torch.equal(constrained.step_scores[0], expected)


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_models_processors_read_each_rows_own_tokens(family, share_prefix, tiny_vlms, image, other_image,
                                                         restore_generation_configs):
    """Padding, at the left or inside the prompt where rows share image prefixes, is not a token the repetition
    penalty or the no-repeat n-gram sees: each row of a batch decodes as it does alone."""
    vlm = tiny_vlms[family]
    vlm.model.generation_config.repetition_penalty = 1.8
    vlm.model.generation_config.no_repeat_ngram_size = 1  # every token read is banned: a pad read would show
    images, questions = [image, image, other_image], [QUESTIONS[0], QUESTIONS[1], "What is left of the cup?"]
    vlm.prefix_store.clear()
    batch = vlm.answer_batch(images, questions, max_new_tokens=STEPS, share_prefix=share_prefix, return_scores=True)
    if share_prefix:
        assert any(answer.cost["shared_prefix_tokens"] for answer in batch)
    for answer, im, question in zip(batch, images, questions, strict=True):
        alone = vlm.answer(im, question, max_new_tokens=STEPS, share_prefix=False, return_scores=True)
        assert answer.tokens == alone.tokens
        finite = torch.isfinite(alone.step_scores)
        assert torch.equal(torch.isfinite(answer.step_scores), finite)
        assert (answer.step_scores[finite] - alone.step_scores[finite]).abs().max().item() <= TOL


# what each method's docstring cites as the place its official code runs the processors
CITED = {"vcd": "``logits_processor`` then ``logits_warper`` on ``cd_logits``",
         "dola": "``logits_processor`` on the contrasted scores",
         "deco": "``deco_greedy_search`` runs its whole ``logits_processor`` list",
         "m3id": "``m3id_logit = logits_processor(input_ids, m3id_logit)``",
         "pai": "passes ``CFGLogits`` to ``generate`` as a custom logits processor"}


@pytest.mark.parametrize("name", CORRECTING)
def test_each_methods_docstring_and_the_docs_state_its_order(name):
    docstring = " ".join(inspect.getmodule(METHODS[name]).__doc__.split())
    assert CITED[name] in docstring
    section = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8").split("### 6.0 ")[1].split("### 6.1 ")[0]
    rows = {line.split("|")[1].split()[0].lower(): line.split("|")[2].strip() for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert rows[name].startswith("after" if OFFICIAL_AFTER[name] else "before")
