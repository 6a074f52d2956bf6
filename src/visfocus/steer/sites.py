"""The places a method may act on the model, owned by the engine. Names and shapes (B batch rows, H query heads,
Q query positions of the forward, K key positions, D hidden size, V vocabulary):

- ``attention``: ``text.layer[i].attn`` — the pre-softmax logits (and probabilities) of chosen query rows, (B, H, K)
  per row, edited by ``visfocus.steer.edits.Edit``s (ScalingVis, AdaptVis, PAI, VAF, CLVS) and recorded by the trace;
- ``layer_input``: ``text.layer[i].input`` — the hidden state entering decoder layer i, (B, Q, D), read
  (``LastPositionReader``: DoLa's and DeCo's premature layers);
- ``layer_output``: ``text.layer[i].output`` — the hidden state decoder layer i returns, (B, Q, D), read
  (``LayerOutputWatcher``: CLVS's stop rule);
- ``logits``: the next-token scores, (B, V) at every step, through logits processors (VCD, DoLa, DeCo, M3ID, PAI's
  contrast).

A method declares the sites it uses (``Method.sites``); the runner installs and removes every hook
(``installed``) and refuses a site the method did not declare (``Contract``). No code outside ``steer/`` registers a
forward hook."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

SITES = {
    "attention": "text.layer[i].attn: pre-softmax logits / probabilities of chosen query rows, (B, H, K) per row",
    "layer_input": "text.layer[i].input: the hidden state entering decoder layer i, (B, Q, D), read",
    "layer_output": "text.layer[i].output: the hidden state decoder layer i returns, (B, Q, D), read",
    "logits": "the next-token scores, (B, V) at every decoding step, through logits processors",
}


@dataclass(frozen=True)
class Contract:
    """What one method may touch: its declared sites and side streams (``require`` raises for anything else), and
    where the model's own logits processors run relative to its processors at the logits site
    (``processors_after_correction``: after them, else where transformers puts them, before; ``steer.processors``)."""

    method: str
    sites: frozenset[str]
    side_streams: frozenset[str]
    processors_after_correction: bool = True

    def require(self, kind: str, name: str) -> None:
        declared = self.sites if kind == "site" else self.side_streams
        if name not in declared:
            raise RuntimeError(f"method '{self.method}' uses the {kind} '{name}' without declaring it "
                               f"(declared: {', '.join(sorted(declared)) or 'none'})")


class LayerHook:
    """Something a method hands the engine to run at a layer site: ``site`` is "layer_input" or "layer_output";
    ``layers`` the decoder layers it watches (None: all); ``__call__(layer, hidden)`` gets (B, Q, D)."""

    site: ClassVar[str]
    layers: tuple[int, ...] | None = None

    def __call__(self, layer: int, hidden: torch.Tensor) -> None:
        raise NotImplementedError


class LastPositionReader(LayerHook):
    """Keeps, at every forward, the last position's hidden state entering each layer j of ``layers`` (hidden-state
    index j: the output of the first j layers, 0 = the embedding output) in ``hidden[j]``, (B, D), on ``device``."""

    site = "layer_input"

    def __init__(self, layers: tuple[int, ...], device: torch.device | str | None = None) -> None:
        self.layers = tuple(layers)
        self.device = device
        self.hidden: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, hidden: torch.Tensor) -> None:
        self.hidden[layer] = hidden[:, -1].to(self.device) if self.device is not None else hidden[:, -1]  # (B, D)


class LayerOutputWatcher(LayerHook):
    """Calls ``watch(layer, hidden)`` with every watched decoder layer's output, (B, Q, D)."""

    site = "layer_output"

    def __init__(self, watch: Callable[[int, torch.Tensor], None], layers: tuple[int, ...] | None = None) -> None:
        self.watch, self.layers = watch, layers

    def __call__(self, layer: int, hidden: torch.Tensor) -> None:
        self.watch(layer, hidden)


@contextlib.contextmanager
def installed(decoder_layers: Sequence[torch.nn.Module], hooks: Sequence[LayerHook]) -> Iterator[None]:
    """Within the block, every hook runs at its site of its layers; every handle is removed on the way out."""
    handles = []
    try:
        for hook in hooks:
            layers = hook.layers if hook.layers is not None else range(len(decoder_layers))
            for i in layers:
                handles.append(_register(decoder_layers[i], i, hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _register(module: torch.nn.Module, i: int, hook: LayerHook):
    if hook.site == "layer_input":
        def before(module, args, kwargs) -> None:
            hook(i, args[0] if args else kwargs["hidden_states"])  # (B, Q, D) the layer's input
        return module.register_forward_pre_hook(before, with_kwargs=True)

    def after(module, args, out) -> None:
        hook(i, out[0] if isinstance(out, tuple) else out)  # (B, Q, D) the layer's output
    return module.register_forward_hook(after)
