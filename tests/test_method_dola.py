"""DoLa: the JSD and the layer choice by hand, the head-set cutoff, the candidate buckets, the scores of a run checked
against a separate forward with all hidden states, the repetition penalty, one error per bad parameter.

The tiny fixtures have 2 decoder layers, so hidden-state indices 0 (embedding output) and 1 (after decoder layer 0)
are the only premature layers; "high" is (1,) there."""

from __future__ import annotations

import math

import pytest
import torch

import visfocus as vf
from visfocus.interventions.base import parse_method_args
from visfocus.interventions.dola import candidate_layers, dola_scores, jsd

QUESTIONS = ["Is the cup on the table? Answer with yes or no.", "Where is the dog?"]
INF = float("inf")


# --- the pure functions ---------------------------------------------------------------------------------------------

def test_jsd_by_hand():
    # p = (0.5, 0.5), q = (0.75, 0.25), m = (0.625, 0.375):
    # KL(p‖m) = 0.5·ln(0.5/0.625) + 0.5·ln(0.5/0.375) = 0.5·(−0.223144) + 0.5·0.287682 = 0.032269
    # KL(q‖m) = 0.75·ln(0.75/0.625) + 0.25·ln(0.25/0.375) = 0.75·0.182322 − 0.25·0.405465 = 0.035375
    # JSD = (0.032269 + 0.035375) / 2 = 0.033822
    p, q = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.75, 0.25]).log() + 7.0  # logits: any offset
    assert float(jsd(p, q)) == pytest.approx(0.033822, abs=1e-6)
    assert float(jsd(q, p)) == pytest.approx(0.033822, abs=1e-6)
    # p = (0.5, 0.25, 0.25), q = (0.25, 0.25, 0.5), m = (0.375, 0.25, 0.375):
    # KL(p‖m) = KL(q‖m) = 0.5·ln(4/3) + 0.25·ln(2/3) = 0.143841 − 0.101366 = 0.042475
    rows_p = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]).log()
    rows_q = torch.tensor([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]]).log()
    torch.testing.assert_close(jsd(rows_p, rows_q), torch.tensor([0.042475, 0.0]), atol=1e-6, rtol=0)  # per row
    assert float(jsd(torch.tensor([50.0, -50.0]), torch.tensor([-50.0, 50.0]))) == pytest.approx(math.log(2))


def test_the_most_different_premature_layer_is_chosen_per_row():
    final = torch.tensor([[0.5, 0.3, 0.16, 0.04], [0.25, 0.25, 0.25, 0.25]]).log()  # (B=2, V=4)
    premature = {
        2: final.clone(),  # the final distribution itself: JSD 0, never chosen
        4: torch.tensor([[0.05, 0.15, 0.3, 0.5], [0.3, 0.25, 0.25, 0.2]]).log(),  # far from row 0, near row 1
        6: torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.97, 0.01, 0.01, 0.01]]).log(),  # near row 0, far from row 1
    }
    scores, chosen = dola_scores(final, premature, relative_top=0.1)
    assert chosen == [4, 6]
    # Row 0: head = p ≥ 0.05 drops 0.04; F = ln(0.5/0.05), ln(0.3/0.15), ln(0.16/0.3) = 2.302585, 0.693147, −0.628609
    torch.testing.assert_close(scores[0], torch.tensor([2.302585, 0.693147, -0.628609, -INF]), atol=1e-5, rtol=0)
    # Row 1: uniform, all in the head; F = ln(0.25/0.97), ln(0.25/0.01) ×3 = −1.355835, 3.218876
    torch.testing.assert_close(scores[1], torch.tensor([-1.355835, 3.218876, 3.218876, 3.218876]), atol=1e-5,
                               rtol=0)


def test_head_set_keeps_tokens_with_p_at_least_relative_top_times_max():
    final = torch.tensor([[0.5, 0.3, 0.16, 0.04]]).log()
    premature = {0: torch.zeros(1, 4)}

    def head(relative_top):
        return torch.isfinite(dola_scores(final, premature, relative_top)[0]).tolist()
    assert head(0.1) == [[True, True, True, False]]  # p ≥ 0.05
    assert head(0.5) == [[True, True, False, False]]  # p ≥ 0.25
    assert head(1.0) == [[True, False, False, False]]  # the most probable token only
    assert head(0.01) == [[True, True, True, True]]  # p ≥ 0.005


