"""Method parameters, declared once: each method's parameter dataclass (a ``Params`` subclass) declares its fields
with ``param(...)`` — default, the paper's symbol, bounds (closed or open), choices — and that declaration is the one
source for validation (``Params.validate``), the text parsers (``typed_method_args``: CLI, YAML, lmms-eval), the app's
controls (``param_specs``) and listings. A method adds only the rules one field cannot say (``Params.check``)."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visfocus.errors import VisfocusError
from visfocus.values import parse_bool, parse_float, parse_int, parse_key_values

# a layer parameter: decoder layer indices, a fraction range "a:b" of the depth (``resolve_layers``), or None (all)
LayerSpec = tuple[int, ...] | str | None
KINDS = ("float", "int", "bool", "str", "layers", "text")


def param(default: Any, *, paper: str | None = None, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A parameter field: its default, its name in the paper, its bounds (``low``/``high``, inclusive unless
    ``low_open``/``high_open``) and its choices. ``Params.validate`` enforces them; the app and listings show them."""
    return field(default=default, metadata={"paper": paper, "low": low, "high": high, "low_open": low_open,
                                            "high_open": high_open, "choices": choices})


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter as a control: name, kind (``KINDS``), default, bounds, choices and the paper's name."""

    name: str
    kind: str  # "float", "int", "bool", "str", "layers" (indices, a fraction range or None for all) or "text"
    default: Any
    paper: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None is a valid value

    @property
    def label(self) -> str:
        return f"{self.name} ({self.paper})" if self.paper else self.name

    def bounds_text(self) -> str:
        """"≥ 0.0", "in (0, 1]", … ("" when unbounded)."""
        return bounds_text(self.low, self.high, self.low_open, self.high_open)

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def bounds_text(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '≥'} {low}"
    if high is not None:
        return f"{'<' if high_open else '≤'} {high}"
    return ""


def _kind(hint: Any) -> str:
    kinds = set(typing.get_args(hint)) or {hint}
    if any(typing.get_origin(k) is tuple for k in kinds):
        return "layers" if str not in kinds or hint == LayerSpec else "text"
    return next(k.__name__ for k in (bool, int, float, str) if k in kinds)


def specs_of(params_type: type) -> list[ParamSpec]:
    """The fields of a ``Params`` dataclass as ``ParamSpec``s, in declaration order."""
    hints = typing.get_type_hints(params_type)
    specs = []
    for f in dataclasses.fields(params_type):
        meta = f.metadata
        specs.append(ParamSpec(f.name, _kind(hints[f.name]), f.default, meta.get("paper"), meta.get("low"),
                               meta.get("high"), meta.get("choices"), bool(meta.get("low_open")),
                               bool(meta.get("high_open")),
                               type(None) in typing.get_args(hints[f.name])))
    return specs


def check_value(spec: ParamSpec, value: Any, num_layers: int | None = None) -> None:
    """One clear error for a value its declaration does not allow (type, bounds, choices, layers)."""
    name = spec.name
    if value is None and spec.optional:
        return
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise VisfocusError(f"{name} must be true or false, got {value!r}")
    elif spec.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or not spec.contains(value):
            bounds = spec.bounds_text()
            raise VisfocusError(f"{name} must be an integer{' ' + bounds if bounds else ''}"
                                f"{' or None' if spec.optional else ''}, got {value!r}")
    elif spec.kind == "float":
        check_number(name, value)
        if not spec.contains(value):
            raise VisfocusError(f"{name} must be {spec.bounds_text()}, got {value}")
    elif spec.kind == "layers":
        if not isinstance(value, (str, tuple, list)):
            raise VisfocusError(f"{name} must be layer indices, a fraction range a:b of the depth or None, "
                                f"got {value!r}")
        check_layers(value, num_layers)
    elif spec.kind == "str" and spec.choices is not None:
        check_choice(name, value, spec.choices)
    elif spec.kind == "str" and not isinstance(value, str):
        raise VisfocusError(f"{name} must be text, got {value!r}")


