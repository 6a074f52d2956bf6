"""CLVS against an independent reference: layer 0 under unified image positions (an eager model run with those
positions), the β-blend with the memory at layer 1, and the uncertainty stop rule; the survey variant against a
reference written here from the survey's code."""

from __future__ import annotations

import math

import pytest
import torch
from eager_reference import SETTINGS, load_reference, reference_last_logits
from transformers import AttentionInterface, AutoModelForImageTextToText
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import visfocus as vf
from visfocus.interventions.clvs import unified_positions
from visfocus.interventions.decoding import normalized_top10_entropy, survey_top10_entropy
from visfocus.steer.compat import cache_argument, output_cache
from visfocus.testing import FAMILIES, build_tiny, fixtures

QUESTION = "Where is the cup in relation to the table?"


def test_unified_positions_give_each_image_one_position():
    image = torch.tensor([[0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    assert unified_positions(image, mask).tolist() == [[0, 0, 1, 1, 1, 2, 3]]


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "llava"])
def test_rotation_moves_vectors_to_other_positions(family, tiny_vlms):
    adapter = tiny_vlms[family].adapter
    config = tiny_vlms[family].model.config.get_text_config()
    K, D = 5, config.hidden_size // config.num_attention_heads
    raw = torch.randn(1, 2, K, D)  # (B, H, K, D) before RoPE
    start, target = torch.tensor([[0, 3, 4, 9, 10]]), torch.tensor([[0, 1, 1, 1, 2]])
    if family.startswith("qwen"):
        start, target = start[None].expand(3, -1, -1), target[None].expand(3, -1, -1)
    at_start = adapter.rotate(raw, start)  # rotating from position 0 = applying RoPE
    moved = adapter.rotate(at_start, target - start)
    assert (moved - adapter.rotate(raw, target)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_layer0_and_the_blend_at_layer1_match_the_reference(family, tiny_vlms, tiny_dirs, image):
    vlm = tiny_vlms[family]
    beta, gamma = 0.5, 0.8
    out = vlm.answer(image, QUESTION, method=vf.method("clvs", smoothing=beta, memory_decay=gamma,
                                                       uncertainty_threshold=0.0), max_new_tokens=1, trace=True)
    inputs = vlm.adapter.encode([image], [QUESTION])
    image_cols = vlm.adapter.image_cols(inputs)  # (1, S)
    unified = unified_positions(image_cols, inputs["attention_mask"])  # (1, S)
    positions = unified[None].expand(3, -1, -1) if family.startswith("qwen") else unified
    reference_last_logits(load_reference(tiny_dirs[family]), inputs, positions, image_cols, 1.0)
    layer0 = SETTINGS["rows"][0]  # (1, H, S): the last row's attention with each image at one position
    trace = out.trace
    assert (trace.last_row[0] - layer0).abs().max().item() <= 1e-5
    memory = layer0.amax(1, keepdim=True) * image_cols[:, None, :]  # (1, 1, S) max over heads, image keys only
    before = trace.last_row_pre[1]  # (1, H, S)
    mixed = torch.where(image_cols[:, None, :], beta * before + (1 - beta) * memory, before)
    expected = mixed / mixed.sum(-1, keepdim=True)
    assert (trace.last_row[1] - expected).abs().max().item() <= 1e-5
    assert (trace.last_row[1] - before).abs().max().item() > 1e-3


def test_top10_entropy_is_normalised():
    flat = torch.zeros(1, 50)
    peaked = torch.zeros(1, 50)
    peaked[0, 3] = 30.0
    assert normalized_top10_entropy(flat).item() == pytest.approx(1.0)
    assert normalized_top10_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    assert survey_top10_entropy(flat).item() == pytest.approx(1.0)
    assert survey_top10_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def six_layer_llava(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setitem(fixtures.TEXT, "num_hidden_layers", 6)
    try:
        path = build_tiny("llava", tmp_path_factory.mktemp("six") / "llava")
    finally:
        patch.undo()
    return vf.load(str(path))


def test_stop_rule_fires_after_the_middle_and_only_below_threshold(six_layer_llava, image):
    def smoothed_layers(threshold):
        out = six_layer_llava.answer(image, QUESTION, max_new_tokens=1, trace=True,
                                     method=vf.method("clvs", uncertainty_threshold=threshold))
        changed = (out.trace.last_row - out.trace.last_row_pre).abs().amax(dim=(1, 2, 3))  # (L,)
        return [i for i, c in enumerate(changed.tolist()) if c > 1e-7]

    # δ = 1: every layer's normalised entropy is below 1, so smoothing stops after layer 4 (the first > 6 // 2 = 3).
    assert smoothed_layers(1.0) == [0, 1, 2, 3, 4]
    # δ = 0 never stops; a tiny δ is never reached by these random models' spread-out predictions.
    assert smoothed_layers(0.0) == [0, 1, 2, 3, 4, 5]
    assert smoothed_layers(1e-4) == [0, 1, 2, 3, 4, 5]


def test_bad_parameters_are_rejected():
    with pytest.raises(vf.VisfocusError, match="memory_decay"):
        vf.method("clvs", memory_decay=1.5)
    with pytest.raises(vf.VisfocusError, match="smoothing"):
        vf.method("clvs", smoothing=-0.2)


def test_the_stop_layer_is_reported_per_sample():
    from visfocus.organism import organism_path

    vlm = vf.load(str(organism_path()))  # 4 decoder layers: the stop is checked after layer 3 (> L/2) only
    scene = list(vf.task("scenes_test"))[0]
    never = vlm.answer(scene.image, scene.question, method=vf.method("clvs", uncertainty_threshold=0.0))
    always = vlm.answer(scene.image, scene.question, method=vf.method("clvs", uncertainty_threshold=1.0))
    assert never.extras == {"stop_layer": None}  # δ = 0 never stops
    assert always.extras == {"stop_layer": 3}  # normalised entropy < 1 at the first layer checked


# --- variant="survey": the survey repository's CLVS, against a reference written here from its code (docs/methods.md
# §5.3): an eager attention under its own name smooths row -1 of each forward with the memory held in SURVEY, and a hook
# after each decoder layer (the layer's plain output, before Qwen3-VL's DeepStack addition) runs the stop rule and the
# memory update, as ``Qwen3VLTextModel.forward`` does with ``use_clvs``.

SURVEY_NAME = "visfocus_test_clvs_survey"
SURVEY: dict = {}


def survey_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)  # (B, H, K, D)
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling  # (B, H, Q, K)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, :key.shape[2]].float()
    else:
        q_len, kv_len = scores.shape[2:]
        causal = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, Q, K)
    image = SURVEY["image"]  # (n,) the image columns
    SURVEY["pre"] = weights[:, :, -1, image].clone()  # (B, H, n) the last row, before smoothing
    if SURVEY["memory"] is not None and not SURVEY["terminated"]:
        s = SURVEY["smoothing"]
        weights[:, :, -1, image] = s * weights[:, :, -1, image] + (1 - s) * SURVEY["memory"][:, None, :]
        weights = weights / weights.sum(-1, keepdim=True)
    out = torch.matmul(weights, value.float()).to(query.dtype)  # (B, H, Q, D)
    return out.transpose(1, 2).contiguous(), weights


def survey_after_layer(model, layer: int, hidden: torch.Tensor) -> None:
    """The survey's per-layer step: hidden (1, S, hidden) the layer's output."""
    if SURVEY["terminated"]:
        return
    threshold, num_layers = SURVEY["threshold"], model.config.get_text_config().num_hidden_layers
    uncertainty = threshold
    if layer >= num_layers / 2:
        logits = model.get_output_embeddings()(hidden)  # (1, S, V) every position, no final norm
        p = torch.softmax(torch.topk(logits, 10, dim=-1).values, dim=-1)  # (1, S, 10)
        uncertainty = (-(p * torch.log(p + 1e-12)).sum() / math.log(10)).item()  # summed over all positions
        SURVEY["U"][layer] = uncertainty
    if uncertainty < threshold:
        SURVEY["terminated"], SURVEY["stop"] = True, layer
    elif layer == 0:
        SURVEY["memory"] = SURVEY["pre"].amax(1)  # (1, n)
    else:
        w = SURVEY["decay"]
        SURVEY["memory"] = w * SURVEY["memory"] + (1 - w) * SURVEY["pre"].amax(1)


def load_survey_reference(path) -> torch.nn.Module:
    AttentionInterface.register(SURVEY_NAME, survey_attention)
    AttentionMaskInterface.register(SURVEY_NAME, eager_mask)
    implementation = {"": "sdpa", "text_config": SURVEY_NAME, "vision_config": "sdpa"}
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation=implementation)
    for i, layer in enumerate(model.get_decoder().layers):  # the text decoder (language_model, text_model)
        layer.register_forward_hook(lambda module, args, out, i=i: survey_after_layer(
            model, i, out[0] if isinstance(out, tuple) else out))
    return model.eval()


