"""DeCo, Dynamic Correction Decoding (Wang et al., "MLLM Can See? Dynamic Correction Decoding for Hallucination
Mitigation", ICLR 2025). Reference code: zjunlp/DeCo, which patches ``generation/utils.py`` of transformers 4.29.2
(``deco_greedy_search``, ~L2660–2682), and the same group's port in zjunlp/EasyEdit,
``easyeditor/models/deco/generate.py`` (``_deco_greedy_decoding``; defaults in ``hparams/DeCo/llama-7b.yaml``).

At every decoding step, for each batch row (the reference decodes one sample at a time; rows here are independent):

1. Candidates C: the final layer's top-k tokens (``top_k``, default 20), cut at cumulative probability ``top_p``
   (default 0.9) exactly as the reference does: with p the final layer's softmax over the whole vocabulary (not
   renormalised over the top k) and c_i the cumulative sum of the i-th largest probabilities (i = 0, 1, ...), keep the
   tokens 0..i*, where i* is the first i with c_i ≥ top_p (``torch.searchsorted(c, top_p, right=False)``), i.e. the
   token that reaches or crosses top_p is kept; keep all k when c never reaches top_p, and always at least one.
2. For each anchor candidate layer l in ``layers`` (default the fraction ``"0.625:0.9"`` of the depth: 20..28 on 32
   layers, as the reference's ``early_exit_layers``), q_l = softmax(lm_head(norm(h_l))) at the last position, with the
   final norm applied as the reference does (``lm_head(norm(outputs.hidden_states[l]))``).
3. (l*, m) = argmax over (l, c ∈ C) of q_l[c], m the maximum probability (a scalar per row). Ties go to the earlier
   layer in ``layers`` order, then to the more probable candidate, as the reference's flat ``argmax`` over the
   (layers, candidates) grid does.
4. Scores = z_L + α·m·z_{l*} on C (raw logits, not log-probabilities), −inf elsewhere.
5. Then the model's own logits processors, every one its generation config or the caller sets (repetition penalty,
   no-repeat n-gram, min new tokens, bad words, suppressed tokens, …) and, when sampling, the warpers: after the
   correction, as the reference's ``deco_greedy_search`` runs its whole ``logits_processor`` list on the blended,
   masked scores (``final_token_logits``). transformers alone would run its own before a processor passed to
   ``generate``; ``processors_after_correction`` (the default) puts them after.

Layers are hidden-state indices as in transformers' ``output_hidden_states`` and the reference's
``outputs.hidden_states[l]``: l is the input of decoder layer l, i.e. the output of the first l layers (0 = the
embedding output), so the reference's layers 20..28 are the outputs of blocks 19..27. The pre-hook of DoLa's
``LastPositionReader`` (the layer_input site) of decoder layer l captures exactly that input (Qwen3-VL's DeepStack adds
visual features only at image positions, never at the last, text position read here). Valid indices are 0..L−1; a
fraction range "a:b" means the layers i with a ≤ i/L < b (``resolve_layers``; on a decoder too shallow for the range to
hold a layer, the one layer overlapping it most, e.g. layer 1 of 2 for the default), None every layer.

Decoding is greedy unless the caller samples (``answer_batch(sampling=...)``): the caller's temperature, top-k and top-p
warpers then act on the DeCo scores, after the correction, as in the reference's ``_deco_sample_decoding``. At α = 0
the scores are the plain logits on C, and the final layer's most probable token is always in C, so greedy answers are
the plain model's; the scores (and the confidence derived from them) still differ by the cut to C, and sampling still
samples from C only. Softmaxes are computed in float32 (the reference: in the model's dtype); ``top_k`` beyond the
vocabulary means the whole vocabulary. The answer's ``first_token_scores`` are the DeCo scores that chose the token (the
reference records the plain processed logits as ``scores``), its ``first_token_logits`` the model's own; per row,
``extras`` hold the first step's anchor layer l* and its probability m, and the anchor layer of every step of the
row."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from visfocus.interventions.base import (
    Fidelity,
    LayerSpec,
    Method,
    MethodResult,
    Params,
    param,
    register_method,
    resolve_layers,
)
from visfocus.interventions.batch import Batch
from visfocus.interventions.decoding import choose_layer, early_exit_logits, processor_order_fidelity
from visfocus.steer.forced import eos_token_ids
from visfocus.steer.sites import LastPositionReader

# The reference's layers 20..28 of a 32-layer decoder (hparams/DeCo/llama-7b.yaml `early_exit_layers`):
# 20/32 = 0.625 ≤ i/32 < 0.9 holds i = 20..28 (28/32 = 0.875, 29/32 = 0.906).
DEFAULT_LAYERS = "0.625:0.9"


def deco_scores(final_logits: torch.Tensor, anchor_logits_by_layer: dict[int, torch.Tensor], alpha: float,
                top_k: int, top_p: float) -> tuple[torch.Tensor, list[int], list[float]]:
    """(B, V) DeCo scores z_L + α·m·z_{l*} on the candidates C, −inf elsewhere; per row the anchor layer l* and its
    maximum candidate probability m. final_logits: (B, V) the final layer's logits; anchor_logits_by_layer: {l: (B, V)}
    lm_head(norm(h_l)) of each anchor candidate layer, in ``layers`` order. One layer at a time, so the extra memory is
    a few (B, V) tensors whatever the number of layers."""
    final = final_logits.float()  # (B, V)
    rows, vocab = final.shape
    k = min(top_k, vocab)
    top_probs, top_ids = final.softmax(-1).topk(k, dim=-1)  # (B, K) each, most probable first
    cumulative = top_probs.cumsum(-1)  # (B, K) non-decreasing
    # first index whose cumulative probability reaches top_p (K when none does); that token is kept, as the reference's
    # min(searchsorted(c, p, right=False) + 1, k)
    reaching = torch.searchsorted(cumulative, cumulative.new_full((rows, 1), top_p), right=False)  # (B, 1)
    in_c = torch.arange(k, device=final.device) < (reaching + 1).clamp(max=k)  # (B, K) the candidates C

    def on_candidates(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()  # (B, V)
        probs_on_c = logits.softmax(-1).gather(-1, top_ids).masked_fill(~in_c, -torch.inf)  # (B, K) q_l on C
        return logits, probs_on_c.max(-1).values  # (B, V), (B,)

    # ties keep the earlier layer, as the reference's flat argmax
    choice = choose_layer(anchor_logits_by_layer, on_candidates, initial=torch.zeros_like(final))
    candidates = torch.zeros_like(final, dtype=torch.bool).scatter_(-1, top_ids, in_c)  # (B, V) C as a mask
    scores = (final + alpha * choice.scores[:, None] * choice.kept).masked_fill(~candidates, -torch.inf)  # (B, V)
    return scores, choice.layers, choice.scores.tolist()


class DynamicCorrection(LogitsProcessor):
    """Scores every step with ``deco_scores`` from the anchor candidates' last-position hidden states that ``reader``
    (the layer_input site: the input of decoder layer l = transformers' ``hidden_states[l]``) keeps. ``chosen``: per
    step, l* of each row; ``max_probs``: per step, m of each row."""

    def __init__(self, adapter, reader: LastPositionReader, alpha: float, top_k: int, top_p: float) -> None:
        self.adapter, self.reader = adapter, reader
        self.alpha, self.top_k, self.top_p = alpha, top_k, top_p
        self.chosen: list[list[int]] = []
        self.max_probs: list[list[float]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        anchors = {layer: early_exit_logits(self.adapter, self.reader.hidden[layer], True).to(scores.device)
                   for layer in self.reader.layers}  # {l: (B, V)} in the model's dtype
        out, chosen, max_probs = deco_scores(scores, anchors, self.alpha, self.top_k, self.top_p)
        self.chosen.append(chosen)
        self.max_probs.append(max_probs)
        return out


def anchor_layers(spec: LayerSpec, num_layers: int) -> tuple[int, ...]:
    """The anchor candidate layers (hidden-state indices) ``spec`` means on an L-layer decoder (None: 0..L−1)."""
    layers = resolve_layers(spec, num_layers)
    return tuple(range(num_layers)) if layers is None else layers


@dataclass(frozen=True)
class DeCoParams(Params):
    # α: how much of the anchor layer's logits is added (yaml `alpha: 0.6` and the README; its CLI example uses 0.5)
    alpha: float = param(0.6, paper="α", low=0.0)
    # the candidates: the final layer's top_k tokens (yaml `threshold_top_k: 20`) ...
    top_k: int = param(20, low=1)
    # ... cut where their cumulative probability first reaches top_p, that token kept (yaml `threshold_top_p: 0.9`)
    top_p: float = param(0.9, low=0, high=1, low_open=True)
    # anchor candidate layers, hidden-state indices (yaml `early_exit_layers: [20..28]` of 32): indices, a fraction
    # "a:b" of the depth (layers i with a ≤ i/L < b) or None for every layer
    layers: LayerSpec = DEFAULT_LAYERS


@register_method
class DeCo(Method):
    name = "deco"
    paper = ("Wang et al., ICLR 2025, “MLLM Can See? Dynamic Correction Decoding for Hallucination Mitigation”, "
             "https://arxiv.org/abs/2410.11779")
    equation = ("C = the final layer's top-k tokens, cut where their cumulative probability reaches top-p;  "
                "(l*, m) = argmax over l and c ∈ C of q_l(c)\n"
                "score(c) = z_L(c) + α·m·z_{l*}(c) for c ∈ C, −∞ elsewhere")
    fidelity = (
        Fidelity(reference="the paper's equation with the candidate cut and tie rule of zjunlp/DeCo, computed by "
                           "hand in the test",
                 equal="the anchor layer, m and the blended scores per row",
                 tolerance="max abs ≤ 1e-5 (m ≤ 1e-6)",
                 test="tests/test_method_deco.py::test_anchor_choice_and_blend_by_hand"),
        Fidelity(reference="independent re-implementation of the paper's equation, with the candidate cut and tie "
                           "rule of zjunlp/DeCo, written with loops in the test over a plain forward with all hidden "
                           "states",
                 equal="first-step scores and the candidates kept, the anchor layer and m, a left-padded batch, "
                       "every family",
                 tolerance="fp32, scores max abs ≤ 1e-4, m ≤ 1e-5; candidates and layer exact",
                 test="tests/test_method_deco.py::test_first_step_scores_match_an_independent_reference"),
        Fidelity(reference="independent re-implementation of the paper's equation, written with loops in the test "
                           "over one plain forward per step",
                 equal="the token and the anchor layer at each of 3 steps",
                 tolerance="exact",
                 test="tests/test_method_deco.py::test_every_step_matches_the_reference_and_its_anchor_layer_is_recorded"),
        processor_order_fidelity(
            "an independent reference in zjunlp/DeCo deco_greedy_search's order (the whole processor "
            "list on the blended, masked scores): plain full forwards, the correction written in the "
            "test, transformers' processor classes applied in that order"),
    )
    Params = DeCoParams
    # the caller's sampling applies, its warpers after the correction (the reference's _deco_sample_decoding)
    supports_sampling = True
    identity = {"alpha": 0.0}  # greedy answers are the plain model's; the scores are cut to C
    search_grid = {"alpha": (0.2, 0.4, 0.6, 0.8, 1.0)}
    sites = frozenset({"layer_input", "logits"})
    extras = {"anchor_layer": "l*, the anchor layer of the first answer token (a hidden-state index)",
              "anchor_prob": "m, the anchor layer's largest candidate probability at the first answer token",
              "anchor_layers": "l* at every decoding step of the row",
              "candidate_layers": "the anchor candidate layers"}

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p, runner, model = self.params, batch.runner, batch.runner.model
        layers = anchor_layers(p.layers, batch.num_layers)
        reader = LastPositionReader(layers, device=model.get_output_embeddings().weight.device)  # the LM head's
        correction = DynamicCorrection(batch.adapter, reader, p.alpha, p.top_k, p.top_p)
        # the model's own processors and the caller's warpers run after the correction (processors_after_correction)
        generation = runner.generate((), max_new_tokens, logits_processor=LogitsProcessorList([correction]),
                                     layer_hooks=(reader,))
        steps = generation.row_steps(eos_token_ids(model.generation_config))
        extras = [{"anchor_layer": correction.chosen[0][b], "anchor_prob": correction.max_probs[0][b],
                   "anchor_layers": [step[b] for step in correction.chosen[:steps[b]]],
                   "candidate_layers": list(layers)} for b in range(len(steps))]
        return MethodResult(generation, extras=extras)
