"""visfocus: steer and inspect where vision-language models look.

    import visfocus as vf
    vlm = vf.load("Qwen/Qwen3-VL-2B-Instruct", dtype="bfloat16", device="cuda")
    out = vlm.answer(image, "Where is the cup?", method=vf.method("scaling_vis", alpha=0.5), trace=True)
"""

from visfocus.api import VLM, Answer, ContinuationScore, Sampling, load, load_image, load_model
from visfocus.benchmarks import task, tasks
from visfocus.errors import VisfocusError
from visfocus.interventions import METHODS, method, methods

__version__ = "0.1.0"
__all__ = ["METHODS", "VLM", "Answer", "ContinuationScore", "Sampling", "VisfocusError", "load", "load_image",
           "load_model", "method", "methods", "task", "tasks"]