@torch.no_grad()
def survey_reference(model, vlm, image, question, *, smoothing, decay, threshold, steps=1) -> torch.Tensor:
    """(V,) the reference's first-token logits (one row); SURVEY keeps U per checked layer and the stop layer of the
    last forward. ``steps`` > 1 (LLaVA): also greedy decoding forwards, each starting afresh as the survey's forward
    does; (steps, V) then."""
    inputs = vlm.adapter.encode([image], [question])
    image_cols = vlm.adapter.image_cols(inputs)  # (1, S)
    positions = vlm.adapter.prefill_position_ids(inputs)
    kwargs = dict(inputs, position_ids=positions) if positions is not None else dict(inputs)
    logits = []
    for _ in range(steps):
        SURVEY.update(image=image_cols[0].nonzero()[:, 0], smoothing=smoothing, decay=decay, threshold=threshold,
                      memory=None, terminated=False, stop=None, pre=None, U={})
        out = model(**kwargs, use_cache=True)
        logits.append(out.logits[0, -1].float())  # (V,)
        mask = torch.cat([kwargs["attention_mask"], torch.ones(1, 1, dtype=kwargs["attention_mask"].dtype)], -1)
        kwargs = {"input_ids": logits[-1].argmax()[None, None], "attention_mask": mask,
                  cache_argument(model): output_cache(out)}
    return logits[0] if steps == 1 else torch.stack(logits)


