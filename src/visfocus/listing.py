"""What a registered method declares and reports, as text, read from the registry (``METHODS``) only: its parameters
with their bounds, its capabilities (sites, side streams, prefix sharing, sampling, answer options), the extras it
reports with their meaning, the pictures the app draws and the overhead benchmark's points (``describe_method``, for
``visfocus list methods``); and one answer's reported extras as short ``(key, value)`` texts (``extra_items``, for the
app's result card and the heatmap's title). Pure: no model, no I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from visfocus.errors import VisfocusError
from visfocus.interventions.base import METHODS, ParamSpec, param_specs

MAX_VALUE_CHARS = 60  # an extra's value longer than this (a grid, a long list) is shown by its size only


def value_text(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """One reported value, short: numbers as ``:g``, text as it is, small lists and mappings as JSON, a large one by
    its size (``[14×14]``, ``[40 items]``)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, (int, str)):
        text = str(value)
        return text if len(text) <= limit else text[: limit - 1] + "…"
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = str(value)
    if len(text) <= limit:
        return text
    if isinstance(value, (list, tuple)) and value and all(isinstance(row, (list, tuple)) for row in value):
        return f"[{len(value)}×{len(value[0])}]"
    if isinstance(value, (list, tuple, Mapping)):
        return f"[{len(value)} items]"
    return text[: limit - 1] + "…"


def extra_items(method: str, extras: Mapping[str, Any], *, pictures: bool = False) -> list[tuple[str, str]]:
    """``(key, value text)`` of the extras one answer of ``method`` reported: its declared extras first, in
    declaration order, then any other key; the extras the app draws (``Method.app_outputs``) only when ``pictures``."""
    cls = METHODS.get(method)
    declared = list(cls.extras) if cls is not None else []
    drawn = set(cls.app_outputs) if cls is not None and not pictures else set()
    keys = [k for k in declared if k in extras] + [k for k in extras if k not in declared]
    return [(key, value_text(extras[key])) for key in keys if key not in drawn]


def param_text(spec: ParamSpec) -> str:
    """``alpha (α) = 0.5, ≥ 0.0`` / ``confidence = 'max_prob', one of max_prob, option_prob``."""
    text = f"{spec.label} = {spec.default!r}"
    if spec.choices:
        text += f", one of {', '.join(spec.choices)}"
    elif spec.bounds_text():
        text += f", {spec.bounds_text()}"
    return text + (" (or None)" if spec.optional and spec.default is not None else "")


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def _at_defaults(name: str) -> tuple[str, str]:
    """(shares prefix, needs options) of method ``name`` at its default parameters (an instance may decide them from
    its parameters)."""
    cls = METHODS[name]
    try:
        built = cls(cls.Params())
    except (VisfocusError, TypeError, ValueError):  # no usable defaults: what the class declares
        return _yes(cls.shares_prefix), "—"
    return _yes(built.shares_prefix), _yes(built.needs_options)


def describe_method(name: str) -> list[str]:
    """The lines that describe registered method ``name`` (``visfocus list methods``): its parameters, what it
    declares (where it acts, its side streams, prefix sharing, sampling and answer options at its defaults), the
    extras it reports and their meaning, the pictures the app draws from them and the overhead benchmark's points."""
    cls = METHODS[name]
    shares, options = _at_defaults(name)
    lines = [name]
    lines += [f"  parameter  {param_text(spec)}" for spec in param_specs(name)]
    lines.append(f"  acts on    {', '.join(sorted(cls.sites)) or 'nothing (the plain model)'}"
                 + (f"; side streams: {', '.join(sorted(cls.side_streams))}" if cls.side_streams else ""))
    lines.append(f"  shares the image prefix: {shares} · the caller's sampling applies: "
                 f"{_yes(cls.supports_sampling)} · reads the answer options: {options} (at its defaults)")
    if "logits" in cls.sites:
        lines.append("  the model's own logits processors run "
                     + ("after its correction" if cls.processors_after_correction
                        else "before its correction (the warpers after)"))
    lines += [f"  reports    {key}: {meaning}" for key, meaning in cls.extras.items()]
    lines += [f"  app shows  {key}: {caption}" for key, caption in cls.app_outputs.items()]
    if name != "baseline":  # the benchmark's plain row
        lines += [f"  bench      {label}" + (f" ({', '.join(f'{k}={v!r}' for k, v in params.items())})" if params
                                             else "") for label, params in cls.benchmark_points().items()]
    return lines


def describe_methods() -> str:
    """Every registered method's description (``describe_method``), by name."""
    return "\n".join(line for name in sorted(METHODS) for line in describe_method(name))
