"""``--model_args`` of ``lmms-eval --model visfocus`` → what to load and which method to run, validated with our
errors before any model loads. Pure: no lmms-eval and no model needed.

lmms-eval has already typed each value (``"0.5"`` → 0.5, ``"true"`` → True, digits → int, anything else a string); the
method's own parameters are typed again by its parameter dataclass, so ``layers=8;9;10`` (';' between items, as
``--method_args`` of ``visfocus eval``, since ',' separates the model args) becomes a tuple."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from visfocus.distributed import environment_ranks
from visfocus.errors import VisfocusError
from visfocus.evaluate import MODEL_ARGS, parse_model_args
from visfocus.interventions import Method, method, methods, parse_method_args
from visfocus.values import parse_bool

# model_args that are not the method's: how to load the model and how to run it
LOAD_KEYS = tuple(MODEL_ARGS)
RUN_KEYS = ("pretrained", "method", "batch_size", "max_batch_size", "trace", "trace_dir", "prefix_sharing")
ORGANISM = ("organism", "", None)  # pretrained values that mean the built-in model organism


@dataclass(frozen=True)
class LmmsSettings:
    pretrained: str | None  # Hub id or local path; None: the built-in model organism
    method_name: str
    method_args: dict[str, Any]
    load: dict[str, Any] = field(default_factory=dict)  # visfocus.load keyword arguments
    batch_size: int = 1
    trace: str | None = None  # "heads" or "mean": write visfocus trace files (visfocus.tracefile)
    trace_dir: str | None = None  # where; default: <--output_path>/visfocus_traces
    prefix_sharing: bool = True

    def build_method(self) -> Method:
        return method(self.method_name, **self.method_args)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_settings(args: dict[str, Any]) -> LmmsSettings:
    """Validate everything given in ``--model_args`` (plus lmms-eval's ``batch_size``/``device``): an unknown method,
    a parameter the method does not have, or a value out of its range is one ``VisfocusError``."""
    args = dict(args)
    pretrained = args.pop("pretrained", None)
    name = str(args.pop("method", "baseline") or "baseline")
    name = "baseline" if name.lower() in ("none", "baseline") else name
    batch_size = args.pop("batch_size", 1)
    args.pop("max_batch_size", None)  # lmms-eval passes it; batches here are exactly batch_size
    if isinstance(batch_size, str) and batch_size.strip().isdigit():
        batch_size = int(batch_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VisfocusError(f"batch_size must be an integer ≥ 1, got {batch_size!r} (visfocus does not pick one "
                            "automatically)")
    trace = args.pop("trace", None)
    if trace is not None and trace not in ("heads", "mean"):
        raise VisfocusError(f"trace must be heads or mean, got {trace!r}")
    trace_dir = args.pop("trace_dir", None)
    prefix_sharing = parse_bool(args.pop("prefix_sharing", True), "prefix_sharing")
    load = {key: args.pop(key) for key in LOAD_KEYS if args.get(key) is not None}
    for key in LOAD_KEYS:
        args.pop(key, None)
    typed = parse_model_args(load)  # a bad value (e.g. trust_remote_code=maybe) fails here, before the model loads
    load = {key: typed[key] for key in load}
    # what is left belongs to the method: typed by its parameter dataclass, then validated by building it
    known = methods().get(name)
    if known is None:
        raise VisfocusError(f"unknown method '{name}'; registered methods: {', '.join(sorted(methods()))}")
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise VisfocusError(f"method '{name}' has no parameter {', '.join(unknown)}; its parameters: "
                            f"{', '.join(sorted(known)) or 'none'}; model args: {', '.join(RUN_KEYS + LOAD_KEYS)}")
    text = ",".join(f"{key}={_as_text(value)}" for key, value in args.items())
    method_args = parse_method_args(name, text)
    settings = LmmsSettings(pretrained=None if pretrained in ORGANISM else str(pretrained), method_name=name,
                            method_args=method_args, load=load, batch_size=batch_size, trace=trace,
                            trace_dir=None if trace_dir is None else str(trace_dir), prefix_sharing=prefix_sharing)
    settings.build_method()  # unknown parameters and out-of-range values fail here, before the model loads
    return settings


def exit_with(err: VisfocusError) -> NoReturn:
    """End an lmms-eval command with our one line (``visfocus: error: ...``, naming the rank under several
    processes) and exit status 2, instead of a traceback."""
    ranks = environment_ranks()
    prefix = f"[rank {ranks.rank}] " if ranks.distributed else ""
    print(f"visfocus: error: {prefix}{err}", file=sys.stderr)
    raise SystemExit(2)