def survey(**kwargs):
    return vf.method("clvs", variant="survey", **kwargs)


def smoothed_layers(out) -> list[int]:
    changed = (out.trace.last_row - out.trace.last_row_pre).abs().amax(dim=(1, 2, 3))  # (L,)
    return [i for i, c in enumerate(changed.tolist()) if c > 1e-7]


@pytest.mark.parametrize("family", FAMILIES)
def test_survey_variant_matches_the_survey_reference(family, tiny_vlms, tiny_dirs, image):
    vlm = tiny_vlms[family]
    out = vlm.answer(image, QUESTION, method=survey(smoothing=0.5, memory_decay=0.8), max_new_tokens=1, trace=True)
    reference = load_survey_reference(tiny_dirs[family])
    expected = survey_reference(reference, vlm, image, QUESTION, smoothing=0.5, decay=0.8, threshold=0.5)
    assert (out.first_token_logits - expected).abs().max().item() <= 1e-4
    assert SURVEY["stop"] is None and out.extras == {"stop_layer": None, "variant": "survey"}
    assert SURVEY["U"][1] > 1.0  # summed over every position: far above any δ ≤ 1
    assert smoothed_layers(out) == [1]  # layer 0 is kept (no position-unbiased replacement)
    plain = vlm.answer(image, QUESTION, max_new_tokens=1)
    official = vlm.answer(image, QUESTION, method=vf.method("clvs", smoothing=0.5, memory_decay=0.8), max_new_tokens=1)
    assert (expected - plain.first_token_logits).abs().max().item() > 1e-3
    assert (expected - official.first_token_logits).abs().max().item() > 1e-3


