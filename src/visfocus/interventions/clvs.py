"""CLVS, Cross-Layer Vision Smoothing (Zhao et al., arXiv 2509.12897), as in the official code: a vision memory m
over the image tokens, initialised from layer-0 attention recomputed with all image tokens at one position, is mixed
into the last row's image attention of the later layers, β·A + (1−β)·m, and the row renormalised; m follows an EMA
of the (pre-smoothing) attention, max over heads; after layer ⌊L/2⌋ smoothing stops for good once the normalised
top-10 entropy of the last position's next-token distribution falls below δ.

Names: paper/official β ``beta``, γ ``gamma``, δ ``delta``; the survey's ``smoothing``, ``window_memory_size`` (an
EMA decay, not a window) and ``uncertainty_threshold``. β = 1 turns CLVS off entirely (the official additive branch
would still replace layer 0's row). β > 1 is the official additive variant A + (β−1)·m.

``variant="survey"`` is the survey repository's CLVS exactly as it runs (``Qwen3VLTextModel.forward`` with
``use_clvs`` plus ``eager_attention_forward``; METHODS.md §5.3): no position-unbiased layer 0 (m is the max over heads
of layer 0's ordinary last-row image attention, and layer 0 is left as it is); in layers ≥ 1 the image part becomes
β·A + (1−β)·m for every β (no additive mode), the row renormalised; m ← γ·m + (1−γ)·max_h A^l (pre-smoothing); after
each layer l ≥ L/2 (not l > ⌊L/2⌋), U = Σ_t H_t, the normalised top-10 entropy of lm_head(h^l_t) (no final norm) summed
over ALL positions t of the forward, and U < δ ends smoothing and memory updates for the later layers. h^l is the
layer's output before Qwen3-VL adds its DeepStack features (the decoder-layer hook sees it so). U is of the order of
the sequence length, so δ ≤ 1 practically never fires (δ is therefore not capped at 1 here), and projecting every
position through the LM head at L/2 layers is costly: this variant is offered to reproduce the survey's numbers. Per
batch row, U sums that row's real positions (the survey runs one row, unpadded, and sums the whole tensor); the whole
prompt runs in one forward (no shared image prefixes). The survey only ever generates one token; ``decode`` keeps its
meaning here: with ``decode=True`` every decoding forward applies the rule afresh to its one row (U over its one
position), which is what the survey's code would do per forward; the default edits the prompt's forward only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from visfocus.errors import VisfocusError
from visfocus.interventions.base import Method, MethodResult, Params, check_choice, check_number, param, register_method
from visfocus.interventions.batch import Batch
from visfocus.steer.edits import Edit, RowView

VARIANTS = ("official", "survey")


@dataclass(frozen=True)
class CLVSParams(Params):
    smoothing: float = param(0.8, paper="β", low=0.0)  # β (official scripts/all.sh: 0.8); β > 1: the additive variant
    memory_decay: float = param(0.8, paper="γ", low=0.0, high=1.0)  # γ (0.8)
    uncertainty_threshold: float = param(0.5, paper="δ", low=0.0)  # δ (0.5); 0 never stops; ≤ 1 unless "survey"
    final_norm: bool = False  # apply the final norm before the LM head in the uncertainty (off = both references)
    decode: bool = False  # also smooth every decoding step's row (official: every forward; 1-token answers there)
    variant: str = param("official", choices=VARIANTS)  # "survey": the survey repository's CLVS (module docstring)

    def validate(self, num_layers: int | None = None) -> None:
        check_choice("CLVS variant", self.variant, VARIANTS)
        check_number("smoothing", self.smoothing, low=0.0)
        check_number("memory_decay", self.memory_decay, low=0.0, high=1.0)
        survey = self.variant == "survey"  # the survey's U sums over positions: any δ ≥ 0
        check_number("uncertainty_threshold", self.uncertainty_threshold, low=0.0, high=None if survey else 1.0)


def unified_positions(image_cols: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) positions where each image (a run of image tokens) takes one position and text counts on from it."""
    valid = attention_mask.bool()  # (B, S)
    previous_is_image = torch.nn.functional.pad(image_cols[:, :-1], (1, 0), value=False)  # (B, S)
    starts_unit = valid & ~(image_cols & previous_is_image)  # a text token, or an image's first token
    return (starts_unit.long().cumsum(-1) - 1).clamp(min=0).masked_fill(~valid, 0)  # (B, S)


def normalized_top10_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) → (B,) entropy of the softmax over the 10 largest logits, divided by log 10 (in [0, 1])."""
    top = torch.softmax(logits.float().topk(10, dim=-1).values, dim=-1)  # (B, 10)
    return -(top * top.clamp_min(1e-12).log()).sum(-1) / math.log(10)


def survey_top10_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) → (...) the survey's form: −Σ p·log(p + 1e-12) / log 10 over p = softmax(top-10 logits)."""
    top = torch.softmax(logits.float().topk(10, dim=-1).values, dim=-1)  # (..., 10)
    return -(top * (top + 1e-12).log()).sum(-1) / math.log(10)


