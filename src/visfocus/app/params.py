"""The method parameters an app request may set, read safely: every value typed through the project's parsers
(``visfocus.values``; layer parameters by the method's own declaration, ``typed_values``/``check_value``) and held
within its method's declared bounds (``ParamSpec.contains``, closed or open), from the page's controls
(``read_params``) or the ``/compare`` API's JSON (``request_params``); and VEA's layer ``profile`` as a NAME from the
folder the operator gave (``visfocus app --profiles DIR``, ``ProfileFolder``), never a path a request names. Each
refusal is one ``VisfocusError``; nothing here runs a model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visfocus.errors import VisfocusError
from visfocus.interventions.base import METHODS, ParamSpec, param_specs
from visfocus.interventions.params import bounds_text, check_value, typed_values
from visfocus.interventions.vea import load_profile
from visfocus.values import parse_bool, parse_float, parse_int, parse_text, shown

PROFILE_PARAMETER = "profile"  # a method parameter of this name is a layer profile: a name from the operator's folder
MAX_PROFILE_BYTES = 1_000_000  # a layer profile is a few kB (per-layer AUROCs); a larger file is refused unread
MAX_PARAMS_CHARS = 20_000  # the /compare JSON texts (methods, params): far more than every parameter of every method
PROFILE_HINT = "pick one by name from the app's profile list"


@dataclass(frozen=True)
class ProfileFolder:
    """The operator's folder of VEA layer profiles (``visfocus profile-layers`` JSON files): requests name a profile
    by its file stem; the file is resolved here, inside the folder, and read only when under ``max_bytes``."""

    root: Path
    max_bytes: int = MAX_PROFILE_BYTES

    @classmethod
    def open(cls, folder: str | Path, max_bytes: int = MAX_PROFILE_BYTES) -> ProfileFolder:
        """The folder given to ``--profiles``; a missing one is an error for the operator."""
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise VisfocusError(f"--profiles {folder}: no such folder; give a folder of layer profiles written by "
                                "`visfocus profile-layers` (*.json)")
        return cls(root.resolve(), max_bytes)

    def names(self) -> list[str]:
        """The profiles offered: the stems of the folder's ``*.json`` files (not links that lead out of it), sorted."""
        return sorted(path.stem for path in self.root.glob("*.json")
                      if path.is_file() and path.resolve().parent == self.root)

    def path(self, name: Any) -> Path:
        """The file of profile ``name``. Anything but an offered name — a path, ``..``, a missing name, a link that
        leads out of the folder — gets the same ``refusal``, which says nothing of what exists on the server."""
        if not isinstance(name, str) or name not in self.names():
            raise refusal(name, self)
        path = (self.root / f"{name}.json").resolve()
        if path.parent != self.root or not path.is_file():
            raise refusal(name, self)
        size = path.stat().st_size
        if size > self.max_bytes:
            raise VisfocusError(f"layer profile {name!r} is {size / 1e6:.1f} MB, over the app's "
                                f"{self.max_bytes / 1e6:g} MB limit for a profile; {PROFILE_HINT} or leave it empty")
        return path

    def load(self, name: Any) -> dict[str, Any]:
        """Profile ``name``, read (bounded) and checked; errors name the profile, not the server's file."""
        path = self.path(name)
        try:
            return load_profile(path)
        except VisfocusError:
            raise VisfocusError(f"layer profile {name!r} is not a usable layer profile (the operator can rewrite it "
                                f"with `visfocus profile-layers`); {PROFILE_HINT} or leave it empty") from None


def refusal(value: Any, profiles: ProfileFolder | None) -> VisfocusError:
    """The one error for a profile value that is not an offered name (the same text whatever the value names)."""
    if profiles is None:
        offered = "none: the app was started without --profiles DIR"
    else:
        offered = ", ".join(profiles.names()) or "none: the profile folder holds none"
    return VisfocusError(f"layer profile {shown(value)} is not one of the profiles this app offers ({offered}); "
                         f"{PROFILE_HINT} or leave it empty")


def profile_name(value: Any, profiles: ProfileFolder | None) -> str | None:
    """An offered profile name, or None for none (None or empty text); anything else is the ``refusal``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if profiles is None:
        raise refusal(value, profiles)
    profiles.path(value)  # an offered name whose file is inside the folder and small enough
    return value


def _short(bound: float | None) -> float | str | None:
    """A bound as messages show it (``0`` for 0.0, ``1e-06``), as the project's parsers do."""
    return f"{bound:g}" if isinstance(bound, float) else bound


def _bounds(spec: ParamSpec) -> str:
    """" ≥ 0", " in (0, 1]", … ("" when unbounded): the declaration's ``bounds_text`` with short numbers."""
    text = bounds_text(_short(spec.low), _short(spec.high), spec.low_open, spec.high_open)
    return f" {text}" if text else ""


