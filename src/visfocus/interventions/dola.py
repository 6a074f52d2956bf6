"""DoLa, Decoding by Contrasting Layers (Chuang et al., ICLR 2024). Each step scores a token by how much the final
layer's log-probability exceeds a premature layer's, F = log p_N − log p_M, on the head set V_head = {x : p_N(x) ≥
relative_top · max p_N}, −inf elsewhere. M is picked per token and per batch row from the candidate layers J as the
one furthest from the final distribution, argmax_j JSD(p_N ‖ p_j) (the true JSD in nats). The DoLa and transformers
code score 0.5·(KL(m‖p_N) + KL(m‖p_j)) averaged over the vocabulary instead, and pick one layer per batch:
``divergence="transformers"`` reproduces their choice (per row, i.e. theirs for a batch of one). Then a repetition
penalty (transformers' processor, 1.2 as the paper recommends) that replaces the model's own and skips left padding,
and every other processor of the model's generation config (no-repeat n-gram, min new tokens, bad words, suppressed
tokens, …): after the contrast, as in the DoLa code and transformers' own DoLa decoding (``logits_processor`` on the
contrasted scores). Decoding is greedy.

Layers are hidden-state indices, as in transformers' ``dola_layers``: j is the input to decoder layer j (the output of
the first j layers), 0 the embedding output; the final layer N = L gives the model's logits. For an L-layer decoder
"low" = range(s, L//2, 2) and "high" = range(L//2, L, 2) when L ≤ 40, range(s, 20, 2) / range(L−20, L, 2) beyond;
s = 0, or, with tied input/output embeddings, 2 (1 when L = 2) to skip the embedding output; "low" is [s] when
s = L//2. Explicit indices must lie in 0..L−1. Premature logits are lm_head(h_j) without the final norm
(``final_norm=False``: the DoLa / early-exit convention); ``final_norm=True`` applies it first (the logit lens).

transformers ≥ 4.53 moved DoLa to the Hub (``transformers-community/dola``), which cannot load offline, so this is
native: the engine's layer_input site keeps each candidate's last-position hidden state (``steer.sites``) and a logits
processor scores the tokens. The answer's ``first_token_scores`` are the DoLa scores that chose the token; its
``first_token_logits`` the model's own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from visfocus.errors import VisfocusError
from visfocus.interventions.base import Fidelity, Method, MethodResult, Params, param, register_method
from visfocus.interventions.batch import Batch
from visfocus.interventions.decoding import choose_layer, early_exit_logits, plausibility_cut, processor_order_fidelity
from visfocus.steer.sites import LastPositionReader


def candidate_layers(spec: str | tuple[int, ...], num_layers: int, tied_embeddings: bool) -> tuple[int, ...]:
    """The candidate premature layers (hidden-state indices) for "low", "high" or explicit indices."""
    if not isinstance(spec, str):
        if any(not 0 <= j < num_layers for j in spec):
            raise VisfocusError(f"layers {list(spec)} out of range: premature layers are hidden-state indices "
                                f"0..{num_layers - 1} (0 = embedding output) of a {num_layers}-layer decoder")
        return tuple(spec)
    L = num_layers
    start = 0 if not tied_embeddings else (2 if L > 2 else (1 if L == 2 else 0))
    if spec == "low":
        layers = (start,) if start == L // 2 else tuple(range(start, L // 2 if L <= 40 else 20, 2))
    else:
        layers = tuple(range(L // 2 if L <= 40 else L - 20, L, 2))
    if not layers:  # e.g. "low" on a 3-layer decoder with tied embeddings: nothing to contrast with
        high = candidate_layers("high", num_layers, tied_embeddings)
        raise VisfocusError(f"layers={spec!r} leaves no premature layer on this {L}-layer decoder"
                            f"{' with tied embeddings (the embedding output is skipped)' if tied_embeddings else ''}; "
                            f"give hidden-state indices 0..{L - 1} or layers='high' ({', '.join(map(str, high))})")
    return layers


def jsd(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(...,) Jensen–Shannon divergence in nats between softmax(p_logits) and softmax(q_logits), over the last dim."""
    return _jsd_of_log_probs(p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1))


