"""The steering engine: one attention function that edits and records single query rows, without eager attention;
the sites a method may act at (``sites``) and the side streams it may decode beside the prompt (``streams``)."""

from visfocus.steer.attention import ATTN_NAME, register
from visfocus.steer.context import Cost, SteerState, steering
from visfocus.steer.edits import Edit, ScaleLogits
from visfocus.steer.runner import Generation, Prefix, Runner
from visfocus.steer.sites import SITES, Contract, LastPositionReader, LayerOutputWatcher
from visfocus.steer.streams import STREAMS, ImageStream, TextOnlyStream
from visfocus.steer.trace import Trace, TraceRecorder

__all__ = ["ATTN_NAME", "SITES", "STREAMS", "Contract", "Cost", "Edit", "Generation", "ImageStream",
           "LastPositionReader", "LayerOutputWatcher", "Prefix", "Runner", "ScaleLogits", "SteerState",
           "TextOnlyStream", "Trace", "TraceRecorder", "register", "steering"]