@dataclass(frozen=True)
class Params:
    """Base of every method's parameters: fields declared with ``param``; ``validate`` checks each field against its
    declaration, then the method's own cross-field rules (``check``)."""

    def validate(self, num_layers: int | None = None) -> None:
        """One clear error for the first value the declarations (or ``check``) refuse. ``num_layers``: the decoder's
        depth, when known (layer indices are then checked against it)."""
        for spec in specs_of(type(self)):
            check_value(spec, getattr(self, spec.name), num_layers)
        self.check(num_layers)

    def check(self, num_layers: int | None = None) -> None:
        """Rules that one field's declaration cannot say (a bound that depends on another field, …)."""


def typed_values(params_type: type, given: str | Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """The parameters of ``params_type`` (method ``owner``'s) — from ``"KEY=VALUE,..."`` or a mapping (YAML, the
    API, the app) — each typed by its declared type: booleans through ``parse_bool``, numbers through
    ``parse_int``/``parse_float``, layer tuples from ``1;2;3`` or a list, ``None`` from none/null for an optional one.
    An unknown key or an untypable value is one error; bounds are ``Params.validate``'s."""
    hints = typing.get_type_hints(params_type)
    items = parse_key_values(given, f"'{owner}' method argument")
    unknown = sorted(set(items) - set(hints))
    if unknown:
        raise VisfocusError(f"method '{owner}' has no parameter {', '.join(map(_shown_key, unknown))}; its parameters: "
                            f"{', '.join(sorted(hints)) or 'none'}")
    return {key: _typed(value, hints[key], key) for key, value in items.items()}


def _shown_key(key: str) -> str:
    """A key as the user wrote it, quoted when it holds a character that would break the error's one line."""
    return key if key.isprintable() and key.strip() == key and key else repr(key)


def _typed(value: Any, hint: Any, key: str) -> Any:
    """One parameter value as its declared type (``hint``); text goes through ``_coerce``."""
    if isinstance(value, str):
        return _coerce(value.strip(), hint, key)
    kinds = set(typing.get_args(hint)) or {hint}
    if value is None and type(None) in kinds:
        return None
    if bool in kinds:
        return parse_bool(value, f"method argument {key}")
    if any(typing.get_origin(k) is tuple for k in kinds) and isinstance(value, (list, tuple)):
        return tuple(parse_int(v, f"method argument {key} (a layer index)") for v in value)
    if int in kinds and float not in kinds:
        return parse_int(value, f"method argument {key}")
    if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise VisfocusError(f"method argument {key}={value!r} is not a valid {_type_name(hint)}")


def _coerce(raw: str, hint: Any, key: str) -> Any:
    kinds = set(typing.get_args(hint)) or {hint}
    what = f"method argument {key}"
    if raw.lower() in ("none", "null", "") and type(None) in kinds:
        return None
    if bool in kinds:
        return parse_bool(raw, what)
    if any(typing.get_origin(k) is tuple for k in kinds):
        items = [v.strip() for v in raw.split(";") if v.strip()]
        if items and all(v.lstrip("+-").isdigit() for v in items):
            return tuple(parse_int(v, f"{what} (a layer index)") for v in items)
        if str not in kinds:  # e.g. DoLa's layers: "high" or indices
            raise VisfocusError(f"{what}={raw!r} is not a valid {_type_name(hint)}")
        return raw
    if int in kinds and float not in kinds:
        return parse_int(raw, what)
    if float in kinds:
        return parse_float(raw, what)
    return raw


def _type_name(hint: Any) -> str:
    """A parameter type as a user reads it: ``float``, ``layer indices (1;2;3) or text``, …"""
    kinds = [k for k in (set(typing.get_args(hint)) or {hint}) if k is not type(None)]
    names = sorted("layer indices (e.g. 1;2;3)" if typing.get_origin(k) is tuple else getattr(k, "__name__", str(k))
                   for k in kinds)
    return " or ".join(names)


def check_number(name: str, value: float, *, low: float | None = None, high: float | None = None) -> None:
    """One clear error for a parameter that is not a finite number within [low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise VisfocusError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"≥ {low}" if high is None else (f"≤ {high}" if low is None else f"in [{low}, {high}]")
        raise VisfocusError(f"{name} must be {bounds}, got {value}")


_FRACTION_RANGE = re.compile(r"^\s*(\d*\.?\d+)\s*:\s*(\d*\.?\d+)\s*$")


def fraction_range(spec: Any) -> tuple[float, float] | None:
    """``(a, b)`` when ``spec`` is a fraction range of the depth, the text ``"a:b"`` (0 ≤ a < b ≤ 1); else None."""
    if not isinstance(spec, str) or not (match := _FRACTION_RANGE.match(spec)):
        return None
    low, high = float(match.group(1)), float(match.group(2))
    if not 0 <= low < high <= 1:
        raise VisfocusError(f"layers {spec!r}: a fraction range a:b of the depth needs 0 ≤ a < b ≤ 1")
    return low, high


def resolve_layers(spec: tuple[int, ...] | str | None, num_layers: int) -> tuple[int, ...] | None:
    """The decoder layer indices a layer parameter means on a model of ``num_layers`` layers: None (all layers),
    explicit indices, or a fraction range ``"a:b"`` of the depth — the layers i with a ≤ i/L < b, so that a default
    tuned on a 32-layer decoder (e.g. layers 9–14 = ``"0.28:0.45"``) means the same part of the network on every
    depth. On a decoder too shallow for the range to hold a layer (a few layers), the one layer whose span
    [i/L, (i+1)/L) overlaps the range most."""
    if spec is None:
        return None
    fractions = fraction_range(spec)
    if fractions is None:
        check_layers(spec, num_layers)
        return tuple(spec)
    low, high = fractions
    layers = tuple(i for i in range(num_layers) if low <= i / num_layers < high)
    if not layers:
        overlap = [min(high, (i + 1) / num_layers) - max(low, i / num_layers) for i in range(num_layers)]
        layers = (max(range(num_layers), key=overlap.__getitem__),)
    return layers


def edit_layers(spec: tuple[int, ...] | str | None, num_layers: int) -> frozenset[int] | None:
    """The layer set an ``Edit`` takes for a layer parameter (``resolve_layers``; None: every layer)."""
    layers = resolve_layers(spec, num_layers)
    return frozenset(layers) if layers is not None else None


def check_choice(name: str, value: Any, choices: Any) -> None:
    """One clear error for a value that is not one of ``choices``."""
    if value not in choices:
        raise VisfocusError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_layers(layers: tuple[int, ...] | str | None, num_layers: int | None) -> None:
    """One clear error for a layer parameter that is not None, non-empty indices within the decoder, or a fraction
    range ``"a:b"`` (``resolve_layers``)."""
    if layers is None:
        return
    if isinstance(layers, str):
        if fraction_range(layers) is None:
            raise VisfocusError(f"layers {layers!r}: give layer indices (e.g. 1;2;3), a fraction range of the depth "
                                "(e.g. 0.28:0.45) or None for all layers")
        if num_layers is not None:
            resolve_layers(layers, num_layers)
        return
    if len(layers) == 0:
        raise VisfocusError("layers is empty; give layer indices or None for all layers")
    if any(not isinstance(i, int) or isinstance(i, bool) for i in layers):
        raise VisfocusError(f"layers {list(layers)}: layer indices must be integers")
    if num_layers is not None and any(not 0 <= i < num_layers for i in layers):
        raise VisfocusError(f"layers {list(layers)} out of range: the text decoder has {num_layers} layers "
                            f"(0..{num_layers - 1})")
