"""The steering engine: one attention function that edits and records single query rows, without eager attention."""

from visfocus.steer.attention import ATTN_NAME, register
from visfocus.steer.context import Cost, SteerState, steering
from visfocus.steer.edits import Edit, ScaleLogits
from visfocus.steer.runner import Generation, Prefix, Runner
from visfocus.steer.trace import Trace, TraceRecorder

__all__ = ["ATTN_NAME", "Cost", "Edit", "Generation", "Prefix", "Runner", "ScaleLogits", "SteerState", "Trace",
           "TraceRecorder", "register", "steering"]
