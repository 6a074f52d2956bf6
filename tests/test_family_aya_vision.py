"""Aya Vision: tiles then the global thumbnail between tile markers, the text-only prompt and the sharing split, the
interleaved RoPE of ``rotate``, ``logit_scale`` in the LM head, and the sliding window (honoured, and refusing exact
prefix sharing where it could bind)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.models.cohere2 import modeling_cohere2

from visfocus.models.base import Adapter
from visfocus.steer.prefix import split_layout
from visfocus.testing import make_image, tiny_model_dir
from visfocus.testing.spec_aya_vision import AYA_LOGIT_SCALE, AYA_SLIDING_WINDOW

FAMILY = "aya_vision"
QUESTION = "Where is the cup in relation to the table?"
LONG_QUESTION = "Is the cup on the table or under the table, left of the cat? " * 4 + "Answer with yes or no."


@pytest.fixture(scope="module")
def vlm(tiny_vlms):
    return tiny_vlms[FAMILY]


def _markers(vlm) -> tuple[int, int]:
    tok, proc = vlm.processor.tokenizer, vlm.processor
    return tok.convert_tokens_to_ids(proc.start_of_img_token), tok.convert_tokens_to_ids(proc.end_of_img_token)


@pytest.mark.parametrize(("size", "grid"), [((224, 160), (2, 3)), ((160, 256), (3, 2)), ((56, 56), (1, 1))])
def test_tiles_row_major_then_the_thumbnail_between_markers(size, grid, vlm):
    picture = make_image(*size, seed=4)
    inputs = vlm.adapter.encode([picture], [QUESTION])
    ids = inputs["input_ids"][0].numpy()
    views = vlm.adapter.layouts(inputs, [picture])[0].images[0]
    (rows, cols), (w, h) = grid, size
    tiles = rows * cols
    assert inputs["pixel_values"].shape[0] == len(views) == tiles + (tiles > 1)  # one view per processed tile
    start, end = _markers(vlm)
    [first], [last] = np.nonzero(ids == start)[0], np.nonzero(ids == end)[0]
    in_views = np.concatenate([v.columns for v in views])
    assert in_views.tolist() == np.nonzero(ids == vlm.adapter.image_token_id)[0].tolist()
    decode = vlm.processor.tokenizer.decode
    # each view's 2 × 2 tokens come right after its marker; the markers belong to no view
    markers = [f"TILE_{k + 1}" for k in range(tiles)] if tiles > 1 else []
    before = first + 1
    for view, marker in zip(views, [*markers, "TILE_GLOBAL"]):
        assert (view.rows, view.cols) == (2, 2)
        assert view.columns.tolist() == list(range(view.columns[0], view.columns[0] + 4))
        assert decode(ids[before:view.columns[0]].tolist()) == marker
        before = view.columns[-1] + 1
    assert before == last
    if tiles == 1:
        assert [v.name for v in views] == ["image"] and views[0].region == (0.0, 0.0, float(w), float(h))
        return
    assert [v.name for v in views] == [f"tile_{r}_{c}" for r in range(rows) for c in range(cols)] + ["thumbnail"]
    for k, view in enumerate(views[:-1]):
        r, c = divmod(k, cols)
        assert view.region == pytest.approx((c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows))
        assert view.boxes()[0].tolist() == pytest.approx([c * w / cols, r * h / rows, (c + 0.5) * w / cols,
                                                          (r + 0.5) * h / rows])
    assert views[-1].region == (0.0, 0.0, float(w), float(h))


def test_two_images_in_one_row_are_two_segments(vlm):
    """Image k of a row is the k-th START_OF_IMG … END_OF_IMG span, though markers interrupt its tokens."""
    start, end, patch = *_markers(vlm), vlm.adapter.image_token_id
    row = np.array([5, start, 9, patch, patch, 9, patch, end, 7, start, 9, patch, end, 8])
    positions = np.nonzero(row == patch)[0]
    assert [s.tolist() for s in vlm.adapter.image_segments(row, positions)] == [[3, 4, 6], [11]]


def test_text_only_prompt_and_sharing_split(vlm, image):
    inputs = vlm.adapter.encode([image], [QUESTION])
    ids = inputs["input_ids"][0].tolist()
    tok = vlm.processor.tokenizer
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # the template's BOS, no second one
    prompt = vlm.adapter.build_prompt(QUESTION)
    assert vlm.adapter.text_only_ids(ids) == tok(prompt.replace("<image>", ""), add_special_tokens=False)["input_ids"]
    end = _markers(vlm)[1]
    assert vlm.adapter.template_after_image == (end,)  # the question follows the image directly
    assert vlm.adapter.shared_prefix_length(ids) == ids.index(end) + 1
    assert tok.decode(ids[ids.index(end) + 1:]).startswith(QUESTION)


def test_rotate_is_coheres_interleaved_rope(vlm):
    adapter = vlm.adapter
    D = vlm.model.config.get_text_config().head_dim
    raw = torch.randn(1, 2, 5, D, generator=torch.Generator().manual_seed(0))  # (B, H, K, D) before RoPE
    start, target = torch.tensor([[0, 3, 4, 9, 10]]), torch.tensor([[0, 1, 1, 1, 2]])
    cos, sin = adapter.text_model.rotary_emb(raw, start)
    own, _ = modeling_cohere2.apply_rotary_pos_emb(raw, raw, cos, sin)  # the model's own rotary code
    assert (adapter.rotate(raw, start) - own).abs().max().item() <= 1e-6
    moved = adapter.rotate(adapter.rotate(raw, start), target - start)
    assert (moved - adapter.rotate(raw, target)).abs().max().item() <= 1e-5
    assert (Adapter.rotate(adapter, raw, start) - own).abs().max().item() > 1e-2  # the half-split rotation is not it


def test_lm_head_applies_logit_scale_as_the_model(vlm, image):
    """``lm_head`` gives the model's own logits: scaled by ``logit_scale`` where the model's forward scales them
    (transformers 5.24 on), unscaled where it does not (5.23)."""
    adapter = vlm.adapter
    inputs = adapter.encode([image], [QUESTION])
    with torch.no_grad():
        out = vlm.model(**inputs, output_hidden_states=True)
        normed = adapter.text_model(inputs_embeds=out.hidden_states[0],
                                    attention_mask=inputs["attention_mask"]).last_hidden_state  # final-normed
        by_hand = adapter.lm_head(normed)
        final = adapter.lm_head(adapter.final_norm(out.hidden_states[-1]))
        raw = vlm.model.lm_head(normed)
    assert (by_hand - out.logits).abs().max().item() <= 1e-5
    assert (final - out.logits).abs().max().item() <= 1e-4  # the norm recomputed: float rounding only
    scaled = (raw - out.logits).abs().max().item() > 1e-3
    assert adapter.logit_scale == (AYA_LOGIT_SCALE if scaled else 1.0)
    assert (raw * adapter.logit_scale - out.logits).abs().max().item() <= 1e-5


def test_logit_scale_only_where_the_forward_applies_it(vlm):
    class Unscaled(torch.nn.Module):
        config = vlm.model.config  # a logit_scale in the text config, but a forward that does not use it

        def forward(self, hidden):
            return hidden

    assert Adapter(Unscaled(), vlm.processor).logit_scale == 1.0


def test_sliding_window_binds_and_is_honoured(vlm, image):
    """A prompt longer than the window: the engine's answer equals plain SDPA with the window, and differs from the
    same model without one (the window binds); prefix sharing is refused, and the answer is the unshared one."""
    inputs = vlm.adapter.encode([image], [LONG_QUESTION])
    assert inputs["input_ids"].shape[1] > AYA_SLIDING_WINDOW
    answer = vlm.answer(image, LONG_QUESTION, max_new_tokens=1, share_prefix=False)
    logits = {}
    for window in (AYA_SLIDING_WINDOW, 100_000):  # the latter never binds
        config = AutoConfig.from_pretrained(tiny_model_dir(FAMILY))
        config.text_config.sliding_window = window
        plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(FAMILY), config=config,
                                                            attn_implementation="sdpa").eval()
        with torch.no_grad():
            logits[window] = plain(**inputs).logits[0, -1].float()
    assert (answer.first_token_logits - logits[AYA_SLIDING_WINDOW]).abs().max().item() <= 1e-5
    assert (logits[AYA_SLIDING_WINDOW] - logits[100_000]).abs().max().item() > 1e-3
    # one row: no gap between prefix and question, so sharing is exact though the window binds
    vlm.prefix_store.clear()
    first, again = (vlm.answer(image, LONG_QUESTION, max_new_tokens=1) for _ in range(2))
    assert first.cost["shared_prefix_tokens"] > 0 and again.cost["prefill_tokens"] < first.cost["prefill_tokens"]
    for shared in (first, again):
        assert (shared.first_token_logits - answer.first_token_logits).abs().max().item() <= 1e-5


def test_prefix_sharing_is_refused_where_the_window_could_span_a_gap(vlm, image, other_image):
    questions = [LONG_QUESTION, QUESTION]  # the short question sits after a gap in the shared layout
    inputs = vlm.adapter.encode([image, other_image], questions)
    mask = inputs["attention_mask"].bool()
    lengths = [vlm.adapter.shared_prefix_length(inputs["input_ids"][b][mask[b]].tolist()) for b in range(2)]
    laid_out, _ = split_layout(inputs, lengths, vlm.adapter.image_token_id)
    assert laid_out["input_ids"].shape[1] > AYA_SLIDING_WINDOW
    assert not vlm.adapter.shares_prefix_exactly(laid_out)
    ref = vlm.answer_batch([image, other_image], questions, max_new_tokens=2, share_prefix=False)
    got = vlm.answer_batch([image, other_image], questions, max_new_tokens=2)
    for g, r in zip(got, ref):
        assert g.cost["shared_prefix_tokens"] == 0
        assert torch.equal(g.first_token_logits, r.first_token_logits) and g.text == r.text
    short = [QUESTION, "Where is the dog?"]  # a gap too, but a prompt within the window
    inputs = vlm.adapter.encode([image, other_image], short)
    mask = inputs["attention_mask"].bool()
    lengths = [vlm.adapter.shared_prefix_length(inputs["input_ids"][b][mask[b]].tolist()) for b in range(2)]
    laid_out, _ = split_layout(inputs, lengths, vlm.adapter.image_token_id)
    room = AYA_SLIDING_WINDOW - laid_out["input_ids"].shape[1]  # new tokens that keep the window from binding
    assert room > 4
    assert vlm.adapter.shares_prefix_exactly(laid_out, room)
    assert not vlm.adapter.shares_prefix_exactly(laid_out, room + 1) and not vlm.adapter.shares_prefix_exactly(laid_out)
    # decoding past the window: refused, so the answers are the unshared ones (shared, they would differ)
    for new_tokens, shares in ((4, True), (room + 30, False)):
        ref = vlm.answer_batch([image, other_image], short, max_new_tokens=new_tokens, share_prefix=False)
        got = vlm.answer_batch([image, other_image], short, max_new_tokens=new_tokens)
        for g, r in zip(got, ref):
            assert (g.cost["shared_prefix_tokens"] > 0) == shares
            assert g.text == r.text
            assert (g.first_token_logits - r.first_token_logits).abs().max().item() <= 1e-5