def _jsd_of_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)  # (..., V) log of the mixture (p + q) / 2

    def kl_to_m(log_a: torch.Tensor) -> torch.Tensor:
        return torch.where(log_a > -math.inf, log_a.exp() * (log_a - log_m), 0.0).sum(-1)  # (...,)

    return 0.5 * kl_to_m(log_p) + 0.5 * kl_to_m(log_q)


def transformers_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """(...,) transformers' (and the DoLa code's) layer-choice score: 0.5·(KL(m‖p) + KL(m‖q)) averaged over the
    vocabulary, m = (p + q) / 2 — the KL terms the other way round from the JSD, as ``F.kl_div(log_x, m)`` computes
    them. transformers also averages it over the batch and picks one layer for all rows; here each row picks its own,
    which is transformers' choice for a batch of one."""
    m = 0.5 * (log_p.exp() + log_q.exp())  # (..., V)
    kl_m_p = torch.nn.functional.kl_div(log_p, m, reduction="none").mean(-1)  # (...,)
    kl_m_q = torch.nn.functional.kl_div(log_q, m, reduction="none").mean(-1)  # (...,)
    return 0.5 * (kl_m_p + kl_m_q)


DIVERGENCES = {"jsd": _jsd_of_log_probs, "transformers": transformers_divergence}