def test_candidate_buckets():
    assert candidate_layers("low", 2, tied_embeddings=False) == (0,)
    assert candidate_layers("high", 2, tied_embeddings=False) == (1,)
    assert candidate_layers("low", 2, tied_embeddings=True) == (1,)  # the embedding output is skipped
    assert candidate_layers("high", 2, tied_embeddings=True) == (1,)
    assert candidate_layers("low", 28, tied_embeddings=False) == (0, 2, 4, 6, 8, 10, 12)
    assert candidate_layers("low", 28, tied_embeddings=True) == (2, 4, 6, 8, 10, 12)
    assert candidate_layers("high", 28, tied_embeddings=True) == (14, 16, 18, 20, 22, 24, 26)
    assert candidate_layers("low", 48, tied_embeddings=False) == (0, 2, 4, 6, 8, 10, 12, 14, 16, 18)
    assert candidate_layers("low", 48, tied_embeddings=True) == (2, 4, 6, 8, 10, 12, 14, 16, 18)
    assert candidate_layers("high", 48, tied_embeddings=False) == (28, 30, 32, 34, 36, 38, 40, 42, 44, 46)
    assert candidate_layers((0, 5), 28, tied_embeddings=True) == (0, 5)
    with pytest.raises(vf.VisfocusError, match="out of range"):
        candidate_layers((28,), 28, tied_embeddings=False)  # 28 is the final layer itself


def test_an_empty_bucket_is_one_clear_error_naming_the_layers_available():
    # "low" on a 3-layer tied decoder: range(2, 1, 2) is empty; decoding it would keep no premature layer at all
    with pytest.raises(vf.VisfocusError) as err:
        candidate_layers("low", 3, tied_embeddings=True)
    assert str(err.value) == ("layers='low' leaves no premature layer on this 3-layer decoder with tied embeddings "
                              "(the embedding output is skipped); give hidden-state indices 0..2 or layers='high' (1)")


def _transformers_layer_choice(candidates, final_logits, premature):
    """transformers 4.49's ``_dola_select_contrast`` layer choice, ported line by line (a batch of one)."""
    import torch.nn.functional as F  # noqa: N812

    stacked = torch.stack([premature[j] for j in candidates], dim=0)  # (J, 1, V)
    softmax_mature_layer = F.softmax(final_logits, dim=-1)
    softmax_premature_layers = F.softmax(stacked, dim=-1)
    avg_dist = 0.5 * (softmax_mature_layer[None, :, :] + softmax_premature_layers)
    log_softmax_mature_layer = F.log_softmax(final_logits, dim=-1)
    log_softmax_premature_layers = F.log_softmax(stacked, dim=-1)
    kl1 = F.kl_div(log_softmax_mature_layer[None, :, :], avg_dist, reduction="none").mean(-1)
    kl2 = F.kl_div(log_softmax_premature_layers, avg_dist, reduction="none").mean(-1)
    js_divs = 0.5 * (kl1 + kl2)
    js_divs = js_divs.mean(-1)  # average over the batch
    return candidates[int(js_divs.argmax().cpu().item())]


def test_the_transformers_divergence_picks_the_layer_transformers_picks():
    disagree = 0
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        candidates = [0, 2, 4, 6]
        final = torch.randn(1, 50, generator=gen) * 2
        # premature layers close to each other, so that the two scores can rank them differently
        base = torch.randn(1, 50, generator=gen) * 2
        premature = {j: base + 0.5 * torch.randn(1, 50, generator=gen) for j in candidates}
        _, chosen = dola_scores(final, premature, relative_top=0.1, divergence="transformers")
        assert chosen == [_transformers_layer_choice(candidates, final, premature)]
        disagree += chosen != dola_scores(final, premature, relative_top=0.1)[1]
    assert disagree > 0  # the option matters: the true JSD ranks some of these differently


def test_the_transformers_divergence_chooses_per_row_as_for_a_batch_of_one():
    gen = torch.Generator().manual_seed(0)
    final, candidates = torch.randn(5, 40, generator=gen), [1, 3, 5]
    premature = {j: torch.randn(5, 40, generator=gen) for j in candidates}
    _, chosen = dola_scores(final, premature, relative_top=0.1, divergence="transformers")
    assert chosen == [_transformers_layer_choice(candidates, final[b:b + 1], {j: p[b:b + 1] for j, p in
                                                                              premature.items()}) for b in range(5)]


# --- on the tiny models ---------------------------------------------------------------------------------------------

def _first_step_by_hand(vlm, runner, layers, final_norm, divergence="jsd"):
    """DoLa's first-step scores from one separate forward with all hidden states (transformers' indexing), and the
    premature logits it contrasted with."""
    kwargs = dict(runner.inputs)
    if runner.prefill_position_ids is not None:
        kwargs["position_ids"] = runner.prefill_position_ids
    with torch.no_grad():
        out = vlm.model(**kwargs, output_hidden_states=True)
        norm, lm_head = vlm.adapter.final_norm, vlm.adapter.lm_head
        premature = {j: lm_head(norm(out.hidden_states[j][:, -1]) if final_norm else out.hidden_states[j][:, -1])
                     for j in layers}
    return (*dola_scores(out.logits[:, -1], premature, relative_top=0.1, divergence=divergence),
            out.logits[:, -1], premature)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
