"""PaliGemma 2: one whole-image view, the processor's own prompt (no chat template), 1-based positions, a prefix-LM
mask the engine must keep, and Gemma 2's soft-capping applied wherever the engine computes logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText
from transformers.masking_utils import causal_mask_function

from visfocus.interventions.batch import Batch
from visfocus.steer import attention as attention_module
from visfocus.steer import prefix as prefix_module
from visfocus.testing import make_image, tiny_model_dir
from visfocus.testing.spec_paligemma import PALIGEMMA_IMAGE_SIZE, PALIGEMMA_PATCH

QUESTION = "Where is the cup in relation to the table?"
SIDE = PALIGEMMA_IMAGE_SIZE // PALIGEMMA_PATCH


@pytest.fixture(scope="module")
def eager():
    """The fixture under transformers' eager attention: the plain forward of a soft-capped model (its SDPA does not
    cap)."""
    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir("paligemma"), attn_implementation="eager").eval()


def _plain_first_logits(model, adapter, images, questions) -> torch.Tensor:
    inputs = adapter.encode(images, questions)
    with torch.no_grad():
        return model(**inputs, position_ids=adapter.prefill_position_ids(inputs)).logits[:, -1].float()  # (B, V)


@pytest.mark.parametrize("size", [(224, 160), (160, 256), (84, 84)])
def test_one_view_covers_the_whole_resized_image(size, tiny_vlms):
    adapter = tiny_vlms["paligemma"].adapter
    image = make_image(*size)
    inputs = adapter.encode([image], [QUESTION])
    [layout] = adapter.layouts(inputs, [image])
    [[view]] = layout.images
    assert (view.name, view.rows, view.cols) == ("image", SIDE, SIDE)
    assert view.columns.tolist() == list(range(SIDE * SIDE))  # the image comes first, before BOS
    boxes = view.boxes()  # (36, 4) row-major
    w, h = size
    assert boxes[0].tolist() == [0.0, 0.0, w / SIDE, h / SIDE]
    assert np.allclose(boxes[-1], [w - w / SIDE, h - h / SIDE, w, h])
    assert np.allclose(boxes[1], [w / SIDE, 0.0, 2 * w / SIDE, h / SIDE])  # row-major: the next column first


def test_prompt_is_image_bos_question_newline_and_positions_count_from_one(tiny_vlms):
    vlm = tiny_vlms["paligemma"]
    adapter, tok = vlm.adapter, vlm.processor.tokenizer
    inputs = adapter.encode([make_image(224, 160), make_image(160, 256)], [QUESTION, "Where is the dog?"])
    assert "labels" not in inputs and "token_type_ids" in inputs
    question = tok(QUESTION + "\n", add_special_tokens=False)["input_ids"]
    row = inputs["input_ids"][0].tolist()
    assert row == [adapter.image_token_id] * SIDE * SIDE + [tok.bos_token_id] + question
    assert inputs["token_type_ids"][0].tolist() == [0] * len(row)  # the whole prompt is the bidirectional prefix
    positions = adapter.prefill_position_ids(inputs)  # (B, S)
    mask = inputs["attention_mask"].bool()
    assert not mask[1].all()  # the shorter row is left padded
    for b in range(2):
        assert positions[b][mask[b]].tolist() == list(range(1, int(mask[b].sum()) + 1))


def test_text_only_prompt_is_bos_question_newline(tiny_vlms):
    vlm = tiny_vlms["paligemma"]
    adapter, tok = vlm.adapter, vlm.processor.tokenizer
    row = adapter.encode([make_image(224, 160)], [QUESTION])["input_ids"][0].tolist()
    expected = [tok.bos_token_id] + tok(QUESTION + "\n", add_special_tokens=False)["input_ids"]
    assert adapter.text_only_ids(row) == expected
    assert adapter.text_position_ids(torch.tensor([[0, 1, 1]])).tolist() == [[1, 1, 2]]


def test_the_shared_prefix_would_end_after_bos_but_sharing_is_refused(tiny_vlms, image, other_image):
    vlm = tiny_vlms["paligemma"]
    adapter = vlm.adapter
    row = adapter.encode([image], [QUESTION])["input_ids"][0].tolist()
    assert adapter.shared_prefix_length(row) == SIDE * SIDE + 1  # the image tokens and BOS
    questions = [QUESTION, "Where is the dog?"]
    _, sharing = Batch._encode(adapter, [image, image], questions, prefix_module.PrefixStore())
    assert sharing is None  # prefix-LM: the image tokens attend to the question
    assert adapter.prefix_lm and not vlm.prepare([image, other_image], questions).runner.rerun_last_token


def test_a_prefix_lm_never_reruns_only_the_last_prompt_token(tiny_vlms, image):
    """An edit of the last prompt row reaches the earlier rows in later layers, so ``generate(prefix=...)`` runs the
    whole prompt under the edit (AdaptVis' reuse is then as exact as a fresh edited prefill)."""
    from visfocus.steer import ScaleLogits

    runner = tiny_vlms["paligemma"].prepare([image], [QUESTION]).runner
    prefix = runner.prefill()
    before = runner.cost.prefill_tokens
    reused = runner.generate((ScaleLogits(alpha=2.0),), max_new_tokens=1, prefix=prefix)
    assert runner.cost.prefill_tokens - before == runner.prompt_len  # the whole prompt, not one token
    fresh = runner.generate((ScaleLogits(alpha=2.0),), max_new_tokens=1)
    assert torch.equal(reused.first_logits, fresh.first_logits)


def test_dropping_the_prefix_lm_mask_is_caught(tiny_vlms, eager, image, monkeypatch):
    """The engine attends through the mask transformers builds with the registered mask function: bidirectional over
    the prompt. Registered as plain causal instead, the first-token logits leave the plain forward by far more than
    the tolerance, so the equality tests would catch a lost prefix-LM mask."""
    vlm = tiny_vlms["paligemma"]
    plain = _plain_first_logits(eager, vlm.adapter, [image], [QUESTION])[0]
    kept = vlm.answer(image, QUESTION, max_new_tokens=1).first_token_logits
    assert (kept - plain).abs().max().item() <= 1e-5

    real_mask = attention_module.sdpa_mask

    def causal_only(*args, **kwargs):
        kwargs["mask_function"] = causal_mask_function  # drops the prefix block (and the window: longer than here)
        return real_mask(*args, **kwargs)

    monkeypatch.setattr(attention_module, "sdpa_mask", causal_only)
    try:
        attention_module.register()
        dropped = vlm.answer(image, QUESTION, max_new_tokens=1).first_token_logits
    finally:
        monkeypatch.undo()
        attention_module.register()
    assert (dropped - plain).abs().max().item() > 1e-2
    assert (vlm.answer(image, QUESTION, max_new_tokens=1).first_token_logits - plain).abs().max().item() <= 1e-5


def test_soft_capping_is_applied_as_eager_applies_it(tiny_vlms, eager, image):
    """The engine's unedited answer is eager's, not the uncapped attention's (transformers' SDPA ignores
    attention-logit soft-capping; Gemma 2 refuses SDPA for that reason); the adapter's LM head caps its logits as the
    model caps its own output (DoLa and DeCo read premature layers through it)."""
    vlm = tiny_vlms["paligemma"]
    uncapped_attention = AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir("paligemma"), attn_implementation="eager").eval()
    for layer in uncapped_attention.model.language_model.layers:
        layer.self_attn.attn_logit_softcapping = None
    got = vlm.answer(image, QUESTION, max_new_tokens=1).first_token_logits
    assert (got - _plain_first_logits(eager, vlm.adapter, [image], [QUESTION])[0]).abs().max().item() <= 1e-5
    without_cap = _plain_first_logits(uncapped_attention, vlm.adapter, [image], [QUESTION])[0]
    assert (got - without_cap).abs().max().item() > 1e-3
    inputs = vlm.adapter.encode([image], [QUESTION])
    with torch.no_grad():
        out = vlm.model(**inputs, position_ids=vlm.adapter.prefill_position_ids(inputs), output_hidden_states=True)
        head = vlm.adapter.lm_head(vlm.adapter.final_norm(out.hidden_states[-1][:, -1]))  # (1, V)
        uncapped = vlm.model.lm_head(vlm.adapter.final_norm(out.hidden_states[-1][:, -1]))  # (1, V)
    cap = vlm.model.config.get_text_config().final_logit_softcapping
    assert (head - out.logits[:, -1]).abs().max().item() <= 1e-5
    assert head.abs().max().item() < cap < uncapped.abs().max().item() + cap  # capped, and the cap bites
    assert (head - uncapped).abs().max().item() > 1e-2
