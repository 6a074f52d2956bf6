"""VCD, Visual Contrastive Decoding (Leng et al., CVPR 2024). At every step the next-token logits z of the prompt are
contrasted with the logits z' of the same prompt on a diffusion-noised image: (1+α)·z − α·z'. Only the tokens that
the clean image finds plausible are kept (p(v) ≥ β·max p(v), the adaptive plausibility constraint); the rest get −inf.

The noise follows the VCD code: v' = sqrt(ᾱ_T)·v + sqrt(1−ᾱ_T)·ε, applied to the processor's *normalised* pixel tensor,
with a 1000-step sigmoid β schedule from 1e-5 to 5e-3. The noised prompt runs as a second stream beside ``generate``,
with its own KV cache: as rows of the same forwards (``steer.rows``, one forward per token), or apart where rows are
not exact (sampling, teacher forcing, a trace: two forward passes per token). The paper calls the strength α, the
cutoff β and the noise step T; its code calls them ``cd_alpha``, ``cd_beta`` and ``noise_step``.

Decoding is greedy by default. ``sample=True`` samples as the VCD code does, using the model's own temperature, top-k
and top-p (transformers' defaults 1.0 / 50 / 1.0 where the model sets none), and seeds torch's global generator with
``seed``. As in the VCD code (``vcd_sample.py``: ``logits_processor`` then ``logits_warper`` on ``cd_logits``), every
processor of the model's generation config (repetition penalty, no-repeat n-gram, min new tokens, bad words,
suppressed tokens, …) and these warpers act on the contrasted scores, never before the contrast. Each image's noise
comes from its own generator seeded with ``seed``, so an image gets the same noise alone as in a batch (LLaVA-NeXT's
padded tiles aside). The answer's ``first_token_scores`` are the contrasted scores that chose the token, −inf outside
the plausible set; its ``first_token_logits`` the clean stream's own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from visfocus.interventions.base import Fidelity, Method, MethodResult, Params, param, register_method
from visfocus.interventions.batch import Batch
from visfocus.interventions.decoding import plausibility_cut, processor_order_fidelity
from visfocus.steer.streams import ImageStream

NUM_STEPS = 1000


def noise_schedule(num_steps: int = NUM_STEPS) -> torch.Tensor:
    """(num_steps,) float64 ᾱ_t = ∏_{s≤t} (1 − β_s), with β = sigmoid(linspace(−6, 6)) · (5e-3 − 1e-5) + 1e-5."""
    betas = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5  # (T,)
    return torch.cumprod(1 - betas, dim=0)  # (T,)


def add_diffusion_noise(pixel_values: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
    """sqrt(ᾱ_step)·v + sqrt(1 − ᾱ_step)·ε, with ε ~ N(0, I) drawn from ``generator``. Works for any shape."""
    alpha_bar = float(noise_schedule()[step])
    noise = torch.randn(pixel_values.shape, generator=generator, device=generator.device)  # same shape as v
    noised = math.sqrt(alpha_bar) * pixel_values.float() + math.sqrt(1 - alpha_bar) * noise.to(pixel_values.device)
    return noised.to(pixel_values.dtype)


def contrast(logits: torch.Tensor, noised_logits: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """(B, V) (1+α)·z − α·z', −inf where p(v) < β·max p(v), i.e. where z < max z + log β."""
    return plausibility_cut((1 + alpha) * logits - alpha * noised_logits, logits, beta)  # (B, V)


def noised_pixels(inputs: dict, step: int, seed: int) -> torch.Tensor:
    """The batch's pixel tensor with every image noised from its own generator, seeded with ``seed``."""
    pixels = inputs["pixel_values"]
    grid = inputs.get("image_grid_thw")  # Qwen: each image's patch rows lie one after another along dim 0
    sizes = grid.prod(-1).tolist() if grid is not None else [1] * pixels.shape[0]
    return torch.cat([add_diffusion_noise(chunk, step, torch.Generator(pixels.device).manual_seed(seed))
                      for chunk in pixels.split(sizes)])