@dataclass(frozen=True)
class SmoothingEdit(Edit):
    """The per-forward CLVS state machine. Attention (``edit_probs``) smooths, layer hooks (``after_layer``) update the
    memory and test the stop rule; ``state`` is reset at layer 0 of every forward it acts in."""

    changes_logits = False
    changes_probs = True
    params: CLVSParams = CLVSParams()
    shift: torch.Tensor | None = None  # (B, S) or (3, B, S): unified minus real prompt positions
    adapter: object = None
    num_layers: int = 0
    state: dict = field(default_factory=dict)

    def _shift_for(self, kv_len: int) -> torch.Tensor:
        shift = self.shift[..., :kv_len]  # generated tokens keep the last prompt token's shift
        extra = kv_len - shift.shape[-1]
        return torch.cat([shift, shift[..., -1:].expand(*shift.shape[:-1], extra)], -1) if extra > 0 else shift

    def _unified_row(self, row: RowView) -> torch.Tensor:
        """(B, H, K) layer-0 attention of the row with every image at one position."""
        shift = self._shift_for(row.key.shape[2]).to(row.key.device)  # (.., B, K)
        key = self.adapter.rotate(row.key.float(), shift)  # (B, Hkv, K, D)
        query = self.adapter.rotate(row.query[:, :, None, :], shift[..., row.abs_pos:row.abs_pos + 1])  # (B,H,1,D)
        B, H, _, D = query.shape
        H_kv = key.shape[1]
        scores = torch.matmul(query.reshape(B, H_kv, H // H_kv, D), key.transpose(-1, -2))  # (B, Hkv, g, K)
        return torch.softmax(scores.reshape(B, H, -1) * row.scale + row.mask, dim=-1)  # (B, H, K)

    def edit_probs(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        s, beta = self.state, self.params.smoothing
        if row.layer == 0:
            unified = self._unified_row(row)  # (B, H, K)
            s.update(row=row.row, image_cols=row.image_cols, active=torch.ones_like(row.image_cols[:, 0]),
                     memory=unified.amax(1) * row.image_cols,  # (B, K)
                     stopped_after=torch.full_like(row.image_cols[:, 0], -1, dtype=torch.long))  # (B,)
            return unified
        s["pre"] = probs  # (B, H, K) this layer's attention before smoothing, for the memory update
        memory = s["memory"][:, None, :].to(probs.device)  # (B, 1, K); with device_map, layers may sit elsewhere
        mixed = beta * probs + (1 - beta) * memory if beta < 1 else probs + (beta - 1) * memory  # (B, H, K)
        mixed = torch.where(row.image_cols[:, None, :], mixed, probs)
        mixed = mixed / mixed.sum(-1, keepdim=True)  # renormalise the whole row (text entries too)
        return torch.where(s["active"].to(probs.device)[:, None, None], mixed, probs)

    def after_layer(self, layer: int, hidden: torch.Tensor) -> None:
        """hidden: (B, Q, hidden) the layer's output in a forward this edit acts in."""
        s, p = self.state, self.params
        if s.get("row") is None or layer == 0:
            return
        if layer > self.num_layers // 2 and p.uncertainty_threshold > 0 and bool(s["active"].any()):
            h = hidden[:, s["row"]]  # (B, hidden) the last position only
            h = h.to(self.adapter.model.get_output_embeddings().weight.device)
            logits = self.adapter.lm_head(self.adapter.final_norm(h) if p.final_norm else h)  # (B, V)
            certain = (normalized_top10_entropy(logits) < p.uncertainty_threshold).to(s["active"].device)  # (B,)
            still = s["active"] & ~certain  # (B,)
            s["stopped_after"] = torch.where(s["active"] & ~still, layer, s["stopped_after"])  # (B,)
            s["active"] = still
        pre = s["pre"].amax(1).to(s["memory"].device)  # (B, K)
        updated = p.memory_decay * s["memory"] + (1 - p.memory_decay) * pre * s["image_cols"]  # (B, K)
        s["memory"] = torch.where(s["active"][:, None], updated, s["memory"])
        if layer == self.num_layers - 1:
            s["row"] = None  # the forward is over
            s.setdefault("prompt_stops", s["stopped_after"].tolist())  # the prompt's forward (the first one)


@dataclass(frozen=True)
class SurveySmoothingEdit(SmoothingEdit):
    """The survey's per-forward state machine (module docstring): layer 0 kept, memory from its plain attention, the
    stop rule on U summed over the forward's positions. ``valid``: (B, S) the prompt's attention mask."""

    valid: torch.Tensor | None = None

    def edit_probs(self, probs: torch.Tensor, row: RowView) -> torch.Tensor:
        s = self.state
        if row.layer == 0:
            s.update(row=row.row, first=row.abs_pos - row.row, image_cols=row.image_cols,
                     active=torch.ones_like(row.image_cols[:, 0]), memory=torch.zeros_like(probs[:, 0]),  # (B, K)
                     stopped_after=torch.full_like(row.image_cols[:, 0], -1, dtype=torch.long))  # (B,)
        s["pre"] = probs  # (B, H, K) before smoothing, for the memory update
        if row.layer == 0:
            return probs
        beta, memory = self.params.smoothing, s["memory"][:, None, :].to(probs.device)  # (B, 1, K)
        mixed = torch.where(row.image_cols[:, None, :], beta * probs + (1 - beta) * memory, probs)  # (B, H, K)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        return torch.where(s["active"].to(probs.device)[:, None, None], mixed, probs)

    def summed_uncertainty(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, Q, hidden) a layer's output at the forward's Q positions → (B,) Σ over real positions of the
        normalised top-10 entropy of lm_head(h) (in chunks, to bound the (B, Q, V) logits)."""
        B, Q, _ = hidden.shape
        first, head = self.state["first"], self.adapter.model.get_output_embeddings().weight.device
        valid = torch.ones(B, Q, dtype=torch.bool, device=head)  # positions past the prompt (decoding) are real
        known = self.valid[:, first:first + Q].bool().to(head)  # (B, ≤Q)
        valid[:, :known.shape[1]] = known
        total = torch.zeros(B, device=head)
        step = max(1, 512 // B)
        for start in range(0, Q, step):
            h = hidden[:, start:start + step].to(head)  # (B, c, hidden)
            logits = self.adapter.lm_head(self.adapter.final_norm(h) if self.params.final_norm else h)  # (B, c, V)
            total += (survey_top10_entropy(logits) * valid[:, start:start + step]).sum(-1)  # (B,)
        return total

    def after_layer(self, layer: int, hidden: torch.Tensor) -> None:
        s, p = self.state, self.params
        if s.get("row") is None:
            return
        # U = δ below L/2, so only a checked layer (l ≥ L/2) can stop; U ≥ 0, so δ = 0 never stops
        if 2 * layer >= self.num_layers and p.uncertainty_threshold > 0 and bool(s["active"].any()):
            certain = (self.summed_uncertainty(hidden) < p.uncertainty_threshold).to(s["active"].device)  # (B,)
            s["stopped_after"] = torch.where(s["active"] & certain, layer, s["stopped_after"])  # (B,)
            s["active"] = s["active"] & ~certain
        pre = s["pre"].amax(1).to(s["memory"].device) * s["image_cols"]  # (B, K)
        updated = pre if layer == 0 else p.memory_decay * s["memory"] + (1 - p.memory_decay) * pre  # (B, K)
        s["memory"] = torch.where(s["active"][:, None], updated, s["memory"])
        if layer == self.num_layers - 1:
            s["row"] = None  # the forward is over
            s.setdefault("prompt_stops", s["stopped_after"].tolist())  # the prompt's forward (the first one)


@register_method
class CLVS(Method):
    name = "clvs"
    Params = CLVSParams
    identity = {"smoothing": 1.0}
    search_grid = {"smoothing": (0.6, 0.7, 0.8, 0.9), "memory_decay": (0.5, 0.8), "uncertainty_threshold": (0.3, 0.5)}

    def __init__(self, params: CLVSParams) -> None:
        super().__init__(params)
        self.shares_prefix = params.variant == "official"  # the survey's U needs every prompt position's forward

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p = self.params
        if p.smoothing == 1.0:  # nothing to mix in: the plain model
            generation = batch.runner.generate((), max_new_tokens=max_new_tokens)
            return MethodResult(generation, alpha_used=[None] * batch.size)
        adapter, inputs = batch.adapter, batch.runner.inputs
        common = dict(rows="last_prompt_and_decode" if p.decode else "last_prompt", params=p, adapter=adapter,
                      num_layers=batch.num_layers)
        if p.variant == "survey":
            if batch.runner.sharing is not None:
                raise VisfocusError("CLVS variant='survey' sums its uncertainty over every prompt position, so the "
                                    "prompt must run in one forward; build the batch without a prefix store")
            edit = SurveySmoothingEdit(valid=inputs["attention_mask"], **common)
        else:
            real = adapter.prompt_position_ids(inputs)  # (B, S) or (3, B, S)
            shift = unified_positions(batch.runner.image_cols, inputs["attention_mask"]).to(real.device) - real
            edit = SmoothingEdit(shift=shift, **common)
        hooks = [layer.register_forward_hook(
            lambda module, args, out, i=i: edit.after_layer(i, out[0] if isinstance(out, tuple) else out))
            for i, layer in enumerate(adapter.decoder_layers())]
        try:
            generation = batch.runner.generate((edit,), max_new_tokens=max_new_tokens)
        finally:
            for hook in hooks:
                hook.remove()
        # stop_layer: the last layer smoothed before the model was certain (None: smoothed to the end)
        extras = [{"stop_layer": None if layer < 0 else layer} for layer in edit.state["prompt_stops"]]
        if p.variant != "official":
            extras = [dict(row, variant=p.variant) for row in extras]
        return MethodResult(generation, alpha_used=[None] * batch.size, extras=extras)