@pytest.mark.parametrize("final_norm", [False, True])
@pytest.mark.parametrize("divergence", ["jsd", "transformers"])
def test_run_scores_match_a_forward_with_all_hidden_states(family, final_norm, divergence, tiny_vlms, image,
                                                           other_image):
    vlm = tiny_vlms[family]
    batch = vlm.prepare([image, other_image], QUESTIONS)  # left padded
    method = vf.method("dola", layers=(0, 1), repetition_penalty=1.0, final_norm=final_norm, divergence=divergence)
    result = method.apply(batch, max_new_tokens=3)
    expected, chosen, final, premature = _first_step_by_hand(vlm, batch.runner, (0, 1), final_norm, divergence)
    torch.testing.assert_close(result.generation.first_scores, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.generation.first_logits, final.float(), atol=1e-5, rtol=0)  # the model's own
    assert torch.equal(result.generation.new_tokens[:, 0], expected.argmax(-1))
    assert [e["premature_layer"] for e in result.extras] == chosen
    assert result.extras[0]["candidate_layers"] == [0, 1] and not hasattr(result, "alpha_used")
    assert all("alpha_used" not in row for row in result.extras)
    if divergence == "transformers":  # each row as transformers would choose for it alone
        assert chosen == [_transformers_layer_choice([0, 1], final[b:b + 1], {j: p[b:b + 1] for j, p in
                                                                              premature.items()}) for b in range(2)]


def test_defaults_use_the_high_bucket_and_one_forward_per_token(tiny_vlms, image):
    vlm = tiny_vlms["qwen3_vl"]
    plain = vlm.answer(image, QUESTIONS[0], max_new_tokens=3, share_prefix=False)
    out = vlm.answer(image, QUESTIONS[0], method=vf.method("dola"), max_new_tokens=3, share_prefix=False)
    assert out.extras == {"premature_layer": 1, "candidate_layers": [1]}
    assert out.cost["forward_passes"] == plain.cost["forward_passes"] == 3
    result = vf.method("dola").apply(vlm.prepare([image], QUESTIONS[:1]), max_new_tokens=1)
    assert int(result.generation.first_scores.argmax()) == int(result.generation.new_tokens[0, 0])  # what chose it


@pytest.mark.parametrize("family", ["qwen3_vl", "llava_next"])
def test_repetition_penalty_acts_on_the_dola_scores_of_prompt_tokens(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    first, raw = {}, {}
    for penalty in (1.0, 1.2):
        batch = vlm.prepare([image, other_image], QUESTIONS)
        method = vf.method("dola", layers=(0,), repetition_penalty=penalty, relative_top=1e-4)  # a wide head set
        generation = method.apply(batch, max_new_tokens=1).generation
        first[penalty], raw[penalty] = generation.first_scores, generation.first_logits
    assert torch.equal(raw[1.0], raw[1.2])  # the model's own logits: before DoLa and the penalty
    ids, mask = batch.runner.inputs["input_ids"], batch.runner.inputs["attention_mask"]
    expected = first[1.0].clone()
    for b in range(2):
        seen = ids[b][mask[b] == 1].unique()  # the prompt's tokens, left padding aside
        s = expected[b, seen]
        expected[b, seen] = torch.where(s < 0, s * 1.2, s / 1.2)
    torch.testing.assert_close(first[1.2], expected, atol=1e-6, rtol=0)
    changed = torch.isfinite(first[1.0]) & (first[1.2] != first[1.0])  # (B, V)
    assert changed.any(-1).all()  # some prompt tokens are in the head set of both rows


# --- parameters -----------------------------------------------------------------------------------------------------

def test_command_line_arguments_are_typed():
    assert parse_method_args("dola", "layers=0;1,repetition_penalty=1.1,relative_top=0.2,final_norm=true") == {
        "layers": (0, 1), "repetition_penalty": 1.1, "relative_top": 0.2, "final_norm": True}
    assert vf.methods()["dola"] == {"layers": "high", "repetition_penalty": 1.2, "relative_top": 0.1,
                                    "final_norm": False, "divergence": "jsd"}


@pytest.mark.parametrize("kwargs, name", [
    ({"layers": "middle"}, "layers"), ({"layers": ()}, "layers"), ({"layers": (True,)}, "layers"),
    ({"layers": (0.5,)}, "layers"), ({"repetition_penalty": 0.9}, "repetition_penalty"),
    ({"relative_top": 0.0}, "relative_top"), ({"relative_top": 1.5}, "relative_top"),
    ({"final_norm": "no"}, "final_norm"), ({"divergence": "kl"}, "divergence"),
])
def test_bad_parameters_raise_one_clear_error(kwargs, name):
    with pytest.raises(vf.VisfocusError, match=name) as err:
        vf.method("dola", **kwargs)
    assert "\n" not in str(err.value)


def test_layers_beyond_the_decoder_raise_one_clear_error(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match=r"out of range.*0\.\.1") as err:
        tiny_vlms["llava"].answer(image, QUESTIONS[0], method=vf.method("dola", layers=(2,)))
    assert "\n" not in str(err.value)