class NoisedContrast(LogitsProcessor):
    """Contrasts every step's scores with the noised-image stream's logits (``contrast``)."""

    def __init__(self, stream: ImageStream, alpha: float, beta: float) -> None:
        self.stream, self.alpha, self.beta = stream, alpha, beta

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return contrast(scores, self.stream.logits(input_ids).to(scores.device), self.alpha, self.beta)


SEED_MAX = 2**63 - 1  # what torch's generators take


@dataclass(frozen=True)
class VCDParams(Params):
    # α: contrast strength (the paper's setting; the VCD code falls back to 0.5)
    alpha: float = param(1.0, paper="α", low=0.0)
    # β: plausibility cutoff, keep tokens with p ≥ β·max p (the VCD POPE scripts use 0.2)
    beta: float = param(0.1, paper="β", low=0, high=1, low_open=True)
    noise_step: int = param(500, paper="T", low=0, high=NUM_STEPS - 1)  # T: diffusion step of the noise, 0..999
    sample: bool = False  # sample (as the VCD code does) instead of greedy decoding
    seed: int = param(0, low=0, high=SEED_MAX)  # seeds the noise and, when sampling, torch's global generator


@register_method
class VCD(Method):
    name = "vcd"
    paper = ("Leng et al., CVPR 2024, “Mitigating Object Hallucinations in Large Vision-Language Models through "
             "Visual Contrastive Decoding”, https://arxiv.org/abs/2311.16922")
    equation = ("v′ = √ᾱ_T·v + √(1 − ᾱ_T)·ε,  ε ~ N(0, I)\n"
                "score(y) = (1 + α)·z(y | v) − α·z(y | v′), kept where p(y | v) ≥ β·max_w p(w | v)")
    fidelity = (
        Fidelity(reference="the paper's contrast and plausibility cutoff computed by hand in the test",
                 equal="the contrasted scores, α ∈ {0, 0.5, 1}",
                 tolerance="exact",
                 test="tests/test_method_vcd.py::test_contrast_on_a_hand_made_case"),
        Fidelity(reference="DAMO-NLP-SG/VCD, vcd_utils/vcd_add_noise.py (official code): its sigmoid β schedule, "
                           "transcribed in numpy in the test",
                 equal="ᾱ_t at every one of the 1000 steps",
                 tolerance="rtol ≤ 1e-12",
                 test="tests/test_method_vcd.py::test_noise_schedule_is_vcds_sigmoid_schedule"),
        Fidelity(reference="the paper's noise equation, with the same seeded ε, computed in the test",
                 equal="the noised pixel tensor at T = 500",
                 tolerance="max abs ≤ 1e-6",
                 test="tests/test_method_vcd.py::test_diffusion_noise_mixes_the_pixels_with_seeded_gaussian_noise"),
        processor_order_fidelity(
            "an independent reference in DAMO-NLP-SG/VCD vcd_sample.py's order (logits_processor, "
            "then logits_warper, on the contrasted scores): plain full forwards, the correction "
            "written in the test, transformers' processor classes applied in that order"),
    )
    Params = VCDParams
    supports_sampling = False  # it samples its own way: sample=True (warpers after the contrast, its seed)
    identity = {"alpha": 0.0}
    search_grid = {"alpha": (0.5, 1.0), "beta": (0.1, 0.2), "noise_step": (500, 999)}
    sites = frozenset({"logits"})
    side_streams = frozenset({"other_image"})
    extras = {"noise_step": "T, the diffusion step of the contrast image's noise"}

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p, runner = self.params, batch.runner
        stream = batch.image_stream({"pixel_values": noised_pixels(runner.inputs, p.noise_step, p.seed)},
                                    tag=f"vcd-noise:{p.noise_step}:{p.seed}")
        if p.sample:
            torch.manual_seed(p.seed)
        # the model's own processors and, when sampling, its warpers follow the contrast (processors_after_correction)
        generation = runner.generate((), max_new_tokens, do_sample=p.sample,
                                     logits_processor=LogitsProcessorList([NoisedContrast(stream, p.alpha, p.beta)]))
        return MethodResult(generation, extras=[{"noise_step": p.noise_step} for _ in range(batch.size)])
