"""ClearSight / VAF, "Visual Amplification Fusion" ("ClearSight: Visual Signal Enhancement for Object Hallucination
Mitigation in Multimodal Large Language Models", Yin, Si, Wang; CVPR 2025; reference code ustc-hyin/ClearSight
@5466c94, ``visaug/inference/AttnAdapter.py`` L71–78, layers in ``infer_pope.py``, settings in ``infer_pope.sh``).

Attention edit on the raw scores q·k/√d (before the mask), in every head of the middle layers: the image key columns
are multiplied by ``enhance`` (the reference's ``--enh-para 1.15``), the key columns before the image (BOS, system
prompt, the template up to the image) by ``suppress`` (``--sup-para 0.95``); the text between the image and the end
is left as it is. Edited query rows: at prefill every prompt row after the image (the template text after it, the
question, the last prompt token: they all feed the keys and values later layers read), and the single row of every
decoding step. It multiplies raw scores, so negative image scores get more negative: a sharpening within the image
block rather than a uniform boost.

Layers: the reference's ``if i > 8 and i < 15``, layers 9–14 of LLaVA-1.5's 32, here the fraction range
``"0.28:0.45"`` of any depth (layer i when 0.28 ≤ i/L < 0.45: 9–14 of 32, 8–12 of 28, 11–16 of 36). Where the
range holds no layer (decoders of 1, 2 or 4 layers, e.g. test models) the one layer whose span [i/L, (i+1)/L)
overlaps it most is edited, so the default runs on every model.

Reference quirks and how they are handled:
- the spans are hard-coded for LLaVA-1.5's vicuna_v1 template (``SYS_LEN = 35`` columns before the image,
  ``IMG_LEN = 576`` image tokens); here each batch row's real image columns and the columns before its first image
  token, for every family (Qwen: ``<|vision_start|>`` is before the first image token, so it is suppressed too);
- the paper speaks of selected visual-perception heads, the released code edits all heads: we follow the code;
- the reference runs fp16 with eager attention; here the engine recomputes the edited rows in fp32.

``rows="last"`` is a labelled approximation, not the reference: only the last prompt row and the decoding rows are
edited (the question's earlier rows keep their unedited keys and values). It is cheaper (one row per layer). Both
start from stored image prefixes: for the faithful ``rows="post_image"`` the stored prefix ends right after the image
(``prefix_split = "image"``), so every row it edits runs in the question's forward.

Anchor (reference README, POPE random, accuracy): LLaVA-1.5-7B 87.8 → 89.7 with VAF (VCD: 88.4); LLaVA-1.5-13B
87.6 → 90.1; Qwen-VL-7B 88.2 → 90.0. Identity: enhance = suppress = 1 (no edit at all)."""

from __future__ import annotations

from dataclasses import dataclass

from visfocus.interventions.base import (
    Fidelity,
    LayerSpec,
    Method,
    MethodResult,
    Params,
    edit_layers,
    param,
    register_method,
)
from visfocus.interventions.batch import Batch
from visfocus.steer.edits import ScaleLogits

ROWS = ("post_image", "last")
ENGINE_ROWS = {"post_image": "post_image_prompt_and_decode", "last": "last_prompt_and_decode"}


@dataclass(frozen=True)
class VAFParams(Params):
    enhance: float = param(1.15, paper="enh-para", low=0.0)  # multiplier of the image columns' raw scores
    suppress: float = param(0.95, paper="sup-para", low=0.0)  # multiplier of the columns before the image
    layers: LayerSpec = "0.28:0.45"  # layers 9–14 of 32, as a fraction of the depth; indices; None = all
    rows: str = param("post_image", choices=ROWS)  # "last": the labelled approximation (last prompt + decoding rows)


@register_method
class VAF(Method):
    name = "vaf"
    paper = ("Yin, Si, Wang, CVPR 2025, “ClearSight: Visual Signal Enhancement for Object Hallucination Mitigation in "
             "Multimodal Large Language Models”, https://arxiv.org/abs/2503.13107")
    equation = ("s[i,j] ← enh-para·s[i,j] for image keys j ∈ I;  s[i,j] ← sup-para·s[i,j] for keys j before the image\n"
                "(s = q·k/√d, on every prompt row after the image and every decoding row, in the middle layers)")
    fidelity = (
        Fidelity(reference="independent eager re-implementation of the edit of ustc-hyin/ClearSight's "
                           "AttnAdapter.py (tests/eager_reference.py, post_image_selection)",
                 equal="first-token logits, one row and a left-padded batch of two, every family",
                 tolerance="fp32, max abs ≤ 1e-4",
                 test="tests/test_method_vaf.py::test_vaf_matches_eager_reference"),
        Fidelity(reference="independent eager re-implementation of the edit of ustc-hyin/ClearSight's "
                           "AttnAdapter.py (tests/eager_reference.py), with its settings 1.15 / 0.95",
                 equal="first-token logits with the defaults, on the layer the default fraction falls back to",
                 tolerance="fp32, max abs ≤ 1e-4",
                 test="tests/test_method_vaf.py::test_reference_defaults_match_on_the_fallback_layer"),
        Fidelity(reference="ustc-hyin/ClearSight, infer_pope.py (official code): layers `i > 8 and i < 15`",
                 equal="the default layers: 9–14 of 32",
                 tolerance="exact",
                 test="tests/test_method_vaf.py::test_default_layers_are_the_references_9_to_14_of_32"),
    )
    Params = VAFParams
    identity = {"enhance": 1.0, "suppress": 1.0}
    search_grid = {"enhance": (1.05, 1.15, 1.25, 1.5), "suppress": (0.9, 0.95, 1.0)}
    sites = frozenset({"attention"})

    def __init__(self, params: VAFParams) -> None:
        super().__init__(params)
        # The rows after the image are edited: a stored prefix ends at the image, so they all run under the edits.
        self.prefix_split = "image" if params.rows == "post_image" else "template"

    def edits(self, num_layers: int) -> tuple[ScaleLogits, ...]:
        """The image-column and before-image-column multipliers (an edit whose multiplier is 1 is left out)."""
        p = self.params
        common = dict(rows=ENGINE_ROWS[p.rows], layers=edit_layers(p.layers, num_layers))
        edits = []
        if p.enhance != 1:
            edits.append(ScaleLogits(alpha=float(p.enhance), keys="image", **common))
        if p.suppress != 1:
            edits.append(ScaleLogits(alpha=float(p.suppress), keys="before_image", **common))
        return tuple(edits)

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        generation = batch.runner.generate(self.edits(batch.num_layers), max_new_tokens=max_new_tokens)
        return MethodResult(generation)
