"""Side streams as rows (``visfocus.steer.rows``): PAI's and M3ID's text-only stream and VCD's noised-image stream
decoded in the main rows' forwards give what the same stream decoded apart (its own forwards, ``stream_rows=False``)
gives: fp32 logits and scores within 1e-4, the same plausible sets, the same tokens; on every family, in a padded
batch, with and without shared image prefixes; and with one forward per token instead of two."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

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


class _Seen(LogitsProcessor):
    """Reads the stream's logits at every step (the scores pass unchanged)."""

    def __init__(self, stream) -> None:
        self.stream, self.seen = stream, []

    def __call__(self, input_ids, scores):
        self.seen.append(self.stream.logits(input_ids))
        return scores


@pytest.mark.parametrize("share_prefix", [False, True])
def test_side_rows_are_never_edited(share_prefix, tiny_vlms, image, other_image):
    """Under an attention edit, an image stream on the original pixels decoded as rows gives the unedited model's
    logits for the tokens the edited rows chose, while the main rows are edited."""
    vlm = tiny_vlms["qwen3_vl"]
    batch = vlm.prepare([image, other_image], QUESTIONS[:2], share_prefix=share_prefix)
    runner = batch.runner  # engine use: no method contract
    stream = batch.image_stream({"pixel_values": runner.inputs["pixel_values"]}, tag="original pixels")
    seen = _Seen(stream)
    edit = vf.method("pai", alpha=0.8, gamma=1.0, layers=None).edit(batch.num_layers)
    edited = runner.generate((edit,), STEPS, logits_processor=LogitsProcessorList([seen]), min_new_tokens=STEPS)
    assert stream.row_logits is not None  # decoded as rows
    plain_batch = vlm.prepare([image, other_image], QUESTIONS[:2], share_prefix=share_prefix)
    plain_batch.runner.force(edited.new_tokens.tolist())
    plain = plain_batch.runner.generate((), STEPS)
    for side, unedited, main in zip(seen.seen, plain.step_logits, edited.step_logits, strict=True):
        assert (side - unedited.float()).abs().max().item() <= TOL
        assert (main.float() - unedited.float()).abs().max().item() > 1e-3  # the edit moves the main rows
    vlm.prefix_store.end_call()


@pytest.mark.parametrize("kwargs", [{"trace": True}, {"sampling": vf.Sampling(temperature=0.7, seed=1)}])
def test_a_trace_or_sampling_decodes_the_stream_apart(kwargs, tiny_vlms, image):
    """Where rows are not exact (a recorded trace, sampling) the stream decodes apart: the same work and answer
    as a family that never decodes streams as rows."""
    vlm = tiny_vlms["llava"]
    method = vf.method("pai", alpha=0.5, gamma=1.5)
    answers = []
    for rows in (True, False):
        vlm.adapter.side_stream_rows = rows  # what Batch.build hands the runner
        try:
            answers.append(vlm.answer(image, QUESTIONS[0], method=method, max_new_tokens=STEPS, share_prefix=False,
                                      **kwargs))
        finally:
            del vlm.adapter.side_stream_rows  # back to the family's own
    default, apart = answers
    work = [{k: v for k, v in a.cost.items() if k != "seconds"} for a in answers]
    assert work[0] == work[1] and default.text == apart.text
    assert torch.equal(default.first_token_scores, apart.first_token_scores)
