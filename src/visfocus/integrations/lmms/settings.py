"""``--model_args`` of ``lmms-eval --model visfocus`` → what to load and which method to run, validated with our
errors before any model loads. Pure: no lmms-eval and no model needed.

The model args are the run configuration's fields that declare an lmms-eval name (``visfocus.run.config``:
``pretrained`` for ``model``, ``method``, ``batch_size``, ``trace``, ``share_prefix``), each typed by that field's own
parser, plus the keys of its flattened fields (the model arguments of ``visfocus.load``; what is left is the
method's), plus ``trace_dir`` and lmms-eval's ``max_batch_size``. lmms-eval has already typed each value (``"0.5"`` →
0.5, ``"true"`` → True, digits → int, anything else a string); the method's own parameters are typed again by its
parameter dataclass, so ``layers=8;9;10`` (';' between items, as ``--method_args`` of ``visfocus eval``, since ','
separates the model args) becomes a tuple."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from visfocus.distributed import environment_ranks
from visfocus.errors import VisfocusError
from visfocus.interventions import Method, method, methods, parse_method_args
from visfocus.interventions.base import method_class
from visfocus.run.config import BASELINE, FLATTENED, MODEL_ARGS, SETTINGS

# lmms-eval model arg → the run configuration field it sets; old names are read as the field's (prefix_sharing)
RUN_ARGS = {s.lmms: name for name, s in SETTINGS.items() if s.lmms not in (None, FLATTENED)}
OLD_ARGS = {alias: name for name in RUN_ARGS.values() for alias in SETTINGS[name].aliases}
OWN_ARGS = ("trace_dir", "max_batch_size")  # lmms-eval's only: where traces go; a batch size visfocus ignores
LOAD_KEYS = tuple(MODEL_ARGS)  # the flattened model_args
ORGANISM = ("organism", "", None)  # pretrained values that mean the built-in model organism


@dataclass(frozen=True)
class LmmsSettings:
    model: str | None  # Hub id or local path (model arg ``pretrained``); None: the built-in model organism
    method_name: str  # "baseline" for none
    method_args: dict[str, Any]
    model_args: dict[str, Any] = field(default_factory=dict)  # visfocus.load keyword arguments given
    batch_size: int = 1
    trace: str | None = None  # the trace mode, heads or mean: write visfocus trace files (visfocus.tracefile)
    trace_dir: str | None = None  # where; default: <--output_path>/visfocus_traces
    share_prefix: bool = True

    def build_method(self) -> Method:
        return method(self.method_name, **self.method_args)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_values(args: dict[str, Any]) -> dict[str, Any]:
    """Pop the model args that set run configuration fields from ``args``, typed by each field's parser (named as
    the model arg), under the field's name."""
    values = {}
    for arg, name in {**OLD_ARGS, **RUN_ARGS}.items():
        if arg in args:
            values[name] = SETTINGS[name].parse(args.pop(arg), arg)
    values["model_args"] = SETTINGS["model_args"].parse({k: args.pop(k) for k in LOAD_KEYS if k in args}, "")
    values["model_args"] = {k: v for k, v in values["model_args"].items() if v is not None}
    return values


def parse_settings(args: dict[str, Any]) -> LmmsSettings:
    """Validate everything given in ``--model_args`` (plus lmms-eval's ``batch_size``/``device``): an unknown method,
    a parameter the method does not have, or a value out of its range is one ``VisfocusError``."""
    args = dict(args)
    pretrained = args.pop("pretrained", None)
    trace_dir = args.pop("trace_dir", None)
    args.pop("max_batch_size", None)  # lmms-eval passes it; batches here are exactly batch_size
    typed = _field_values(args)
    name = typed.get("method") or BASELINE
    # what is left belongs to the method: typed by its parameter dataclass, then validated by building it
    method_class(name)  # one error for an unknown method
    known = methods()[name]
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise VisfocusError(f"method '{name}' has no parameter {', '.join(unknown)}; its parameters: "
                            f"{', '.join(sorted(known)) or 'none'}; model args: "
                            f"{', '.join([*RUN_ARGS, *OWN_ARGS, *LOAD_KEYS])}")
    method_args = parse_method_args(name, ",".join(f"{key}={_as_text(value)}" for key, value in args.items()))
    settings = LmmsSettings(model=None if pretrained in ORGANISM else str(pretrained), method_name=name,
                            method_args=method_args, model_args=typed["model_args"],
                            batch_size=typed.get("batch_size", 1), trace=typed.get("trace"),
                            trace_dir=None if trace_dir is None else str(trace_dir),
                            share_prefix=typed.get("share_prefix", True))
    settings.build_method()  # unknown parameters and out-of-range values fail here, before the model loads
    return settings


def exit_with(err: VisfocusError) -> NoReturn:
    """End an lmms-eval command with our one line (``visfocus: error: ...``, naming the rank under several
    processes) and exit status 2, instead of a traceback."""
    ranks = environment_ranks()
    prefix = f"[rank {ranks.rank}] " if ranks.distributed else ""
    print(f"visfocus: error: {prefix}{err}", file=sys.stderr)
    raise SystemExit(2)
