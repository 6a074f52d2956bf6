"""VCD, Visual Contrastive Decoding (Leng et al., CVPR 2024). At every step the next-token logits z of the prompt are
contrasted with the logits z' of the same prompt on a diffusion-noised image: (1+α)·z − α·z'. Only the tokens that
the clean image finds plausible are kept (p(v) ≥ β·max p(v), the adaptive plausibility constraint); the rest get −inf.

The noise follows the VCD code: v' = sqrt(ᾱ_T)·v + sqrt(1−ᾱ_T)·ε, applied to the processor's *normalised* pixel tensor,
with a 1000-step sigmoid β schedule from 1e-5 to 5e-3. The noised prompt runs as a second stream beside ``generate``,
with its own KV cache, so the cost is two forward passes per token. The paper calls the strength α, the cutoff β and
the noise step T; its code calls them ``cd_alpha``, ``cd_beta`` and ``noise_step``.

Decoding is greedy by default. ``sample=True`` samples as the VCD code does, using the model's own temperature, top-k
and top-p (transformers' defaults 1.0 / 50 / 1.0 where the model sets none), and seeds torch's global generator with
``seed``. As in the VCD code, the model's repetition penalty and these warpers act on the contrasted scores, never
before the contrast. Each image's noise comes from its own generator seeded with ``seed``, so an image gets the same
noise alone as in a batch (LLaVA-NeXT's padded tiles aside). The answer's first-token logits are the contrasted
scores that chose the token, −inf outside the plausible set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from visfocus.errors import VisfocusError
from visfocus.interventions.base import Method, MethodResult, Params, check_number, param, register_method
from visfocus.interventions.batch import Batch
from visfocus.steer.compat import cache_argument, output_cache
from visfocus.steer.context import SteerState, steering

NUM_STEPS = 1000
# Given to generate so that it applies no penalty or warper of its own before the contrast (they come after it).
NO_PENALTY, NO_WARPERS = {"repetition_penalty": 1.0}, {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


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
    cutoff = logits.max(dim=-1, keepdim=True).values + math.log(beta)  # (B, 1)
    return ((1 + alpha) * logits - alpha * noised_logits).masked_fill(logits < cutoff, float("-inf"))  # (B, V)


def noised_pixels(inputs: dict, step: int, seed: int) -> torch.Tensor:
    """The batch's pixel tensor with every image noised from its own generator, seeded with ``seed``."""
    pixels = inputs["pixel_values"]
    grid = inputs.get("image_grid_thw")  # Qwen: each image's patch rows lie one after another along dim 0
    sizes = grid.prod(-1).tolist() if grid is not None else [1] * pixels.shape[0]
    return torch.cat([add_diffusion_noise(chunk, step, torch.Generator(pixels.device).manual_seed(seed))
                      for chunk in pixels.split(sizes)])


class NoisedImageStream(LogitsProcessor):
    """The contrast stream: the runner's prompt on other pixels, with its own cache. At the first call it runs the
    prompt's prefill; later it feeds the newest token of ``input_ids``. Returns the contrasted scores."""

    def __init__(self, batch: Batch, pixel_values: torch.Tensor, alpha: float, beta: float, tag: str) -> None:
        self.batch, self.alpha, self.beta, self.tag = batch, alpha, beta, tag
        self.pixel_values = pixel_values
        self.cache = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return contrast(scores, self.stream_logits(input_ids).to(scores.device), self.alpha, self.beta)

    def stream_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """(B, V) float32 logits of this stream for the token after ``input_ids`` (B, S + k)."""
        r, adapter = self.batch.runner, self.batch.adapter
        if self.cache is None:  # the prompt's prefill (from the noised image's shared prefix when the batch shares)
            prefix = r.prefill(vision={"pixel_values": self.pixel_values}, tag=self.tag)
            self.cache = prefix.cache
            return prefix.first_logits  # (B, V)
        # the vision inputs are in the cache now: feed the newest token
        prompt_mask = r.inputs["attention_mask"]  # (B, S)
        new = prompt_mask.new_ones(prompt_mask.shape[0], input_ids.shape[1] - prompt_mask.shape[1])  # (B, k)
        mask = torch.cat([prompt_mask, new], dim=1)  # (B, S + k)
        kwargs = {"input_ids": input_ids[:, -1:], "attention_mask": mask, cache_argument(r.model): self.cache,
                  "position_ids": adapter.decode_position_ids(r.inputs, mask)}  # (B, 1) or (3, B, 1)
        with steering(SteerState(image_cols=r.image_cols, cost=r.cost)):  # a plain forward: no edit, no trace
            out = r.model(**kwargs, use_cache=True)
        self.cache = output_cache(out)
        return out.logits[:, -1].float()  # (B, V)


