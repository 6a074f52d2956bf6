"""The built-in smoke default: a tiny random-weight Qwen3-VL (on the generated ``synthetic_spatial`` task), so
``visfocus eval`` does something real on a fresh machine. Its answers are noise; it checks the plumbing."""

from __future__ import annotations

SMOKE_NOTE = ("smoke default: a tiny random-weight Qwen3-VL built in code and generated images; the answers are "
              "meaningless. Pass --model to evaluate a real checkpoint.")


def smoke_model_path() -> str:
    from transformers.utils import logging as hf_logging

    from visfocus.testing import tiny_model_dir

    hf_logging.disable_progress_bar()  # building the fixture is not the user's download
    try:
        return str(tiny_model_dir("qwen3_vl"))
    finally:
        hf_logging.enable_progress_bar()
