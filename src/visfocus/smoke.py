"""The built-in smoke default: a tiny random-weight Qwen3-VL and a few generated images with spatial questions, so
``visfocus eval`` does something real on a fresh machine. Its answers are noise; it checks the plumbing."""

from __future__ import annotations

from PIL import Image

SMOKE_NOTE = ("smoke default: a tiny random-weight Qwen3-VL built in code and generated images; the answers are "
              "meaningless. Pass --model to evaluate a real checkpoint.")

QUESTIONS = (
    "Where is the red square in relation to the blue circle? Answer with left, right, above or below.",
    "Is the blue circle left of the red square? Answer with yes or no.",
    "Where is the green shape in the image? Answer with left, right, top or bottom.",
    "Is the red square above the blue circle? Answer with yes or no.",
)


def smoke_samples(limit: int | None = None) -> list[tuple[str, Image.Image, str]]:
    """(id, image, question) triples on generated images of different sizes."""
    from visfocus.testing import make_image

    sizes = [(224, 160), (160, 224), (256, 192), (192, 192)]
    samples = [(f"smoke-{i}", make_image(w, h, seed=i), QUESTIONS[i % len(QUESTIONS)])
               for i, (w, h) in enumerate(sizes)]
    return samples[:limit] if limit else samples


def smoke_model_path() -> str:
    from transformers.utils import logging as hf_logging

    from visfocus.testing import tiny_model_dir

    hf_logging.disable_progress_bar()  # building the fixture is not the user's download
    try:
        return str(tiny_model_dir("qwen3_vl"))
    finally:
        hf_logging.enable_progress_bar()
