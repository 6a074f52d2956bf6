"""visfocus: steer and inspect where vision-language models look.

    import visfocus as vf
    vlm = vf.load("Qwen/Qwen3-VL-2B-Instruct", dtype="bfloat16", device="cuda")
    out = vlm.answer(image, "Where is the cup?", method=vf.method("scaling_vis", alpha=0.5), trace=True)
"""

from visfocus.api import VLM, Answer, load_image
from visfocus.errors import VisfocusError
from visfocus.methods import METHODS, method, methods
from visfocus.models.loading import load
from visfocus.tasks import task, tasks

__version__ = "0.1.0"
__all__ = ["METHODS", "VLM", "Answer", "VisfocusError", "load", "load_image", "method", "methods", "task", "tasks"]
