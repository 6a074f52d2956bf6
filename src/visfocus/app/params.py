"""The method parameters an app request may set, read safely: every value typed through the project's parsers
(``visfocus.values``) and held within its method's own bounds (``ParamSpec.low``/``high``), from the page's controls
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
from visfocus.interventions.base import METHODS, ParamSpec, fraction_range, param_specs
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


def _layers(spec: ParamSpec, value: Any, what: str) -> Any:
    """Layer indices (``"1;2"``, ``"1,2"`` or a list), a fraction range of the depth (``"0.28:0.45"``), None (all);
    a ``text`` parameter also takes a word (DoLa's ``"high"``)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(parse_int(v, f"{what} (a layer index)") for v in value) or None
    if not isinstance(value, str):
        raise VisfocusError(f"{what} must be layer indices (e.g. 1;2;3), got {shown(value)}")
    items = [v.strip() for v in value.replace(",", ";").split(";") if v.strip()]
    if spec.kind == "layers" and len(items) == 1 and fraction_range(items[0]) is not None:
        return items[0]  # a fraction range of the depth, e.g. 0.28:0.45
    if spec.kind == "text" and items and not all(v.lstrip("+-").isdigit() for v in items):
        return value.strip()  # a word, e.g. DoLa's "high"
    if not all(v.lstrip("+-").isdigit() for v in items):
        raise VisfocusError(f"{what} must be layer indices (e.g. 1;2;3), a fraction range of the depth (e.g. "
                            f"0.28:0.45) or empty for all layers, got {shown(value)}")
    return tuple(parse_int(v, f"{what} (a layer index)") for v in items) or None


def _number(spec: ParamSpec, value: Any, what: str) -> int | float | None:
    """A finite number within the parameter's [low, high]; an ``int`` one also takes an integral float (a page
    Number sends 4.0). None only where the default is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if spec.default is None:
            return None
        raise VisfocusError(f"{what} needs a value (default {spec.default})")
    if spec.kind == "float":
        return parse_float(value, what, low=spec.low, high=spec.high)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return parse_int(value, what, low=spec.low, high=spec.high)


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
        return _layers(spec, value, what)
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
