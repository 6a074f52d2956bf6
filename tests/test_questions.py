"""Questions that would break or silently change a prompt — text the tokenizer reads as a special token, invalid
Unicode, a prompt longer than the model's context — are one ``VisfocusError`` each, before any forward pass, through
``answer``, ``answer_batch`` and ``score_continuations``, for every family."""

from __future__ import annotations

import re

import pytest
import torch

import visfocus as vf
from visfocus.testing import FAMILIES

QUESTION = "Is the cup on the table? Answer with yes or no."


@pytest.fixture
def forward_calls():
    """The names of the modules run (any forward pass of any module) while the test runs."""
    calls: list[str] = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: calls.append(type(module).__name__))
    yield calls
    handle.remove()


def special_texts(vlm: vf.VLM) -> list[str]:
    """The family's special-token texts, from its own tokenizer and processor: every added token marked special, and
    the processor's image placeholder."""
    tokenizer = vlm.processor.tokenizer
    texts = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    texts.add(image_text(vlm))
    assert tokenizer.eos_token in texts and image_text(vlm) in texts
    return sorted(texts)


def image_text(vlm: vf.VLM) -> str:
    """The processor's image placeholder text (InstructBLIP's processor keeps it as an ``AddedToken``)."""
    token = vlm.processor.image_token
    return str(getattr(token, "content", token))


def prompt_length(vlm: vf.VLM, question: str) -> int:
    """Tokens of the chat prompt with the image placeholder as one token (the processor's tokenizer defaults)."""
    return len(vlm.processor.tokenizer(vlm.adapter.build_prompt(question))["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_in_a_question_are_refused_naming_the_token(family, tiny_vlms, image, forward_calls):
    vlm = tiny_vlms[family]
    for token in special_texts(vlm):
        question = f"Is the cup {token} on the table?"
        named = re.escape(f"contains {token!r}") + ".*" + re.escape(repr(question))
        with pytest.raises(vf.VisfocusError, match=named):
            vlm.answer(image, question, max_new_tokens=1)
        with pytest.raises(vf.VisfocusError, match=re.escape(repr(token))):
            vlm.answer_batch([image, image], [QUESTION, question], max_new_tokens=1)
        with pytest.raises(vf.VisfocusError, match=re.escape(f"the context contains {token!r}")):
            vlm.score_continuations([image], [question], [" yes"])
        with pytest.raises(vf.VisfocusError, match=re.escape(repr(token))):
            vlm.check_questions([QUESTION, question])
    assert forward_calls == []


@pytest.mark.parametrize("family", FAMILIES)
def test_a_long_question_is_cut_in_the_message(family, tiny_vlms, image):
    token = image_text(tiny_vlms[family])
    question = "Where is the cup " + "really " * 30 + token
    with pytest.raises(vf.VisfocusError) as err:
        tiny_vlms[family].answer(image, question)
    assert repr(question[:79] + "…") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_invalid_unicode_is_refused_naming_the_position(family, tiny_vlms, image, forward_calls):
    vlm = tiny_vlms[family]
    with pytest.raises(vf.VisfocusError, match="invalid Unicode at position 5 .U\\+D800"):
        vlm.answer(image, "left \ud800 of the cup?")
    with pytest.raises(vf.VisfocusError, match="context has invalid Unicode at position 0"):
        vlm.score_continuations([image], ["\udfff is it?"], [" yes"])
    with pytest.raises(vf.VisfocusError, match="continuation has invalid Unicode at position 3"):
        vlm.score_continuations([image], [QUESTION], ["yes\ud800"])
    assert forward_calls == []


@pytest.mark.parametrize("family", FAMILIES)
def test_a_question_longer_than_the_context_is_refused_before_any_forward_pass(family, tiny_vlms, image,
                                                                            forward_calls):
    vlm = tiny_vlms[family]
    limit = vlm.model.config.get_text_config().max_position_embeddings
    assert vlm.context_length == limit
    question = "cup " * limit
    with pytest.raises(vf.VisfocusError, match=f"over the model's context of {limit} tokens"):
        vlm.answer(image, question, max_new_tokens=1)
    with pytest.raises(vf.VisfocusError, match=f"over the model's context of {limit} tokens"):
        vlm.score_continuations([image], [question], [" yes"])
    assert forward_calls == []


@pytest.mark.parametrize("family", FAMILIES)
def test_a_prompt_that_only_its_image_and_new_tokens_push_past_the_context_is_refused(family, tiny_vlms, image,
                                                                                   forward_calls):
    vlm = tiny_vlms[family]
    limit = vlm.context_length
    words = limit
    while prompt_length(vlm, "cup " * words) >= limit:  # the text alone fits, with room for one new token or more
        words -= prompt_length(vlm, "cup " * words) - limit + 1
    question = "cup " * words
    new_tokens = limit - prompt_length(vlm, question)
    assert vlm.question_problems([question], max_new_tokens=new_tokens) == [None]
    with pytest.raises(vf.VisfocusError, match="with its image's tokens.*over the model's context") as err:
        vlm.answer(image, question, max_new_tokens=new_tokens)
    assert f"+ {new_tokens} new tokens" in str(err.value)
    assert forward_calls == []


@pytest.mark.parametrize("family", FAMILIES)
def test_question_problems_reports_each_question(family, tiny_vlms):
    vlm = tiny_vlms[family]
    limit = vlm.context_length
    token = image_text(vlm)
    questions = [QUESTION, f"what is {token}?", "fine \ud800", "cup " * limit]
    problems = vlm.question_problems(questions)
    assert problems[0] is None and token in problems[1] and "Unicode" in problems[2] and "context" in problems[3]
    fits_alone = vlm.question_problems([QUESTION], max_new_tokens=limit)[0]
    assert fits_alone is not None and f"+ {limit} new tokens" in fits_alone
    with pytest.raises(vf.VisfocusError, match=re.escape(repr(token))):
        vlm.check_questions(questions)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_ordinary_question_still_answers(family, tiny_vlms, image, forward_calls):
    vlm = tiny_vlms[family]
    vlm.check_questions([QUESTION, "Where is the <b>cup</b>? <3 [image] {image}"])
    out = vlm.answer(image, "Where is the <b>cup</b>? <3 [image] {image} ü ✓", max_new_tokens=2)
    assert isinstance(out.text, str) and forward_calls  # the counter sees forward passes
    scores = vlm.score_continuations([image], [QUESTION], [" yes"])
    assert len(scores) == 1 and scores[0].logprob <= 0
