"""Gemma 3: the pooled token grid over the whole (squashed) image, the prompt with one BOS, the text-only prompt, the
sharing split point after ``<end_of_image>`` and its blank line, the sliding window (honoured, and refusing a shared
layout it could span) and the bidirectional image block (the engine keeps it; a causal mask is caught)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eager_reference import load_reference, reference_last_logits
from transformers import AutoModelForImageTextToText
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

import visfocus as vf
from visfocus.steer.attention import ATTN_NAME
from visfocus.steer.prefix import split_layout
from visfocus.testing import make_image, tiny_model_dir
from visfocus.testing.spec_gemma3 import GEMMA3_SLIDING_WINDOW, GEMMA3_TOKENS

FAMILY = "gemma3"
QUESTION = "Where is the cup in relation to the table?"
# long enough that the prompt is wider than the fixture's sliding window: the window binds
LONG_QUESTION = ("Is the red cup on the table left of the dog, and is the blue ball under the chair at the right of "
                 "the cat, or is the small white dog in front of the box behind the lamp? Answer with yes or no.")


@pytest.fixture(scope="module")
def vlm(tiny_vlms):
    return tiny_vlms[FAMILY]


@pytest.fixture(scope="module")
def plain():
    """The same checkpoint under plain transformers SDPA."""
    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir(FAMILY), attn_implementation="sdpa").eval()


def _plain_last_logits(model, vlm, inputs: dict, drop: tuple[str, ...] = ()) -> torch.Tensor:
    """(B, V) last-position logits of ``model`` on ``inputs`` at the positions ``generate`` uses."""
    kwargs = {k: v for k, v in inputs.items() if k not in drop}
    with torch.no_grad():
        return model(**kwargs, position_ids=vlm.adapter.prefill_position_ids(inputs)).logits[:, -1].float()


def _tokens(vlm, ids) -> list[str]:
    return vlm.processor.tokenizer.convert_ids_to_tokens(list(ids))


def test_the_pooled_grid_covers_the_whole_image(vlm):
    """Every image, whatever its aspect, is squashed onto one square: a √N × √N row-major grid over all of it; the
    markers and blank lines around the soft tokens belong to no view."""
    side = int(GEMMA3_TOKENS ** 0.5)
    for w, h in [(224, 160), (160, 256)]:
        image = make_image(w, h)
        inputs = vlm.adapter.encode([image], [QUESTION])
        ids = inputs["input_ids"][0].tolist()
        [layout] = vlm.adapter.layouts(inputs, [image])
        [[view]] = layout.images
        assert (view.name, view.rows, view.cols) == ("image", side, side)
        soft = [i for i, t in enumerate(ids) if t == vlm.adapter.image_token_id]
        assert list(view.columns) == soft and len(soft) == GEMMA3_TOKENS
        assert _tokens(vlm, [ids[soft[0] - 1], ids[soft[-1] + 1]]) == ["<start_of_image>", "<end_of_image>"]
        boxes = view.boxes()  # (N, 4)
        assert np.allclose(boxes[0], [0.0, 0.0, w / side, h / side])
        assert np.allclose(boxes[side + 1], [w / side, h / side, 2 * w / side, 2 * h / side])  # row 1, column 1
        assert np.allclose(boxes[-1], [w - w / side, h - h / side, w, h])
        assert np.isclose(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum(), w * h)


def test_the_prompt_has_one_bos_as_apply_chat_template_tokenizes_it(vlm):
    image = make_image(224, 160)
    ids = vlm.adapter.encode([image], [QUESTION])["input_ids"][0].tolist()
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    real = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids == list(real["input_ids"][0])
    bos = vlm.processor.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1


def test_the_text_only_prompt_is_the_template_without_the_image(vlm):
    inputs = vlm.adapter.encode([make_image(224, 160)], [QUESTION])
    text_only = vlm.adapter.text_only_ids(inputs["input_ids"][0].tolist())
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    prompt = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text_only == vlm.processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tokens = _tokens(vlm, text_only)
    assert not {"<start_of_image>", "<image_soft_token>", "<end_of_image>"} & set(tokens)


def test_the_shared_prefix_ends_after_the_image_and_its_blank_line(vlm):
    image = make_image(224, 160)
    rows = [vlm.adapter.encode([image], [q])["input_ids"][0].tolist() for q in (QUESTION, "Is the dog red?")]
    after = vlm.adapter.template_after_image
    newline = vlm.processor.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    assert list(after) == [vlm.processor.tokenizer.convert_tokens_to_ids("<end_of_image>"), *newline]
    lengths = [vlm.adapter.shared_prefix_length(r) for r in rows]
    last_image = rows[0].index(vlm.adapter.image_token_id) + GEMMA3_TOKENS - 1
    assert lengths == [last_image + 1 + len(after)] * 2
    assert rows[0][:lengths[0]] == rows[1][:lengths[1]] and rows[0][lengths[0]] != rows[1][lengths[1]]


def test_pan_and_scan_is_refused(vlm, monkeypatch):
    monkeypatch.setattr(vlm.processor.image_processor, "do_pan_and_scan", True)
    with pytest.raises(vf.VisfocusError, match="pan-and-scan"):
        vlm.adapter.encode([make_image(224, 160)], [QUESTION])


def test_the_sliding_window_binds_and_is_honoured(vlm, plain, image, other_image):
    """A prompt wider than the window: the engine's answer equals plain SDPA, and a model without the window answers
    otherwise (the window really hides keys); a left-padded batch equals one row at a time."""
    inputs = vlm.adapter.encode([image], [LONG_QUESTION])
    assert inputs["input_ids"].shape[1] > GEMMA3_SLIDING_WINDOW + 8
    expected = _plain_last_logits(plain, vlm, inputs)[0]
    got = vlm.answer(image, LONG_QUESTION, max_new_tokens=1).first_token_logits
    assert (got - expected).abs().max().item() <= 1e-5
    text = plain.config.get_text_config()
    window = text.sliding_window
    try:
        text.sliding_window = 10_000
        unwindowed = _plain_last_logits(plain, vlm, inputs)[0]
    finally:
        text.sliding_window = window
    assert (unwindowed - expected).abs().max().item() > 1e-3
    method = vf.method("scaling_vis", alpha=0.5)
    questions = [LONG_QUESTION, "Where is the dog?"]
    batch = vlm.answer_batch([image, other_image], questions, method=method, max_new_tokens=3)
    for b, (im, q) in enumerate(zip([image, other_image], questions)):
        alone = vlm.answer(im, q, method=method, max_new_tokens=3)
        assert batch[b].text == alone.text
        assert (batch[b].first_token_logits - alone.first_token_logits).abs().max().item() <= 1e-4


def test_scaling_vis_under_a_binding_window_matches_the_eager_reference(vlm, image):
    reference = load_reference(tiny_model_dir(FAMILY))
    out = vlm.answer(image, LONG_QUESTION, method=vf.method("scaling_vis", alpha=2.0), max_new_tokens=1)
    inputs = vlm.adapter.encode([image], [LONG_QUESTION])
    image_cols, positions = vlm.adapter.image_cols(inputs), vlm.adapter.prefill_position_ids(inputs)
    expected = reference_last_logits(reference, inputs, positions, image_cols, 2.0)[0]
    assert (out.first_token_logits - expected).abs().max().item() <= 1e-4


def test_a_shared_layout_wider_than_the_window_is_not_shared(vlm, image, other_image):
    adapter = vlm.adapter
    for questions, fits in (([QUESTION, "Where is the dog?"], True), ([LONG_QUESTION, "Where is the dog?"], False)):
        inputs = adapter.encode([image, image], questions)
        mask = inputs["attention_mask"].bool()
        lengths = [adapter.shared_prefix_length(inputs["input_ids"][b][mask[b]].tolist()) for b in range(2)]
        laid_out, _ = split_layout(inputs, lengths, adapter.image_token_id)
        width = laid_out["input_ids"].shape[1]
        assert (width + 3 <= GEMMA3_SLIDING_WINDOW) == fits
        assert adapter.shares_prefix_exactly(laid_out, 3) == fits
        if fits:  # the decoded tokens count too: a window the prompt fits may still be spanned while decoding
            assert not adapter.shares_prefix_exactly(laid_out, GEMMA3_SLIDING_WINDOW - width + 1)
            assert not adapter.shares_prefix_exactly(laid_out, None)
    questions = [LONG_QUESTION, "Where is the dog?", "Is the cup red?"]
    images = [image, image, other_image]
    vlm.prefix_store.clear()
    shared = vlm.answer_batch(images, questions, max_new_tokens=3)
    alone = vlm.answer_batch(images, questions, max_new_tokens=3, share_prefix=False)
    for s, a in zip(shared, alone):
        assert s.cost["shared_prefix_tokens"] == 0 and s.text == a.text
        assert (s.first_token_logits - a.first_token_logits).abs().max().item() <= 1e-5


def test_the_bidirectional_image_block_is_kept_and_a_causal_mask_is_caught(vlm, plain, image, monkeypatch):
    """The image's soft tokens see each other both ways: the engine matches plain SDPA with ``token_type_ids``;
    with the registered mask function made plain causal it matches the model without them instead, far off."""
    inputs = vlm.adapter.encode([image], [QUESTION])
    assert inputs["input_ids"].shape[1] <= GEMMA3_SLIDING_WINDOW  # the window does not bind: only the block differs
    bidirectional = _plain_last_logits(plain, vlm, inputs)[0]
    causal = _plain_last_logits(plain, vlm, inputs, drop=("token_type_ids",))[0]
    assert (bidirectional - causal).abs().max().item() > 1e-2
    assert (vlm.answer(image, QUESTION, max_new_tokens=1).first_token_logits - bidirectional).abs().max() <= 1e-5

    def causal_only(*args, mask_function=None, allow_is_causal_skip=True, **kwargs):
        return sdpa_mask(*args, mask_function=causal_mask_function, allow_is_causal_skip=False, **kwargs)

    monkeypatch.setitem(AttentionMaskInterface._global_mapping, ATTN_NAME, causal_only)
    dropped = vlm.answer(image, QUESTION, max_new_tokens=1, share_prefix=False).first_token_logits  # no stored prefix
    assert (dropped - bidirectional).abs().max().item() > 1e-2
    assert (dropped - causal).abs().max().item() <= 1e-5


def test_rotation_moves_vectors_with_the_first_layers_rope(vlm):
    """CLVS's rotation (at layer 0, a sliding-window layer) composes exactly, and is that layer's RoPE, not the
    global layers' (another base, linearly scaled)."""
    adapter, text = vlm.adapter, vlm.model.config.get_text_config()
    assert text.layer_types[0] == "sliding_attention"
    raw = torch.randn(1, 2, 5, text.head_dim)  # (B, H, K, D) before RoPE
    start, target = torch.tensor([[0, 3, 4, 9, 10]]), torch.tensor([[0, 1, 1, 1, 2]])
    moved = adapter.rotate(adapter.rotate(raw, start), target - start)
    assert (moved - adapter.rotate(raw, target)).abs().max().item() <= 1e-5
    cos, _ = adapter.text_model.rotary_emb(raw, start, "full_attention")
    assert not torch.allclose(adapter.rotate(raw, start), raw * cos[:, None], atol=1e-3)


def test_the_engine_lm_head_gives_the_model_logits(vlm, image):
    """The LM head the engine applies to normed hidden states (DoLa, DeCo, CLVS) gives the model's own logits:
    Gemma 3's conditional-generation head applies no final-logit softcapping."""
    inputs = vlm.adapter.encode([image], [QUESTION])
    with torch.no_grad():
        normed = vlm.model.model(**inputs).last_hidden_state  # (1, S, D) after the final norm
        logits = vlm.model(**inputs).logits  # (1, S, V)
    assert (vlm.adapter.lm_head(normed) - logits).abs().max().item() <= 1e-5