def after_contrast(config, padding: torch.Tensor, sample: bool) -> list[LogitsProcessor]:
    """The model's repetition penalty and, when sampling, its warpers (from its ``GenerationConfig``), to run on the
    contrasted scores. padding: (B,) each row's left padding, which the penalty skips (as generate does)."""
    processors: list[LogitsProcessor] = []
    if config.repetition_penalty not in (None, 1.0):
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, prompt_ignore_length=padding))
    if sample:
        top_k = 50 if config.top_k is None else config.top_k
        processors.append(TemperatureLogitsWarper(config.temperature or 1.0))
        processors += [TopKLogitsWarper(top_k)] if top_k else []
        processors += [TopPLogitsWarper(config.top_p)] if config.top_p is not None and config.top_p < 1 else []
    return processors


SEED_MAX = 2**63 - 1  # what torch's generators take


@dataclass(frozen=True)
class VCDParams(Params):
    # α: contrast strength (the paper's setting; the VCD code falls back to 0.5)
    alpha: float = param(1.0, paper="α", low=0.0)
    # β: plausibility cutoff, keep tokens with p ≥ β·max p (the VCD POPE scripts use 0.2)
    beta: float = param(0.1, paper="β", low=0.0, high=1.0)
    noise_step: int = param(500, paper="T", low=0, high=NUM_STEPS - 1)  # T: diffusion step of the noise, 0..999
    sample: bool = False  # sample (as the VCD code does) instead of greedy decoding
    seed: int = param(0, low=0, high=SEED_MAX)  # seeds the noise and, when sampling, torch's global generator

    def validate(self, num_layers: int | None = None) -> None:
        check_number("alpha", self.alpha, low=0.0)
        check_number("beta", self.beta)
        if not 0 < self.beta <= 1:
            raise VisfocusError(f"beta must be in (0, 1], got {self.beta}")
        if not isinstance(self.noise_step, int) or isinstance(self.noise_step, bool) \
                or not 0 <= self.noise_step < NUM_STEPS:
            raise VisfocusError(f"noise_step must be an integer in [0, {NUM_STEPS - 1}], got {self.noise_step!r}")
        if not isinstance(self.sample, bool):
            raise VisfocusError(f"sample must be true or false, got {self.sample!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= SEED_MAX:
            raise VisfocusError(f"seed must be an integer in [0, {SEED_MAX}], got {self.seed!r}")


@register_method
class VCD(Method):
    name = "vcd"
    Params = VCDParams
    supports_sampling = False  # it samples its own way: sample=True (warpers after the contrast, its seed)
    identity = {"alpha": 0.0}
    search_grid = {"alpha": (0.5, 1.0), "beta": (0.1, 0.2), "noise_step": (500, 999)}

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        p = self.params
        p.validate(batch.num_layers)
        runner = batch.runner
        stream = NoisedImageStream(batch, noised_pixels(runner.inputs, p.noise_step, p.seed), p.alpha, p.beta,
                                   tag=f"vcd-noise:{p.noise_step}:{p.seed}")
        after = after_contrast(runner.model.generation_config, runner.left_padding, p.sample)
        if p.sample:
            torch.manual_seed(p.seed)
        generation = runner.generate((), max_new_tokens, logits_processor=LogitsProcessorList([stream, *after]),
                                     first_logits_from="scores", do_sample=p.sample, **NO_PENALTY,
                                     **(NO_WARPERS if p.sample else {}))
        rows = generation.new_tokens.shape[0]
        extras = [{"noise_step": p.noise_step} for _ in range(rows)]
        return MethodResult(generation, alpha_used=[None] * rows, extras=extras)
