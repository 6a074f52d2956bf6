"""Side streams as rows (``visfocus.steer.rows``): PAI's and M3ID's text-only stream and VCD's noised-image stream
decoded in the main rows' forwards give what the same stream decoded apart (its own forwards, ``stream_rows=False``)
gives: fp32 logits and scores within 1e-4, the same plausible sets, the same tokens; on every family, in a padded
batch, with and without shared image prefixes; and with one forward per token instead of two."""

from __future__ import annotations

import pytest
import torch

import visfocus as vf
import visfocus.interventions.m3id  # noqa: F401  (registration)
import visfocus.interventions.pai  # noqa: F401  (registration)
import visfocus.interventions.vcd  # noqa: F401  (registration)
from visfocus.testing import FAMILIES

QUESTIONS = ["Is the cup on the table? Answer with yes or no.", "Where is the dog?", "left"]
STEPS = 4
TOL = 1e-4
METHODS = {"pai": {"alpha": 0.5, "gamma": 1.5, "layers": None}, "m3id": {"decay": 0.3},
           "vcd": {"alpha": 1.0, "noise_step": 999}}


def _answer(vlm, images, method, share_prefix: bool, rows: bool):
    batch = vlm.prepare(images, QUESTIONS, share_prefix=share_prefix)
    batch.runner.stream_rows = rows and batch.runner.stream_rows  # the family's own choice when rows are asked for
    result = method.apply(batch, max_new_tokens=STEPS)
    if share_prefix:
        vlm.prefix_store.end_call()
    return batch, result.generation


def _assert_close_scores(got: torch.Tensor, want: torch.Tensor) -> None:
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    assert (got[finite] - want[finite]).abs().max().item() <= TOL


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_rows_equal_the_separate_stream(family, name, share_prefix, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    images = [image, other_image, image]
    method = vf.method(name, **METHODS[name])
    apart_batch, apart = _answer(vlm, images, method, share_prefix, rows=False)
    rows_batch, rows = _answer(vlm, images, method, share_prefix, rows=True)
    assert (rows_batch.runner.inputs["attention_mask"] == 0).any()  # a padded batch
    assert torch.equal(rows.new_tokens, apart.new_tokens)
    assert len(rows.step_logits) == len(apart.step_logits) == STEPS
    for got, want in zip(rows.step_logits, apart.step_logits):
        assert got.shape == want.shape and (got.float() - want.float()).abs().max().item() <= TOL
    assert (rows.first_logits - apart.first_logits).abs().max().item() <= TOL
    _assert_close_scores(rows.first_scores, apart.first_scores)
    rows_cost, apart_cost = rows_batch.runner.cost, apart_batch.runner.cost
    if vlm.adapter.side_stream_rows:  # decoded as rows: one forward per token
        # saved: the stream's own forward at every step; spent at most: one forward over a text-only row's leading
        # tokens, the first time the prefix store meets them
        steps = rows.new_tokens.shape[1]
        assert rows_cost.forward_passes <= apart_cost.forward_passes - steps + 1
    else:  # the family decodes its streams apart: the same work
        assert rows_cost.forward_passes == apart_cost.forward_passes


@pytest.mark.parametrize("family", ["qwen3_vl", "llava"])
def test_rows_give_every_step_the_separate_streams_scores(family, tiny_vlms, image, other_image):
    """The contrasted scores of every step, not only the first, as the stream apart gives them."""
    vlm = tiny_vlms[family]
    method = vf.method("m3id", decay=0.3)
    captured = {}
    original = vlm.model.generate

    def generate(*args, generation_config, **kwargs):
        generation_config.output_scores = True
        out = original(*args, generation_config=generation_config, **kwargs)
        captured["scores"] = [s[:len(QUESTIONS)].float() for s in out.scores]
        return out

    vlm.model.generate = generate
    try:
        per_path = []
        for rows in (False, True):
            _answer(vlm, [image, other_image, image], method, share_prefix=True, rows=rows)
            per_path.append(captured["scores"])
    finally:
        vlm.model.generate = original
    for got, want in zip(per_path[1], per_path[0], strict=True):
        _assert_close_scores(got, want)
