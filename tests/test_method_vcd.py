"""VCD: the contrast and its plausibility cutoff by hand, VCD's noise schedule and noise, a contrast stream that follows
the main stream token by token, α = 0 as the plain model, two forward passes per token, one error per bad parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

import visfocus as vf
from visfocus.interventions.base import parse_method_args
from visfocus.interventions.vcd import NoisedContrast, add_diffusion_noise, contrast, noise_schedule, noised_pixels
from visfocus.steer.streams import ImageStream
from visfocus.testing import FAMILIES

QUESTION = "Is the cup on the table? Answer with yes or no."
INF = float("inf")


# --- the pure functions ---------------------------------------------------------------------------------------------

def test_contrast_on_a_hand_made_case():
    z = torch.tensor([[2.0, 1.0, 0.0, -3.0]])
    z_noised = torch.tensor([[1.0, 1.5, 0.0, 0.0]])
    # Cutoff max z + log 0.1 = 2 − 2.3026 = −0.3026: only the last token (z = −3) is implausible.
    # α = 1:   2·z − z'       = [4 − 1, 2 − 1.5, 0 − 0, −inf]       = [3.0, 0.5, 0.0, −inf]
    # α = 0.5: 1.5·z − 0.5·z' = [3 − 0.5, 1.5 − 0.75, 0 − 0, −inf] = [2.5, 0.75, 0.0, −inf]
    assert contrast(z, z_noised, alpha=1.0, beta=0.1).tolist() == [[3.0, 0.5, 0.0, -INF]]
    assert contrast(z, z_noised, alpha=0.5, beta=0.1).tolist() == [[2.5, 0.75, 0.0, -INF]]
    assert torch.equal(contrast(z, z_noised, alpha=0.0, beta=1e-30), z)  # α = 0, nothing cut: the plain logits


def test_plausibility_cutoff_keeps_tokens_with_p_at_least_beta_times_max_p():
    probs = torch.tensor([[0.5, 0.051, 0.049, 0.4], [0.02, 0.6, 0.3, 0.08]])
    z = probs.log() + 3.0  # logits are log-probabilities up to a constant per row
    # Row 0 keeps p ≥ 0.05 (0.049 goes); row 1 keeps p ≥ 0.06 (0.02 goes).
    cut = torch.isinf(contrast(z, torch.zeros_like(z), alpha=1.0, beta=0.1))
    assert cut.tolist() == [[False, False, True, False], [True, False, False, False]]
    # A noised stream that rules the cut token out entirely cannot bring it back.
    z_noised = torch.tensor([[0.0, 0.0, -100.0, 0.0]] * 2)
    assert contrast(z, z_noised, alpha=1.0, beta=0.1)[0, 2] == -INF
    # β = 1 keeps only the most probable token.
    assert torch.isfinite(contrast(z, z_noised, alpha=1.0, beta=1.0)).tolist() == [[True, False, False, False],
                                                                                  [False, True, False, False]]


def test_noise_schedule_is_vcds_sigmoid_schedule():
    betas = 1 / (1 + np.exp(-np.linspace(-6, 6, 1000))) * (5e-3 - 1e-5) + 1e-5
    alpha_bar = noise_schedule()
    assert alpha_bar.shape == (1000,)
    # T = 0 is one step: 1 − β_0 = 1 − (sigmoid(−6)·(5e-3 − 1e-5) + 1e-5) = 1 − (0.00247262·0.00499 + 1e-5)
    assert float(alpha_bar[0]) == pytest.approx(1 - (0.0024726231566347743 * 4.99e-3 + 1e-5), abs=1e-15)
    assert float(alpha_bar[0]) == pytest.approx(0.99997766161, abs=1e-11)
    assert float(alpha_bar[500]) == pytest.approx(np.prod(1 - betas[:501]), rel=1e-12)
    assert float(alpha_bar[500]) == pytest.approx(0.74479852604, abs=1e-11)
    np.testing.assert_allclose(alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-12)


def test_diffusion_noise_mixes_the_pixels_with_seeded_gaussian_noise():
    v = torch.linspace(-1, 1, 24).reshape(2, 3, 4)
    noised = add_diffusion_noise(v, 500, torch.Generator().manual_seed(7))
    eps = torch.randn(v.shape, generator=torch.Generator().manual_seed(7))
    # sqrt(0.74479853) = 0.86301711, sqrt(1 − 0.74479853) = 0.50517470
    torch.testing.assert_close(noised, 0.86301711 * v + 0.50517470 * eps, atol=1e-6, rtol=0)
    spread = add_diffusion_noise(torch.zeros(100_000), 500, torch.Generator().manual_seed(0)).std()
    assert float(spread) == pytest.approx(0.5052, abs=0.005)
    assert torch.equal(add_diffusion_noise(v, 0, torch.Generator().manual_seed(1)),
                       add_diffusion_noise(v, 0, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_each_image_gets_the_same_noise_alone_or_in_a_batch(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    batch = noised_pixels(vlm.prepare([image, other_image], [QUESTION, "Where is the dog?"]).runner.inputs, 500, seed=3)
    alone = [noised_pixels(vlm.prepare([im], [QUESTION]).runner.inputs, 500, seed=3) for im in (image, other_image)]
    torch.testing.assert_close(batch, torch.cat(alone), atol=0, rtol=0)


# --- on the tiny models ---------------------------------------------------------------------------------------------

class Recording:
    """A side stream that keeps every (B, V) logits it returns."""

    def __init__(self, stream) -> None:
        self.stream, self.seen = stream, []

    def logits(self, input_ids):
        logits = self.stream.logits(input_ids)
        self.seen.append(logits)
        return logits


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_contrast_stream_on_the_original_pixels_follows_the_main_stream(family, share_prefix, tiny_vlms, image,
                                                                        other_image):
    batch = tiny_vlms[family].prepare([image, other_image, image], [QUESTION, "Where is the dog?", "left"],
                                      share_prefix=share_prefix)
    runner = batch.runner
    assert (runner.inputs["attention_mask"] == 0).any()  # a padded batch: positions must be right per row
    runner.contract = vf.method("vcd").contract()  # what VCD declared covers the stream and the processor
    image_stream = batch.image_stream({"pixel_values": runner.inputs["pixel_values"]}, tag="original pixels")
    assert isinstance(image_stream, ImageStream)
    stream = Recording(image_stream)
    generation = runner.generate((), 5, logits_processor=LogitsProcessorList([NoisedContrast(stream, 1.0, 0.1)]),
                                 min_new_tokens=5)
    assert len(stream.seen) == len(generation.step_logits) == 5
    for seen, main in zip(stream.seen, generation.step_logits):  # prefill, then one token at a time from its cache
        torch.testing.assert_close(seen, main.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_alpha_zero_is_the_plain_model(family, tiny_vlms, image):
    vlm = tiny_vlms[family]
    plain = vlm.answer(image, QUESTION, max_new_tokens=4)
    vcd = vlm.answer(image, QUESTION, method=vf.method("vcd", alpha=0.0), max_new_tokens=4)
    assert vcd.text == plain.text
    probs = torch.softmax(plain.first_token_logits, dim=-1)
    plausible = probs >= 0.1 * probs.max()
    assert torch.equal(torch.isfinite(vcd.first_token_scores), plausible)
    assert (vcd.first_token_scores[plausible] - plain.first_token_logits[plausible]).abs().max() <= 1e-5
    assert (vcd.first_token_logits - plain.first_token_logits).abs().max() <= 1e-5  # the clean stream's own logits
    nothing_cut = vlm.answer(image, QUESTION, method=vf.method("vcd", alpha=0.0, beta=1e-30), max_new_tokens=4)
    assert (nothing_cut.first_token_scores - plain.first_token_logits).abs().max() <= 1e-5
    assert vcd.extras == {"noise_step": 500}  # and no alpha_used: VCD reports none


def test_cost_is_two_forward_passes_per_token_and_the_trace_is_the_clean_image(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    plain = vlm.answer(image, QUESTION, max_new_tokens=4, trace=True, share_prefix=False)
    vcd = vlm.answer(image, QUESTION, method=vf.method("vcd", alpha=0.0), max_new_tokens=4, trace=True,
                     share_prefix=False)
    assert plain.cost["forward_passes"] == 4  # one per generated token
    for key in ("forward_passes", "prefill_tokens", "decode_tokens"):
        assert vcd.cost[key] == 2 * plain.cost[key]
    torch.testing.assert_close(vcd.trace.last_row, plain.trace.last_row, atol=1e-6, rtol=0)


def test_contrast_changes_the_answer_logits_and_batches_match_single_answers(tiny_vlms, image, other_image):
    vlm = tiny_vlms["qwen2_vl"]
    method = vf.method("vcd", alpha=1.0, noise_step=999)
    plain = vlm.answer(image, QUESTION, max_new_tokens=3)
    single = [vlm.answer(im, QUESTION, method=method, max_new_tokens=3) for im in (image, other_image)]
    batch = vlm.answer_batch([image, other_image], [QUESTION, QUESTION], method=method, max_new_tokens=3)
    finite = torch.isfinite(single[0].first_token_scores)
    assert (single[0].first_token_scores[finite] - plain.first_token_logits[finite]).abs().max() > 1e-3
    assert (single[0].first_token_logits - plain.first_token_logits).abs().max() <= 1e-5  # the plain model's logits
    for one, batched in zip(single, batch):
        assert batched.text == one.text
        torch.testing.assert_close(batched.first_token_scores, one.first_token_scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(batched.first_token_logits, one.first_token_logits, atol=1e-4, rtol=0)


def test_seeded_sampling_repeats_and_draws_only_plausible_tokens(tiny_vlms, image, other_image):
    vlm = tiny_vlms["llava"]
    method = vf.method("vcd", sample=True, seed=3)
    runs = [method.apply(vlm.prepare([image, other_image], [QUESTION, QUESTION]), max_new_tokens=4).generation
            for _ in range(2)]
    assert torch.equal(runs[0].new_tokens, runs[1].new_tokens)
    first = runs[0].new_tokens[:, 0]  # (B,)
    assert torch.isfinite(runs[0].first_scores[torch.arange(2), first]).all()


# --- parameters -----------------------------------------------------------------------------------------------------

def test_command_line_arguments_are_typed():
    assert parse_method_args("vcd", "alpha=0.5,beta=0.2,noise_step=200,sample=true,seed=4") == {
        "alpha": 0.5, "beta": 0.2, "noise_step": 200, "sample": True, "seed": 4}
    assert vf.methods()["vcd"] == {"alpha": 1.0, "beta": 0.1, "noise_step": 500, "sample": False, "seed": 0}


@pytest.mark.parametrize("kwargs, name", [
    ({"alpha": -0.5}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"beta": 0.0}, "beta"), ({"beta": 1.5}, "beta"),
    ({"noise_step": 1000}, "noise_step"), ({"noise_step": -1}, "noise_step"), ({"noise_step": 2.5}, "noise_step"),
    ({"sample": "yes"}, "sample"), ({"seed": 1.5}, "seed"),
])
def test_bad_parameters_raise_one_clear_error(kwargs, name):
    with pytest.raises(vf.VisfocusError, match=name) as err:
        vf.method("vcd", **kwargs)
    assert "\n" not in str(err.value)
