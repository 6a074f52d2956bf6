"""InstructBLIP: 32 Q-Former query tokens before BOS (no grid over the image), no chat template, padding moved to
the front, the Q-Former's question padded on the right, a text-only prompt of BOS + question, no exact prefix sharing
(the query tokens read the question), and every grid consumer refusing with one clear error."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import visfocus as vf
from visfocus.analysis.boxes import pointing_game_by_layer
from visfocus.app.ui import heatmap
from visfocus.steer.compat import cache_argument, fresh_cache, output_cache
from visfocus.tracefile import sample_arrays

QUESTION = "Where is the cup?"
LONGER = "Is the dog on the table or under the table, left of the cat? Answer with yes or no."
QUERIES = 32


@pytest.fixture(scope="module")
def vlm(tiny_vlms):
    return tiny_vlms["instructblip"]


def _real(inputs: dict, b: int) -> list[int]:
    return inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()


def test_query_tokens_come_first_then_bos_and_the_question(vlm, image, other_image):
    tok = vlm.processor.tokenizer
    for picture in (image, other_image):  # the count does not depend on the picture's size
        inputs = vlm.adapter.encode([picture], [QUESTION])
        ids = inputs["input_ids"][0].tolist()
        assert ids[:QUERIES] == [vlm.adapter.image_token_id] * QUERIES
        assert ids[QUERIES:] == tok(QUESTION)["input_ids"]  # BOS, then the question as asked: no template
        assert tok.decode(ids[QUERIES:], skip_special_tokens=True) == QUESTION
        layout = vlm.adapter.layouts(inputs, [picture])[0]
        assert layout.image_positions.tolist() == list(range(QUERIES))
        assert layout.images == [[]] and layout.no_grid == vlm.adapter.no_grid_reason
    assert "32 Q-Former query tokens have no spatial grid" in vlm.adapter.no_grid_reason


def test_padding_leads_and_the_answer_is_the_processors_own(vlm, image, other_image):
    """The processor pads the text and then puts the query tokens before the padding; encode moves the padding to
    the front. Same tokens, same positions: the same logits at every real token."""
    raw = dict(vlm.processor(images=[image, other_image], text=[QUESTION, LONGER], padding=True,
                             return_tensors="pt"))
    inputs = vlm.adapter.encode([image, other_image], [QUESTION, LONGER])
    assert raw["input_ids"][0, 0] == vlm.adapter.image_token_id and raw["attention_mask"][0, 0] == 1
    mask = inputs["attention_mask"]
    pads = int((mask[0] == 0).sum())
    assert pads > 0 and not mask[0, :pads].any() and mask[0, pads:].all() and mask[1].all()
    assert _real(inputs, 0) == _real(raw, 0)
    # the Q-Former's question is padded on the right (it numbers its text tokens from 0)
    assert inputs["qformer_attention_mask"][0, 0] == 1 and inputs["qformer_attention_mask"][0, -1] == 0
    raw.update(qformer_input_ids=inputs["qformer_input_ids"], qformer_attention_mask=inputs["qformer_attention_mask"])
    with torch.no_grad():
        moved = vlm.model(**inputs, position_ids=vlm.adapter.prefill_position_ids(inputs)).logits  # (2, S, V)
        kept = vlm.model(**raw, position_ids=vlm.adapter.prefill_position_ids(raw)).logits  # (2, S, V)
    for b in range(2):
        real_moved, real_kept = inputs["attention_mask"][b].bool(), raw["attention_mask"][b].bool()
        assert (moved[b][real_moved] - kept[b][real_kept]).abs().max().item() <= 1e-5


def test_text_only_prompt_is_bos_and_the_question(vlm, image):
    inputs = vlm.adapter.encode([image], [QUESTION])
    assert vlm.adapter.text_only_ids(_real(inputs, 0)) == vlm.processor.tokenizer(QUESTION)["input_ids"]


def test_sharing_split_point_and_refusal(vlm, image):
    """The shared part would be the query tokens and BOS, but the query tokens depend on the question, so sharing
    is refused and the batch is prefilled whole."""
    inputs = vlm.adapter.encode([image], [QUESTION])
    assert vlm.adapter.template_after_image == (vlm.processor.tokenizer.bos_token_id,)
    assert vlm.adapter.shared_prefix_length(_real(inputs, 0)) == QUERIES + 1
    assert vlm.adapter.shares_prefix_exactly(inputs) is False
    features = []
    for question in (QUESTION, LONGER):
        one = vlm.adapter.encode([image], [question])
        with torch.no_grad():
            features.append(vlm.model.get_image_features(
                one["pixel_values"], qformer_input_ids=one["qformer_input_ids"],
                qformer_attention_mask=one["qformer_attention_mask"]).pooler_output)  # (1, 32, D)
    assert (features[0] - features[1]).abs().max().item() > 1e-3  # same image, other question: other tokens


def test_the_model_runs_without_the_image_from_a_cache(vlm, image):
    """The steerable model's forward on a cache that holds the image (no pixels) continues as a whole forward."""
    inputs = vlm.adapter.encode([image], [QUESTION])
    positions = vlm.adapter.prefill_position_ids(inputs)
    name = cache_argument(vlm.model)
    with torch.no_grad():
        whole = vlm.model(**inputs, position_ids=positions).logits[:, -1]  # (1, V)
        head = {k: (v[:, :-1] if k in ("input_ids", "attention_mask") else v) for k, v in inputs.items()}
        first = vlm.model(**head, position_ids=positions[:, :-1], use_cache=True, **{name: fresh_cache()})
        rest = vlm.model(input_ids=inputs["input_ids"][:, -1:], attention_mask=inputs["attention_mask"],
                         position_ids=positions[:, -1:], use_cache=True, **{name: output_cache(first)})
    assert (rest.logits[:, -1] - whole).abs().max().item() <= 1e-5


