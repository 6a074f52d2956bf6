"""One parser per kind of value a user can give (flags, ``KEY=VALUE`` lists, YAML, lmms-eval model args, app
controls): booleans, integers, floats, text, lists and ``KEY=VALUE`` lists. Each either returns the typed value or
raises one ``VisfocusError`` that names what was being read. Pure: no I/O, no torch."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from visfocus.errors import VisfocusError

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(value: Any, what: str) -> bool:
    """``True``/``False``, the integers 1/0, or one of true/1/yes/on and false/0/no/off (any case, surrounding spaces
    ignored); anything else is an error. Nothing else counts as true: ``bool("0")`` is not how a flag is read."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise VisfocusError(f"{what} must be true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), "
                        f"got {shown(value)}")


def parse_int(value: Any, what: str, *, low: float | None = None, high: float | None = None) -> int:
    """An integer (or the text of one, e.g. ``"8"``) within [low, high]; booleans and fractions are errors."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit() and value.strip().isascii():
        number = int(value.strip())
    if number is None:
        raise VisfocusError(f"{what} must be an integer{_bound(low, high)}, got {shown(value)}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise VisfocusError(f"{what} must be an integer{_bound(low, high)}, got {number}")
    return number


def parse_float(value: Any, what: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite number (or the text of one) within [low, high]; booleans, nan and infinities are errors."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise VisfocusError(f"{what} must be a finite number{_bound(low, high)}, got {shown(value)}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise VisfocusError(f"{what} must be a number{_bound(low, high)}, got {number:g}")
    return number


def parse_text(value: Any, what: str, *, choices: tuple[str, ...] | None = None) -> str:
    """A string (a YAML number or list is not a name), one of ``choices`` when given."""
    if not isinstance(value, str):
        raise VisfocusError(f"{what} must be text, got {shown(value)}")
    if choices is not None and value not in choices:
        raise VisfocusError(f"{what} must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def parse_names(value: Any, what: str) -> list[str]:
    """A list of names: a YAML list of strings, or ``"a,b,c"`` (empty items dropped)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise VisfocusError(f"{what} must be a comma-separated text or a list of names, got {shown(value)}")


def parse_key_values(value: Any, what: str) -> dict[str, Any]:
    """``"dtype=bfloat16,device=cuda"`` → ``{"dtype": "bfloat16", "device": "cuda"}`` (values stay text: the field
    they set types them); a mapping (from YAML or the API) is taken as it is, with text keys. An item without ``=``, an
    empty key or a key given twice is an error."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        bad = [key for key in value if not isinstance(key, str) or not key.strip()]
        if bad:
            raise VisfocusError(f"{what}s must have text keys, got {shown(bad[0])}")
        return {key.strip(): item for key, item in value.items()}
    if not isinstance(value, str):
        raise VisfocusError(f"{what}s must be KEY=VALUE,... or a mapping, got {shown(value)}")
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise VisfocusError(f"cannot read {what} {shown(item)}: expected KEY=VALUE")
        if key.strip() in out:
            raise VisfocusError(f"{what} {key.strip()!r} is given twice")
        out[key.strip()] = text.strip()
    return out


def parse_typed(value: Any, hint: Any, what: str) -> Any:
    """``value`` as the type ``hint`` of a dataclass field says: ``bool``, ``int``, ``float``, ``str``, ``list[str]``,
    ``dict[str, Any]`` and their ``X | None`` forms (None, or the text none/null, for an optional field)."""
    kinds = set(typing.get_args(hint)) if _is_union(hint) else {hint}
    if type(None) in kinds:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        kinds.discard(type(None))
    (kind,) = kinds
    if kind is bool:
        return parse_bool(value, what)
    if kind is int:
        return parse_int(value, what)
    if kind is float:
        return parse_float(value, what)
    if kind is str:
        return parse_text(value, what)
    origin = typing.get_origin(kind)
    if origin is list:
        return parse_names(value, what)
    if origin is dict:
        return parse_key_values(value, what)
    raise TypeError(f"no parser for {hint!r}")  # a programming error, not a user's


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _bound(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" ≥ {_number(low)}"
    if low is None:
        return f" ≤ {_number(high)}"
    return f" in [{_number(low)}, {_number(high)}]"


def _number(value: float) -> str:
    """A bound as a message shows it: integers in full, other numbers short (0.5, 1e-06)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def shown(value: Any) -> str:
    """A value as an error message shows it: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
