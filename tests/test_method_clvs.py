"""CLVS against an independent reference: layer 0 under unified image positions (an eager model run with those
positions), the β-blend with the memory at layer 1, and the uncertainty stop rule."""

from __future__ import annotations

import pytest
import torch
from eager_reference import SETTINGS, load_reference, reference_last_logits

import visfocus as vf
from visfocus.interventions.clvs import normalized_top10_entropy, unified_positions
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
