"""CLVS, Cross-Layer Vision Smoothing (Zhao et al., arXiv 2509.12897), as in the official code: a vision memory m
over the image tokens, initialised from layer-0 attention recomputed with all image tokens at one position, is mixed
into the last row's image attention of the later layers, β·A + (1−β)·m, and the row renormalised; m follows an EMA
of the (pre-smoothing) attention, max over heads; after layer ⌊L/2⌋ smoothing stops for good once the normalised
top-10 entropy of the last position's next-token distribution falls below δ.

Names: paper/official β ``beta``, γ ``gamma``, δ ``delta``; the survey's ``smoothing``, ``window_memory_size`` (an
EMA decay, not a window) and ``uncertainty_threshold``. β = 1 turns CLVS off entirely (the official additive branch
would still replace layer 0's row). β > 1 is the official additive variant A + (β−1)·m.

``variant="survey"`` is the survey repository's CLVS exactly as it runs (``Qwen3VLTextModel.forward`` with ``use_clvs``
plus ``eager_attention_forward``; docs/methods.md §5.3): no position-unbiased layer 0 (m is the max over heads of layer
0's ordinary last-row image attention, and layer 0 is left as it is); in layers ≥ 1 the image part becomes β·A + (1−β)·m
for every β (no additive mode), the row renormalised; m ← γ·m + (1−γ)·max_h A^l (pre-smoothing); after each layer l ≥
L/2 (not l > ⌊L/2⌋), U = Σ_t H_t, the normalised top-10 entropy of lm_head(h^l_t) (no final norm) summed over ALL
positions t of the forward, and U < δ ends smoothing and memory updates for the later layers. h^l is the layer's output
before Qwen3-VL adds its DeepStack features (the layer_output site sees it so). U is of the order of the sequence
length, so δ ≤ 1 practically never fires (δ is therefore not capped at 1 here), and projecting every position through
the LM head at L/2 layers is costly: this variant is offered to reproduce the survey's numbers. Per batch row, U sums
that row's real positions (the survey runs one row, unpadded, and sums the whole tensor); the whole
prompt runs in one forward (no shared image prefixes). The survey only ever generates one token; ``decode`` keeps its
meaning here: with ``decode=True`` every decoding forward applies the rule afresh to its one row (U over its one
position), which is what the survey's code would do per forward; the default edits the prompt's forward only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visfocus.errors import VisfocusError
from visfocus.interventions.base import Fidelity, Method, MethodResult, Params, check_number, param, register_method
from visfocus.interventions.batch import Batch
from visfocus.interventions.decoding import early_exit_logits, normalized_top10_entropy, survey_top10_entropy
from visfocus.steer.edits import Edit, RowView
from visfocus.steer.sites import LayerOutputWatcher

VARIANTS = ("official", "survey")


@dataclass(frozen=True)
class CLVSParams(Params):
    smoothing: float = param(0.8, paper="β", low=0.0)  # β (official scripts/all.sh: 0.8); β > 1: the additive variant
    memory_decay: float = param(0.8, paper="γ", low=0.0, high=1.0)  # γ (0.8)
    uncertainty_threshold: float = param(0.5, paper="δ", low=0.0)  # δ (0.5); 0 never stops; ≤ 1 unless "survey"
    final_norm: bool = False  # apply the final norm before the LM head in the uncertainty (off = both references)
    decode: bool = False  # also smooth every decoding step's row (official: every forward; 1-token answers there)
    variant: str = param("official", choices=VARIANTS)  # "survey": the survey repository's CLVS (module docstring)

    def check(self, num_layers: int | None = None) -> None:
        if self.variant != "survey":  # the survey's U sums over positions: any δ ≥ 0
            check_number("uncertainty_threshold", self.uncertainty_threshold, low=0.0, high=1.0)


def unified_positions(image_cols: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) positions where each image (a run of image tokens) takes one position and text counts on from it."""
    valid = attention_mask.bool()  # (B, S)
    previous_is_image = torch.nn.functional.pad(image_cols[:, :-1], (1, 0), value=False)  # (B, S)
    starts_unit = valid & ~(image_cols & previous_is_image)  # a text token, or an image's first token
    return (starts_unit.long().cumsum(-1) - 1).clamp(min=0).masked_fill(~valid, 0)  # (B, S)