def _number(spec: ParamSpec, value: Any, what: str) -> int | float | None:
    """A finite number within the parameter's declared bounds (``ParamSpec.contains``: closed or open); an ``int``
    one also takes an integral float (a page Number sends 4.0). None only where the declaration allows it."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if spec.optional or spec.default is None:
            return None
        raise VisfocusError(f"{what} needs a value (default {spec.default})")
    if spec.kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    kind = "an integer" if spec.kind == "int" else "a number"
    try:
        number = parse_float(value, what) if spec.kind == "float" else parse_int(value, what)
    except VisfocusError:
        typed = "an integer" if spec.kind == "int" else "a finite number"
        raise VisfocusError(f"{what} must be {typed}{_bounds(spec)}, got {shown(value)}") from None
    if not spec.contains(number):
        raise VisfocusError(f"{what} must be {kind}{_bounds(spec)}, got {_short(number)}")
    return number


def _layers(method: str, spec: ParamSpec, value: Any, what: str) -> Any:
    """Layer indices (``"1;2"``, ``"1,2"`` or a list), a fraction range of the depth (``"0.28:0.45"``), None or
    empty (all layers, where the declaration allows None); a ``text`` parameter also takes a word (DoLa's
    ``"high"``). Typed by the method's declaration (``typed_values``) and checked by it (``check_value``)."""
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, tuple))
                                                                           and not value):
        if spec.optional:
            return None
        raise VisfocusError(f"{what} needs a value (default {spec.default})")
    given = value.replace(",", ";") if isinstance(value, str) else value
    try:
        typed = typed_values(METHODS[method].Params, {spec.name: given}, method)[spec.name]
        check_value(spec, typed)
    except VisfocusError:
        if spec.kind == "text":
            raise VisfocusError(f"{what} must be a word or layer indices (e.g. 1;2;3), got {shown(value)}") from None
        raise VisfocusError(f"{what} must be layer indices (e.g. 1;2;3), a fraction range of the depth (e.g. "
                            f"0.28:0.45){' or empty for all layers' if spec.optional else ''}, got {shown(value)}"
                            ) from None
    return typed


def read_value(method: str, spec: ParamSpec, value: Any, profiles: ProfileFolder | None = None) -> Any:
    """One parameter value — from a page control or the API's JSON — typed as its spec says and within its bounds."""
    what = f"{method} parameter {spec.name}"
    if spec.name == PROFILE_PARAMETER and spec.kind == "str":
        return profile_name(value, profiles)
    if spec.kind == "bool":
        return parse_bool(value, what)
    if spec.choices:
        return parse_text(value, what, choices=spec.choices)
    if spec.kind in ("int", "float"):
        return _number(spec, value, what)
    if spec.kind in ("layers", "text"):
        return _layers(method, spec, value, what)
    if value is None or value == "":
        return None
    return parse_text(value, what)


def read_params(method: str, values: list[Any], profiles: ProfileFolder | None = None) -> dict[str, Any]:
    """Typed parameters from the page controls' values, in ``param_specs`` order (only those that differ from the
    defaults)."""
    out: dict[str, Any] = {}
    for spec, value in zip(param_specs(method), values, strict=True):
        typed = read_value(method, spec, value, profiles)
        if typed != spec.default:
            out[spec.name] = typed
    return out


def request_params(given: Any, profiles: ProfileFolder | None = None) -> dict[str, dict[str, Any]]:
    """The ``/compare`` API's params, ``{method: {parameter: value}}``, each value typed and bounded (``"true"`` and
    ``"0"`` for a bool mean what they say; ``"abc"`` for a number is an error)."""
    if not isinstance(given, Mapping) or not all(isinstance(v, Mapping) for v in given.values()):
        raise VisfocusError(f"params must be a JSON object of objects, e.g. {{\"adaptvis\": {{\"alpha_low\": 0.3}}}}, "
                            f"got {shown(given)}")
    out: dict[str, dict[str, Any]] = {}
    for method, values in given.items():
        if method not in METHODS:
            raise VisfocusError(f"params for unknown method {shown(method)}; registered: {', '.join(sorted(METHODS))}")
        specs = {spec.name: spec for spec in param_specs(method)}
        unknown = sorted(str(name) for name in values if name not in specs)
        if unknown:
            raise VisfocusError(f"method '{method}' has no parameter {', '.join(unknown)}; its parameters: "
                                f"{', '.join(specs) or 'none'}")
        out[method] = {name: read_value(method, specs[name], value, profiles) for name, value in values.items()}
    return out


def request_json(text: str | None, what: str, default: str) -> Any:
    """One JSON text of a ``/compare`` request (methods or params), bounded in length."""
    text = text or default
    if len(text) > MAX_PARAMS_CHARS:
        raise VisfocusError(f"{what} is {len(text)} characters; the app reads at most {MAX_PARAMS_CHARS}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise VisfocusError(f"{what} is not valid JSON ({err.msg} at character {err.pos})") from None
