"""VEA (visual evidence augmentation) and its layer profiler: the map math on constructed grids, the highlighted image,
two-pass runs on tiny models of two families, and layer profiles from evidence boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import visfocus as vf
from visfocus import profile_layers as profiling
from visfocus.interventions import vea  # registers "vea"
from visfocus.models.layout import ImageView
from visfocus.testing import make_image

QUESTION = "Where is the cup in relation to the plate? Answer with left, right, above or below."


def prompt_length(vlm, image, question: str) -> int:
    return vlm.prepare([image], [question]).runner.inputs["input_ids"].shape[1]


# --- the map math --------------------------------------------------------------------------------------------------

def test_denoise_replaces_a_sink_by_its_truncated_neighbourhood_mean_and_keeps_a_normal_peak():
    grid = np.ones((4, 5))
    grid[0, 0] = 50.0  # corner: 3 neighbours (1, 1, 3), 50 > 10 × 3 -> sink
    grid[1, 1] = 3.0
    grid[2, 3] = 9.0  # a peak, but 9 < 10 × 1: kept
    expected = grid.copy()
    expected[0, 0] = (1 + 1 + 3) / 3
    np.testing.assert_allclose(vea.denoise_sinks(grid, 10.0), expected)
    assert vea.denoise_sinks(grid, 60.0)[0, 0] == 50.0  # λ = 60: not a sink any more


def test_smoothing_sigma_is_in_grid_cells_of_the_real_cell_size():
    # 320×160 image, 32-px cells: 0.5 × 160 px = 80 px = 2.5 cells (the survey's 16-px divisor would give 5)
    assert vea.sigma_in_cells(0.5, (320, 160), (0, 0, 320, 160), (5, 10)) == (2.5, 2.5)
    # a 4×4 grid over the same image (LLaVA-NeXT base view): cells 80 px wide, 40 px high
    assert vea.sigma_in_cells(0.5, (320, 160), (0, 0, 320, 160), (4, 4)) == (2.0, 1.0)


def test_gaussian_smooth_spreads_an_impulse_by_sigma_cells_per_axis():
    impulse = np.zeros((41, 41))
    impulse[20, 20] = 1.0
    out = vea.gaussian_smooth(impulse, (1.0, 2.5))  # (σ_rows, σ_cols)
    offsets = np.arange(41) - 20
    column_profile, row_profile = out[:, 20] / out[:, 20].sum(), out[20] / out[20].sum()
    assert np.sqrt((offsets**2 * column_profile).sum()) == pytest.approx(1.0, rel=0.01)
    assert np.sqrt((offsets**2 * row_profile).sum()) == pytest.approx(2.5, rel=0.01)
    assert out.sum() == pytest.approx(1.0)
    assert np.count_nonzero(out[20]) == 2 * 8 + 1  # radius ceil(3 × 2.5) = 8


def test_gaussian_smooth_keeps_mass_at_borders_with_reflect_padding():
    grid = np.arange(12.0).reshape(3, 4)
    out = vea.gaussian_smooth(grid, 5.0)  # kernel far wider than the grid
    assert out.shape == (3, 4) and out.mean() == pytest.approx(grid.mean())


def test_unit_range_has_max_one_and_flat_maps_become_all_ones():
    np.testing.assert_allclose(vea.unit_range(np.array([[1.0, 3.0], [2.0, 5.0]])), [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_array_equal(vea.unit_range(np.full((2, 3), 0.004)), np.ones((2, 3)))


def test_upsample_interpolates_between_cell_centres_and_keeps_edge_values_outside_the_region():
    grid = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(vea.upsample_to_pixels(grid, (0, 0, 4, 4), (4, 4))[0], [0, 0.25, 0.75, 1])
    # the grid covers only x in [1, 3): pixels left and right of it keep the edge values
    np.testing.assert_allclose(vea.upsample_to_pixels(grid, (1, 0, 3, 4), (4, 4))[0], [0, 0, 1, 1])
    assert vea.upsample_to_pixels(grid, (0, 0, 6, 2), (6, 2)).shape == (2, 6)  # (height, width)


def test_highlight_dims_by_floor_plus_map_on_raw_pixels():
    image = vf.load_image(np.full((2, 3, 3), 200, dtype=np.uint8))
    out = np.asarray(vea.highlight(image, np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]]), 0.5))
    np.testing.assert_array_equal(out[0, :, 0], [100, 150, 200])
    np.testing.assert_array_equal(out[1], np.full((3, 3), 200))


def test_middle_layers_are_the_central_ten_percent():
    assert vea.middle_layers(28) == (12, 13, 14)
    assert vea.middle_layers(32) == (14, 15, 16, 17)
    assert vea.middle_layers(2) == (0,)


# --- runs on tiny models -------------------------------------------------------------------------------------------

def test_evidence_map_is_on_the_token_grid_in_unit_range_with_max_one(tiny_vlms, image):
    out = tiny_vlms["qwen3_vl"].answer(image, QUESTION, method=vf.method("vea"), max_new_tokens=2)
    grid = np.array(out.extras["evidence_map"])
    assert grid.shape == (160 // 32, 224 // 32)  # Qwen3-VL: one token per 32×32 px
    assert grid.min() == 0.0 and grid.max() == 1.0
    assert out.extras["evidence_layers"] == [0]  # middle 10 % of 2 layers
    assert set(out.extras) == {"evidence_layers", "evidence_map"}  # no alpha_used: VEA has no α


def test_the_method_smooths_with_sigma_from_its_view(tiny_vlms, image, monkeypatch):
    used, smooth = [], vea.gaussian_smooth
    monkeypatch.setattr(vea, "gaussian_smooth", lambda grid, sigma: used.append(sigma) or smooth(grid, sigma))
    tiny_vlms["qwen3_vl"].answer(image, QUESTION, method=vf.method("vea", smooth_sigma=0.5), max_new_tokens=1)
    assert used == [(2.5, 2.5)]  # 0.5 × 160 px / 32 px


def test_floor_one_keeps_every_pixel_and_without_hint_answers_as_the_plain_model(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    assert vf.METHODS["vea"].identity == {"highlight_floor": 1.0, "hint": False}  # no dimming, no hint
    method = vf.method("vea", **vf.METHODS["vea"].identity)
    assert method.distance_from_identity() == 0.0
    assert vf.method("vea", highlight_floor=1.0).distance_from_identity() == 1.0  # the hint changes the prompt
    result = method.apply(vlm.prepare([image], [QUESTION]), max_new_tokens=1)
    np.testing.assert_array_equal(np.asarray(result.batch.images[0]), np.asarray(image))
    assert result.batch.questions == [QUESTION]
    out, plain = vlm.answer(image, QUESTION, method=method, max_new_tokens=1), vlm.answer(image, QUESTION)
    assert torch.allclose(out.first_token_logits, plain.first_token_logits, atol=1e-5, rtol=0)


def test_second_pass_sees_the_highlighted_image_and_the_hint(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    result = vf.method("vea", highlight_floor=0.2).apply(vlm.prepare([image], [QUESTION]), max_new_tokens=1)
    assert result.batch.questions == [QUESTION + vea.HINT]
    before, after = np.asarray(image, dtype=int), np.asarray(result.batch.images[0], dtype=int)
    assert (after <= before).all() and (after < before).any()
    assert after.min() >= 0 and (after >= np.floor(0.2 * before) - 1).all()


@pytest.mark.parametrize("family, grid", [("qwen3_vl", (5, 7)), ("llava_next", (4, 4))])
def test_vea_runs_end_to_end_with_two_prefills(tiny_vlms, image, family, grid):
    vlm = tiny_vlms[family]
    out = vlm.answer(image, QUESTION, method=vf.method("vea"), max_new_tokens=1)
    assert np.array(out.extras["evidence_map"]).shape == grid  # LLaVA-NeXT: the 4×4 base view
    first, second = prompt_length(vlm, image, QUESTION), prompt_length(vlm, image, QUESTION + vea.HINT)
    assert out.cost["forward_passes"] == 2
    assert out.cost["prefill_tokens"] == first + second and out.cost["decode_tokens"] == 0
    assert out.layout.images[0][0].rows * out.layout.images[0][0].cols == grid[0] * grid[1]


def test_vea_batch_matches_one_at_a_time(tiny_vlms, image, other_image):
    vlm, method = tiny_vlms["qwen2_vl"], vf.method("vea")
    batch = vlm.answer_batch([image, other_image], [QUESTION, "Is there a dog in the image?"], method=method,
                             max_new_tokens=2)
    single = vlm.answer(other_image, "Is there a dog in the image?", method=method, max_new_tokens=2)
    np.testing.assert_allclose(batch[1].extras["evidence_map"], single.extras["evidence_map"], atol=1e-4)
    assert batch[1].text == single.text


@pytest.mark.parametrize("kwargs, message", [
    ({"highlight_floor": 1.5}, "highlight_floor must be in"),
    ({"highlight_floor": -0.1}, "highlight_floor must be in"),
    ({"smooth_sigma": 0.0}, "smooth_sigma must be > 0"),
    ({"denoise_lambda": 1.0}, "denoise_lambda must be > 1"),
    ({"denoise_lambda": float("nan")}, "denoise_lambda must be a finite number"),
    ({"layers": ()}, "layers is empty"),
    ({"keep_original": True}, "keep_original .* not supported"),
    ({"profile": "/no/such/profile.json"}, "layer profile not found"),
])
def test_bad_parameters_are_one_clear_error(kwargs, message):
    with pytest.raises(vf.VisfocusError, match=message):
        vf.method("vea", **kwargs)


def test_layers_out_of_range_fail_at_run_time(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match="out of range"):
        tiny_vlms["llava"].answer(image, QUESTION, method=vf.method("vea", layers=(5,)))


# --- layer profiles ------------------------------------------------------------------------------------------------

def test_patch_labels_count_positive_overlap_only():
    view = ImageView("image", np.arange(6), rows=2, cols=3, region=(0, 0, 30, 20), image_size=(30, 20))
    # inside cell 0, touching the boundary x = 10 with cell 1 and y = 10 with row 1: no dilation
    np.testing.assert_array_equal(profiling.patch_labels(view.boxes(), [(5, 2, 10, 10)]), [1, 0, 0, 0, 0, 0])
    # crossing both boundaries of cells 0/1 and rows 0/1 by one pixel
    np.testing.assert_array_equal(profiling.patch_labels(view.boxes(), [(9, 9, 11, 11)]), [1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(profiling.patch_labels(view.boxes(), np.zeros((0, 4))), [0] * 6)


def test_layer_auroc_ranks_layers_and_the_profile_keeps_the_best():
    labels = np.array([[1, 1, 0], [0, 0, 0]])
    reversed_layer = np.array([[0.01, 0.02, 0.3], [0.2, 0.2, 0.27]])
    perfect_layer = np.array([[0.4, 0.3, 0.1], [0.1, 0.05, 0.05]])
    scores = profiling.layer_auroc([reversed_layer, perfect_layer], labels)
    assert scores == [0.0, 1.0]
    assert profiling.top_layers(scores, 0.1) == [1]
    assert profiling.top_layers([0.5] * 25 + [0.9, 0.7, 0.8], 0.1) == [25, 26, 27]  # ceil(2.8) = 3 layers
    assert np.isnan(profiling.layer_auroc([perfect_layer], np.zeros((2, 3)))[0])


def test_profile_round_trips_through_json(tmp_path):
    profile = {"layers": [17, 20, 24], "auroc_per_layer": [0.5] * 28, "n_samples": 100, "model": "m", "task": "t"}
    assert vea.load_profile(vea.save_profile(profile, tmp_path / "sub" / "profile.json")) == profile
    (tmp_path / "bad.json").write_text(json.dumps({"layers": "17"}))
    with pytest.raises(vf.VisfocusError, match="has no 'layers'"):
        vea.load_profile(tmp_path / "bad.json")


def test_profile_layers_on_a_task_with_boxes_feeds_vea(tiny_vlms, tmp_path, image):
    vlm = tiny_vlms["qwen3_vl"]
    profile = profiling.profile_layers(vlm, vf.task("synthetic_spatial"), n=3)
    assert profile["n_samples"] == 3 and profile["task"] == "synthetic_spatial"
    assert len(profile["auroc_per_layer"]) == vlm.num_layers
    assert all(0.0 <= a <= 1.0 for a in profile["auroc_per_layer"])
    assert profile["layers"] == [int(np.argmax(profile["auroc_per_layer"]))]
    path = vea.save_profile(profile, tmp_path / "profile.json")
    out = vlm.answer(image, QUESTION, method=vf.method("vea", profile=str(path)), max_new_tokens=1)
    assert out.extras["evidence_layers"] == profile["layers"]
    assert vlm.answer(image, QUESTION, method=vf.method("vea", profile=str(path), layers=(1,)),
                      max_new_tokens=1).extras["evidence_layers"] == [1]  # layers win over the profile


def test_profile_from_another_model_is_refused(tiny_vlms, tmp_path, image):
    path = vea.save_profile({"layers": [1], "auroc_per_layer": [0.5, 0.6, 0.4]}, tmp_path / "p.json")
    with pytest.raises(vf.VisfocusError, match="made for a model with 3 layers; this one has 2"):
        tiny_vlms["qwen3_vl"].answer(image, QUESTION, method=vf.method("vea", profile=str(path)))


def test_profile_needs_usable_records(tiny_vlms):
    record = vf.task("synthetic_spatial")[0]
    whole = type(record)(id="x", question="q", gold="left", image=make_image(64, 64),
                         boxes=({"label": "all", "xyxy": (0, 0, 1, 1), "normalized": True},))
    with pytest.raises(vf.VisfocusError, match="no usable sample"):
        profiling.profile_layers(tiny_vlms["llava"], [whole], n=2)


def test_profile_layers_command_writes_the_profile(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert profiling.main(["--model", str(tiny_dirs["llava"]), "--task", "synthetic_spatial", "--n", "2",
                 "--out", str(out)]) == 0
    profile = vea.load_profile(out)
    assert profile["model"] == str(tiny_dirs["llava"]) and profile["n_samples"] == 2
    assert f"layers {profile['layers']}" in capsys.readouterr().out