class Smoother:
    """The per-forward CLVS state machine, official variant: the attention site smooths (``edit_probs``, through
    ``SmoothingEdit``), the layer_output site updates the memory and tests the stop rule (``after_layer``). Its state
    is reset at layer 0 of every forward it acts in; ``prompt_stops``: per row, the layer after which the prompt's
    forward (the first one) stopped smoothing (−1: never)."""

    def __init__(self, params: CLVSParams, adapter, num_layers: int, shift: torch.Tensor | None = None) -> None:
        self.params, self.adapter, self.num_layers = params, adapter, num_layers
        self.shift = shift  # (B, S) or (3, B, S): unified minus real prompt positions
        self.row: int | None = None  # the edited row's index in the current forward (None: no forward under way)
        self.prompt_stops: list[int] | None = None

    # --- attention site -------------------------------------------------------------------------------------------
    def start(self, row: RowView, memory: torch.Tensor) -> None:
        """Layer 0 of a forward: every row active, memory (B, K) as given."""
        self.row, self.first, self.image_cols = row.row, row.abs_pos - row.row, row.image_cols
        self.active = torch.ones_like(row.image_cols[:, 0])  # (B,)
        self.memory = memory  # (B, K)
        self.stopped_after = torch.full_like(row.image_cols[:, 0], -1, dtype=torch.long)  # (B,)

    def edit_probs(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        if row.layer == 0:
            unified = self._unified_row(row)  # (B, H, K)
            self.start(row, unified.amax(1) * row.image_cols)
            return unified
        self.pre = probs  # (B, H, K) this layer's attention before smoothing, for the memory update
        return self._mix(probs, row)

    def _mix(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        beta = self.params.smoothing
        memory = self.memory[:, None, :].to(probs.device)  # (B, 1, K); with device_map, layers may sit elsewhere
        mixed = beta * probs + (1 - beta) * memory if beta < 1 else probs + (beta - 1) * memory  # (B, H, K)
        mixed = torch.where(row.image_cols[:, None, :], mixed, probs)
        mixed = mixed / mixed.sum(-1, keepdim=True)  # renormalise the whole row (text entries too)
        return torch.where(self.active.to(probs.device)[:, None, None], mixed, probs)

    def _shift_for(self, kv_len: int) -> torch.Tensor:
        shift = self.shift[..., :kv_len]  # generated tokens keep the last prompt token's shift
        extra = kv_len - shift.shape[-1]
        return torch.cat([shift, shift[..., -1:].expand(*shift.shape[:-1], extra)], -1) if extra > 0 else shift

    def _unified_row(self, row: RowView) -> torch.Tensor:
        """(B, H, K) layer-0 attention of the row with every image at one position."""
        shift = self._shift_for(row.key.shape[2]).to(row.key.device)  # (.., B, K)
        key = self.adapter.rotate(row.key.float(), shift)  # (B, Hkv, K, D)
        query = self.adapter.rotate(row.query[:, :, None, :], shift[..., row.abs_pos:row.abs_pos + 1])  # (B,H,1,D)
        return torch.softmax(row.scores(query[:, :, 0], key) + row.mask, dim=-1)  # (B, H, K)

    # --- layer_output site ----------------------------------------------------------------------------------------
    def after_layer(self, layer: int, hidden: torch.Tensor) -> None:
        """hidden: (B, Q, D) the layer's output in a forward this machine acts in."""
        if self.row is None or not self._updates(layer):
            return
        if self._checks(layer) and self.params.uncertainty_threshold > 0 and bool(self.active.any()):
            certain = (self._uncertainty(hidden) < self.params.uncertainty_threshold).to(self.active.device)  # (B,)
            self.stopped_after = torch.where(self.active & certain, layer, self.stopped_after)  # (B,)
            self.active = self.active & ~certain
        pre = self.pre.amax(1).to(self.memory.device) * self.image_cols  # (B, K)
        updated = self._updated_memory(layer, pre)  # (B, K)
        self.memory = torch.where(self.active[:, None], updated, self.memory)
        if layer == self.num_layers - 1:
            self.row = None  # the forward is over
            if self.prompt_stops is None:  # the prompt's forward (the first one)
                self.prompt_stops = self.stopped_after.tolist()

    def _updates(self, layer: int) -> bool:
        return layer != 0  # layer 0's memory is the unified row's

    def _checks(self, layer: int) -> bool:
        return layer > self.num_layers // 2

    def _uncertainty(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B,) the normalised top-10 entropy of the last position's next-token distribution."""
        h = hidden[:, self.row].to(self.adapter.model.get_output_embeddings().weight.device)  # (B, D)
        return normalized_top10_entropy(early_exit_logits(self.adapter, h, self.params.final_norm))

    def _updated_memory(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        return self.params.memory_decay * self.memory + (1 - self.params.memory_decay) * pre  # (B, K)


class SurveySmoother(Smoother):
    """The survey's state machine (module docstring): layer 0 kept, memory from its plain attention, the stop rule
    on U summed over the forward's positions. ``valid``: (B, S) the prompt's attention mask."""

    def __init__(self, params: CLVSParams, adapter, num_layers: int, valid: torch.Tensor) -> None:
        super().__init__(params, adapter, num_layers)
        self.valid = valid

    def edit_probs(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        if row.layer == 0:
            self.start(row, torch.zeros_like(probs[:, 0]))  # (B, K)
        self.pre = probs  # (B, H, K) before smoothing, for the memory update
        if row.layer == 0:
            return probs
        beta, memory = self.params.smoothing, self.memory[:, None, :].to(probs.device)  # (B, 1, K)
        mixed = torch.where(row.image_cols[:, None, :], beta * probs + (1 - beta) * memory, probs)  # (B, H, K)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        return torch.where(self.active.to(probs.device)[:, None, None], mixed, probs)

    def _updates(self, layer: int) -> bool:
        return True

    def _checks(self, layer: int) -> bool:
        return 2 * layer >= self.num_layers  # U = δ below L/2, so only a checked layer (l ≥ L/2) can stop

    def _uncertainty(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, Q, D) a layer's output at the forward's Q positions → (B,) Σ over real positions of the
        normalised top-10 entropy of lm_head(h) (in chunks, to bound the (B, Q, V) logits)."""
        B, Q, _ = hidden.shape
        head = self.adapter.model.get_output_embeddings().weight.device
        valid = torch.ones(B, Q, dtype=torch.bool, device=head)  # positions past the prompt (decoding) are real
        known = self.valid[:, self.first:self.first + Q].bool().to(head)  # (B, ≤Q)
        valid[:, :known.shape[1]] = known
        total = torch.zeros(B, device=head)
        step = max(1, 512 // B)
        for start in range(0, Q, step):
            h = hidden[:, start:start + step].to(head)  # (B, c, D)
            logits = early_exit_logits(self.adapter, h, self.params.final_norm)  # (B, c, V)
            total += (survey_top10_entropy(logits) * valid[:, start:start + step]).sum(-1)  # (B,)
        return total

    def _updated_memory(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        return pre if layer == 0 else super()._updated_memory(layer, pre)


@dataclass(frozen=True)
class SmoothingEdit(Edit):
    """The attention-site side of CLVS: the row's probabilities after the softmax go through ``smoother``."""

    changes_logits = False
    changes_probs = True
    smoother: Smoother | None = None

    def edit_probs(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        return self.smoother.edit_probs(probs, row)


@register_method
class CLVS(Method):
    name = "clvs"
    paper = ("Zhao et al., arXiv 2025, “Cross-Layer Vision Smoothing: Enhancing Visual Understanding via Sustained "
             "Focus on Key Objects in Large Vision-Language Models”, https://arxiv.org/abs/2509.12897")
    equation = ("Â^l = β·A^l + (1 − β)·m (β < 1; A^l + (β − 1)·m for β ≥ 1), row n renormalised; m from layer-0 "
                "attention under one position per image\n"
                "m ← γ·m + (1 − γ)·max_h A^l, until U = H(softmax(top10(z)))/log 10 < δ after layer ⌊L/2⌋")
    fidelity = (
        Fidelity(reference="independent eager re-implementation of the official rule (ZhQingan/CLVS, "
                           "modeling_llama.py): tests/eager_reference.py under unified image positions, the β-blend "
                           "written in the test",
                 equal="the last prompt row's attention at layer 0 (position-unbiased) and at layer 1 (blended with "
                       "the max-over-heads memory, renormalised), every family",
                 tolerance="fp32, max abs ≤ 1e-5",
                 test="tests/test_method_clvs.py::test_layer0_and_the_blend_at_layer1_match_the_reference"),
        Fidelity(reference="the official stop rule (ZhQingan/CLVS, modeling_llama.py: checked after layer ⌊L/2⌋, "
                           "stop when U < δ), as the smoothed layers the test expects",
                 equal="the layers smoothed on a 6-layer model, δ ∈ {0, 1e-4, 1}",
                 tolerance="exact",
                 test="tests/test_method_clvs.py::test_stop_rule_fires_after_the_middle_and_only_below_threshold"),
        Fidelity(reference="davidbchang/visual-attention-intervention (the survey), Qwen3VLTextModel.forward with "
                           "use_clvs: re-implemented in the test from its code",
                 equal="first-token logits and the stop layer, every family",
                 tolerance="fp32, max abs ≤ 1e-4",
                 test="tests/test_method_clvs.py::test_survey_variant_matches_the_survey_reference",
                 option="variant=survey"),
        Fidelity(reference="davidbchang/visual-attention-intervention (the survey), Qwen3VLTextModel.forward with "
                           "use_clvs: re-implemented in the test from its code",
                 equal="first-token logits and the stop layer for δ from 0 to 1e9 (U summed over all positions)",
                 tolerance="fp32, max abs ≤ 1e-4; stop layer exact",
                 test="tests/test_method_clvs.py::"
                      "test_survey_stop_rule_fires_from_layer_l_over_2_on_the_summed_uncertainty",
                 option="variant=survey"),
    )
    Params = CLVSParams
    identity = {"smoothing": 1.0}
    search_grid = {"smoothing": (0.6, 0.7, 0.8, 0.9), "memory_decay": (0.5, 0.8), "uncertainty_threshold": (0.3, 0.5)}
    sites = frozenset({"attention", "layer_output"})
    extras = {"stop_layer": "the layer after which the prompt's forward stopped smoothing, the model being certain "
                            "(None: smoothed to the last layer)",
              "variant": "the CLVS variant, when not the official one"}

    def __init__(self, params: CLVSParams) -> None:
        super().__init__(params)
        self.shares_prefix = params.variant == "official"  # the survey's U needs every prompt position's forward

    def smoother(self, batch: Batch) -> Smoother:
        p, adapter, inputs = self.params, batch.adapter, batch.runner.inputs
        if p.variant == "survey":
            if batch.runner.sharing is not None:
                raise VisfocusError("CLVS variant='survey' sums its uncertainty over every prompt position, so the "
                                    "prompt must run in one forward; build the batch without a prefix store")
            return SurveySmoother(p, adapter, batch.num_layers, valid=inputs["attention_mask"])
        real = adapter.prompt_position_ids(inputs)  # (B, S) or (3, B, S)
        shift = unified_positions(batch.runner.image_cols, inputs["attention_mask"]).to(real.device) - real
        return Smoother(p, adapter, batch.num_layers, shift=shift)

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p = self.params
        if p.smoothing == 1.0:  # nothing to mix in: the plain model
            return MethodResult(batch.runner.generate((), max_new_tokens=max_new_tokens))
        smoother = self.smoother(batch)
        edit = SmoothingEdit(rows="last_prompt_and_decode" if p.decode else "last_prompt", smoother=smoother)
        generation = batch.runner.generate((edit,), max_new_tokens=max_new_tokens,
                                           layer_hooks=(LayerOutputWatcher(smoother.after_layer),))
        # stop_layer: the last layer smoothed before the model was certain (None: smoothed to the end)
        extras = [{"stop_layer": None if layer < 0 else layer} for layer in smoother.prompt_stops]
        if p.variant != "official":
            extras = [dict(row, variant=p.variant) for row in extras]
        return MethodResult(generation, extras=extras)
