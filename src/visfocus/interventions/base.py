"""The method registry: one file per method, one ``@register_method`` each. A method has a typed, validated
parameter dataclass and turns a prepared ``Batch`` (``visfocus.interventions.batch``) into a generation through the
engine."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from visfocus.errors import VisfocusError
from visfocus.interventions.batch import Batch
from visfocus.steer.runner import Generation
from visfocus.values import parse_bool, parse_float, parse_int, parse_key_values

METHODS: dict[str, type[Method]] = {}
# a layer parameter: decoder layer indices, a fraction range "a:b" of the depth (``resolve_layers``), or None (all)
LayerSpec = tuple[int, ...] | str | None


@dataclass(frozen=True)
class Params:
    """Base of every method's parameters; subclasses add fields and ``validate``."""

    def validate(self, num_layers: int | None = None) -> None:
        pass


@dataclass
class MethodResult:
    generation: Generation
    alpha_used: list[float | None]  # per batch row: the image-logit multiplier applied (None: none applied)
    extras: list[dict[str, Any]] | None = None  # per batch row: what the method decided (confidence, branch, ...)
    batch: Batch | None = None  # the batch the answer came from, when the method changed it (VEA)


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    search_grid: ClassVar[dict[str, tuple]] = {}
    identity: ClassVar[dict[str, float]] = {}  # parameter values at which the method changes nothing
    # The method's answers stay exact when a batch starts from stored image prefixes (its edits touch only rows after
    # the prefix). A method that changes the image or the prompt before the question sets this False.
    shares_prefix: ClassVar[bool] = True
    # The method decodes through ``runner.generate`` without choosing greedy decoding itself, so the caller's sampling
    # (``answer_batch(sampling=...)``, the runner's ``generation_defaults``) applies. A method that decodes its own
    # way (greedy by definition, or sampling under its own parameters) sets this False.
    supports_sampling: ClassVar[bool] = True

    def __init__(self, params: Params) -> None:
        params.validate()
        self.params = params

    def resolved(self, num_layers: int) -> dict[str, list[int]]:
        """The parameters given as a fraction range of the depth, as the layer indices they mean on a model of
        ``num_layers`` layers (recorded in a run's results)."""
        return {name: list(resolve_layers(value, num_layers))
                for name, value in dataclasses.asdict(self.params).items() if fraction_range(value) is not None}

    def distance_from_identity(self) -> float:
        """How far the parameters are from doing nothing (a sweep breaks ties towards the smallest)."""
        values = dataclasses.asdict(self.params)
        return sum(abs(float(values[k]) - v) for k, v in self.identity.items())

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        """Answer ``batch`` (see ``Batch`` for everything it holds) in at most ``max_new_tokens`` tokens."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in dataclasses.asdict(self.params).items())})"


def param(default: Any, *, paper: str | None = None, low: float | None = None, high: float | None = None,
          choices: tuple[str, ...] | None = None) -> Any:
    """A parameter field that also says how to show it: its name in the paper, its bounds, its choices (for the
    app's controls and listings; ``validate`` stays the check)."""
    return field(default=default, metadata={"paper": paper, "low": low, "high": high, "choices": choices})


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter as a control: name, Python kind, default, bounds, choices and the paper's name."""

    name: str
    kind: str  # "float", "int", "bool", "str", "layers" (indices, or None for all) or "text"
    default: Any
    paper: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.paper})" if self.paper else self.name


def param_specs(name: str) -> list[ParamSpec]:
    """The parameters of method ``name`` as controls, in declaration order, from its parameter dataclass."""
    hints = typing.get_type_hints(METHODS[_known(name)].Params)
    specs = []
    for f in dataclasses.fields(METHODS[name].Params):
        kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if any(typing.get_origin(k) is tuple for k in kinds):
            kind = "layers" if str not in kinds or hints[f.name] == LayerSpec else "text"
        else:
            kind = next(k.__name__ for k in (bool, int, float, str) if k in kinds)
        meta = f.metadata
        specs.append(ParamSpec(f.name, kind, f.default, meta.get("paper"), meta.get("low"), meta.get("high"),
                               meta.get("choices")))
    return specs


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: list ``cls`` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def method(name: str, **kwargs: Any) -> Method:
    """Build a registered method with validated parameters, e.g. ``method("scaling_vis", alpha=0.5)``. Python values
    are taken as they are (``validate`` refuses a wrong type); text from a user goes through ``typed_method_args``."""
    cls = METHODS[_known(name)]
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise VisfocusError(f"method '{name}' has no parameter {', '.join(unknown)}; its parameters: "
                            f"{', '.join(sorted(fields)) or 'none'}")
    return cls(cls.Params(**kwargs))


def methods() -> dict[str, dict[str, Any]]:
    """Registered methods and their parameters with defaults: ``{name: {param: default}}``."""
    return {name: {f.name: f.default for f in dataclasses.fields(cls.Params)} for name, cls in sorted(METHODS.items())}


def _known(name: Any) -> str:
    if not isinstance(name, str) or name not in METHODS:
        raise VisfocusError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return name


def parse_method_args(name: str, text: str) -> dict[str, Any]:
    """``"alpha=0.5,layers=1;2"`` → typed kwargs for method ``name`` (tuples use ';' between items)."""
    return typed_method_args(name, text)


def typed_method_args(name: str, given: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters of method ``name`` — from ``"KEY=VALUE,..."`` or a mapping (YAML, the API, the app) — each
    typed by its declared type: booleans through ``parse_bool``, numbers through ``parse_int``/``parse_float``, layer
    tuples from ``1;2;3`` or a list, ``None`` from none/null for an optional one. An unknown key or an untypable value
    is one error; ranges are the method's ``validate``."""
    hints = typing.get_type_hints(METHODS[_known(name)].Params)
    items = parse_key_values(given, f"'{name}' method argument")
    unknown = sorted(set(items) - set(hints))
    if unknown:
        raise VisfocusError(f"method '{name}' has no parameter {', '.join(unknown)}; its parameters: "
                            f"{', '.join(sorted(hints)) or 'none'}")
    return {key: _typed(value, hints[key], key) for key, value in items.items()}


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