@pytest.fixture(scope="module")
def six_layer_dirs(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setitem(fixtures.TEXT, "num_hidden_layers", 6)
    try:
        return {family: build_tiny(family, tmp_path_factory.mktemp("six_survey") / family)
                for family in ("qwen3_vl", "llava")}
    finally:
        patch.undo()


@pytest.mark.parametrize("family", ["qwen3_vl", "llava"])
def test_survey_stop_rule_fires_from_layer_l_over_2_on_the_summed_uncertainty(family, six_layer_dirs, image):
    vlm = vf.load(str(six_layer_dirs[family]))
    reference = load_survey_reference(six_layer_dirs[family])

    def both(threshold):
        out = vlm.answer(image, QUESTION, max_new_tokens=1, trace=True,
                         method=survey(smoothing=0.5, memory_decay=0.8, uncertainty_threshold=threshold))
        expected = survey_reference(reference, vlm, image, QUESTION, smoothing=0.5, decay=0.8, threshold=threshold)
        assert (out.first_token_logits - expected).abs().max().item() <= 1e-4
        assert out.extras["stop_layer"] == SURVEY["stop"]
        return out

    never = both(0.0)  # U ≥ 0: never below 0
    assert smoothed_layers(never) == [1, 2, 3, 4, 5] and never.extras["stop_layer"] is None
    never_u = both(0.5)  # the survey's default δ: U is summed over every position, so it never fires either
    assert never_u.extras["stop_layer"] is None
    fires = both(1e9)  # U < δ at the first layer checked, l = 6 / 2 = 3 (the official rule checks l > 3 first)
    assert smoothed_layers(fires) == [1, 2, 3] and fires.extras == {"stop_layer": 3, "variant": "survey"}
    assert (fires.first_token_logits - never.first_token_logits).abs().max().item() > 1e-3
    u3 = SURVEY["U"][3]  # the reference's U at layer 3 (equal in every run, as nothing stopped before it)
    assert u3 > 1.0
    assert both(u3 * (1 + 1e-3)).extras["stop_layer"] == 3  # a δ just above U(3) stops at layer 3 ...
    assert both(u3 * (1 - 1e-3)).extras["stop_layer"] != 3  # ... and just below it does not


def test_survey_uncertainty_counts_only_each_rows_real_positions(six_layer_dirs, image, other_image):
    vlm = vf.load(str(six_layer_dirs["llava"]))
    reference = load_survey_reference(six_layer_dirs["llava"])
    short, long = "Where is the cup?", QUESTION + " Answer with one word, left or right, please."
    survey_reference(reference, vlm, other_image, short, smoothing=0.5, decay=0.8, threshold=0.0)
    threshold = SURVEY["U"][3] + 0.05  # the short row alone stops at layer 3; its padding's entropy would not
    method = survey(smoothing=0.5, memory_decay=0.8, uncertainty_threshold=threshold)
    inputs = vlm.adapter.encode([image, other_image], [long, short])
    assert (inputs["attention_mask"][1] == 0).sum() >= 1, "the short row should be left padded"
    batch = vlm.answer_batch([image, other_image], [long, short], method=method, max_new_tokens=1)
    alone = vlm.answer(other_image, short, method=method, max_new_tokens=1)
    assert alone.extras["stop_layer"] == 3 and batch[1].extras == alone.extras
    assert (batch[1].first_token_logits - alone.first_token_logits).abs().max().item() <= 1e-4


def test_survey_decode_applies_the_rule_afresh_in_every_decoding_forward(six_layer_dirs, image):
    vlm = vf.load(str(six_layer_dirs["llava"]))
    reference = load_survey_reference(six_layer_dirs["llava"])
    expected = survey_reference(reference, vlm, image, QUESTION, smoothing=0.5, decay=0.8, threshold=0.5, steps=3)
    result = survey(smoothing=0.5, memory_decay=0.8, decode=True).apply(vlm.prepare([image], [QUESTION]),
                                                                          max_new_tokens=3)
    steps = torch.cat(result.generation.step_logits)  # (3, V)
    assert (steps - expected).abs().max().item() <= 1e-4
    prompt_only = survey(smoothing=0.5, memory_decay=0.8).apply(vlm.prepare([image], [QUESTION]), max_new_tokens=3)
    assert torch.equal(prompt_only.generation.step_logits[0], result.generation.step_logits[0])
    assert (prompt_only.generation.step_logits[1] - steps[1]).abs().max().item() > 1e-3  # the decoding rows differ


def test_survey_variant_runs_the_whole_prompt_in_one_forward(tiny_vlms, image):
    assert survey().shares_prefix is False and vf.method("clvs").shares_prefix is True
    batch = tiny_vlms["qwen2_5_vl"].prepare([image], [QUESTION], share_prefix=True)
    with pytest.raises(vf.VisfocusError, match="one forward"):
        survey().apply(batch, max_new_tokens=1)


def test_variant_is_checked():
    with pytest.raises(vf.VisfocusError, match="variant") as err:
        vf.method("clvs", variant="surveyed")
    assert "\n" not in str(err.value)
    assert survey(uncertainty_threshold=50.0).params.uncertainty_threshold == 50.0  # U sums positions: δ > 1 is valid
    with pytest.raises(vf.VisfocusError, match="uncertainty_threshold"):
        vf.method("clvs", uncertainty_threshold=50.0)  # the official U is in [0, 1]