def test_grid_consumers_refuse_with_one_clear_error(vlm, image):
    reason = vlm.adapter.no_grid_reason
    out = vlm.answer(image, QUESTION, max_new_tokens=1, trace=True)
    share = out.trace.image_share()  # per-token attention is still traced
    assert ((share > 0) & (share < 1)).all() and out.trace.image_cols.sum() == QUERIES
    with pytest.raises(vf.VisfocusError, match="no spatial grid"):
        out.trace.image_map(layer=0)
    with pytest.raises(vf.VisfocusError, match="needs a token grid over the image: " + reason):
        vlm.answer(image, QUESTION, method=vf.method("vea"), max_new_tokens=1)
    arrays = sample_arrays(out.trace)
    meta = json.loads(str(arrays["meta"]))
    assert meta["views"] == [] and meta["no_grid"] == reason
    assert arrays["attention"].shape[-1] == QUERIES
    traces = {"s0": {"attention": arrays["attention"], **meta}}
    with pytest.raises(vf.VisfocusError, match="no spatial grid"):
        pointing_game_by_layer(traces, {"s0": [{"x0": 0, "y0": 0, "x1": 10, "y1": 10}]})


def test_app_heatmap_says_why_instead_of_drawing(vlm, image):
    from visfocus.app.compute import Result

    attention = np.full((vlm.num_layers, vlm.adapter.num_heads, QUERIES), 1 / QUERIES, dtype=np.float32)
    result = Result(key="k", method="baseline", params={}, text="", first_token="", confidence=1.0, top_k=[],
                    cost={}, extras={}, parsed=None, correct=None, attention=attention, views=[],
                    no_grid=vlm.adapter.no_grid_reason)
    picture, note = heatmap(result, image, 0, "mean", 0, "viridis", 0.5, 0)
    assert picture is None and note == vlm.adapter.no_grid_reason


def test_a_traced_run_reports_without_heatmaps_saying_why(vlm, tiny_dirs, tmp_path):
    from visfocus.evaluate import RunConfig, evaluate
    from visfocus.report import build_report

    config = RunConfig(model=str(tiny_dirs["instructblip"]), tasks=["synthetic_spatial"], limit=3, batch_size=3,
                       max_new_tokens=1, output_path=str(tmp_path / "run"), trace="heads")
    page = build_report(Path(evaluate(config)["config"]["run_dir"]))
    assert f"No box overlap: {html.escape(vlm.adapter.no_grid_reason)}" in page