def dola_scores(final_logits: torch.Tensor, premature_logits_by_layer: dict[int, torch.Tensor],
                relative_top: float, divergence: str = "jsd") -> tuple[torch.Tensor, list[int]]:
    """(B, V) F = log p_N − log p_M on V_head (−inf elsewhere), and M per row: the candidate furthest from the final
    distribution by ``divergence`` (``DIVERGENCES``), ties to the earlier candidate (``decoding.choose_layer``)."""
    measure = DIVERGENCES[divergence]
    log_p_final = final_logits.float().log_softmax(-1)  # (B, V)

    def furthest(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_q = logits.float().log_softmax(-1)  # (B, V)
        return log_q, measure(log_p_final, log_q)  # (B, V), (B,)

    choice = choose_layer(premature_logits_by_layer, furthest, initial=log_p_final)
    return plausibility_cut(log_p_final - choice.kept, log_p_final, relative_top), choice.layers


class LayerContrast(LogitsProcessor):
    """Scores every step with ``dola_scores`` from the premature layers' hidden states that ``reader`` (the
    layer_input site) keeps; ``chosen``: per step, the premature layer of each row."""

    def __init__(self, adapter, reader: LastPositionReader, relative_top: float, final_norm: bool,
                 divergence: str = "jsd") -> None:
        self.adapter, self.reader = adapter, reader
        self.relative_top, self.final_norm, self.divergence = relative_top, final_norm, divergence
        self.chosen: list[list[int]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        premature = {j: early_exit_logits(self.adapter, self.reader.hidden[j], self.final_norm).to(scores.device)
                     for j in self.reader.layers}  # {j: (B, V)} in the model's dtype
        out, chosen = dola_scores(scores, premature, self.relative_top, self.divergence)
        self.chosen.append(chosen)
        return out


@dataclass(frozen=True)
class DoLaParams(Params):
    layers: str | tuple[int, ...] = "high"  # "low", "high" or hidden-state indices (``dola_layers``)
    repetition_penalty: float = param(1.2, low=1.0)  # ≥ 1, on the DoLa scores; replaces the model's own penalty
    # head set: keep tokens with p_N ≥ relative_top · max p_N
    relative_top: float = param(0.1, paper="α", low=0, high=1, low_open=True)
    final_norm: bool = False  # apply the final norm to premature hidden states (False: DoLa's convention)
    # how the premature layer is picked: "jsd", the true Jensen–Shannon divergence the paper names (default), or
    # "transformers", the score transformers' and the DoLa paper's code compute (``transformers_divergence``), to
    # reproduce their layer choice; the two pick different layers when several candidates are close
    divergence: str = param("jsd", choices=tuple(DIVERGENCES))

    def check(self, num_layers: int | None = None) -> None:
        if isinstance(self.layers, str):
            if self.layers not in ("low", "high"):
                raise VisfocusError(f"layers must be 'low', 'high' or layer indices, got {self.layers!r}")
        elif not isinstance(self.layers, (tuple, list)) or not self.layers \
                or any(not isinstance(j, int) or isinstance(j, bool) for j in self.layers):
            raise VisfocusError(f"layers must be 'low', 'high' or a non-empty tuple of layer indices, "
                                f"got {self.layers!r}")
        elif num_layers is not None:
            candidate_layers(self.layers, num_layers, tied_embeddings=False)


@register_method
class DoLa(Method):
    name = "dola"
    paper = ("Chuang et al., ICLR 2024, “DoLa: Decoding by Contrasting Layers Improves Factuality in Large Language "
             "Models”, https://arxiv.org/abs/2309.03883")
    equation = ("M = argmax_{j ∈ J} JSD(p_N ‖ p_j)\n"
                "F(x) = log p_N(x) − log p_M(x) where p_N(x) ≥ α·max p_N, −∞ elsewhere")
    fidelity = (
        Fidelity(reference="the paper's equation computed by hand in the test",
                 equal="the premature layer chosen per row and the scores F",
                 tolerance="max abs ≤ 1e-5",
                 test="tests/test_method_dola.py::test_the_most_different_premature_layer_is_chosen_per_row"),
        Fidelity(reference="transformers 4.49, generation/utils.py _dola_select_contrast (the DoLa code in "
                           "transformers): its layer choice ported line by line in the test",
                 equal="the premature layer chosen, in 200 random cases (a batch of one)",
                 tolerance="exact",
                 test="tests/test_method_dola.py::test_the_transformers_divergence_picks_the_layer_transformers_picks",
                 option="divergence=transformers"),
        Fidelity(reference="a separate plain forward with all hidden states, its first step scored in the test by "
                           "dola_scores (the function checked by hand)",
                 equal="first-step scores, the premature layer and the first token of a left-padded batch",
                 tolerance="fp32, max abs ≤ 1e-5",
                 test="tests/test_method_dola.py::test_run_scores_match_a_forward_with_all_hidden_states"),
        processor_order_fidelity(
            "an independent reference in transformers' _dola_decoding order (logits_processor on the "
            "contrasted scores): plain full forwards, the correction written in the test, "
            "transformers' processor classes applied in that order",
            warpers=False),
    )
    supports_sampling = False  # greedy by definition
    search_grid = {"layers": ("low", "high"), "repetition_penalty": (1.0, 1.2)}
    Params = DoLaParams
    sites = frozenset({"layer_input", "logits"})
    extras = {"premature_layer": "M, the premature layer chosen for the first answer token (a hidden-state index)",
              "candidate_layers": "the candidate premature layers J"}

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p, runner, model = self.params, batch.runner, batch.runner.model
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        candidates = candidate_layers(p.layers, batch.num_layers, tied)
        reader = LastPositionReader(candidates, device=model.get_output_embeddings().weight.device)  # the LM head's
        contrast = LayerContrast(batch.adapter, reader, p.relative_top, p.final_norm, p.divergence)
        # the penalty (in place of the model's own) and the model's other processors run after the contrast
        # (processors_after_correction); left padding is not penalised, as in generate
        generation = runner.generate((), max_new_tokens, logits_processor=LogitsProcessorList([contrast]),
                                     layer_hooks=(reader,), repetition_penalty=p.repetition_penalty)
        extras = [{"premature_layer": j, "candidate_layers": list(candidates)} for j in contrast.chosen[0]]
        return MethodResult(generation, extras=extras)
