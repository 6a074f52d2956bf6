"""Every registered method declares its paper, its equation and its fidelity (``Method.paper``, ``equation``,
``fidelity``), and what it declares points at real things: each ``Fidelity`` names a test that the suite defines, its
``option`` names parameters the method has (and builds it), and the equation is written in the symbols of the
method's parameters (their ``paper=`` names), so the generated method reference cannot drift from the code."""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

import visfocus as vf
from visfocus.interventions import Fidelity
from visfocus.interventions.base import param_specs, typed_method_args

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(vf.METHODS)


def _entries() -> list[tuple[str, int]]:
    return [(name, i) for name in NAMES for i in range(len(vf.METHODS[name].fidelity))]


@cache
def _defined(path: Path) -> frozenset[str]:
    """The test functions ``path`` defines: "name" at module level, "Class::name" in a class."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    found = {node.name for node in tree.body if isinstance(node, functions)}
    found |= {f"{node.name}::{item.name}" for node in tree.body if isinstance(node, ast.ClassDef)
              for item in node.body if isinstance(item, functions)}
    return frozenset(found)


def _option_keys(option: str) -> list[str]:
    pairs = [pair.strip() for pair in option.split(",")]
    assert all(re.fullmatch(r"\w+=[^=]+", pair) for pair in pairs), f"option {option!r} is not 'key=value,...'"
    return [pair.split("=", 1)[0] for pair in pairs]


@pytest.mark.parametrize("name", NAMES)
def test_every_method_declares_its_paper_equation_and_fidelity(name):
    cls = vf.METHODS[name]
    assert cls.paper.strip(), f"method '{name}' declares no paper"
    assert cls.equation.strip() and len(cls.equation.splitlines()) <= 3, \
        f"method '{name}' declares no equation of one to three lines"
    assert "\\" not in cls.equation and "$" not in cls.equation, f"method '{name}': the equation is not plain text"
    assert name == "baseline" or "https://" in cls.paper, f"method '{name}': the paper has no link"
    assert isinstance(cls.fidelity, tuple) and cls.fidelity, f"method '{name}' declares no fidelity"
    for entry in cls.fidelity:
        assert isinstance(entry, Fidelity)
        assert all(str(getattr(entry, f)).strip() for f in ("reference", "equal", "tolerance", "test"))


@pytest.mark.parametrize("name, index", _entries())
def test_each_fidelity_names_a_test_the_suite_defines(name, index):
    node = vf.METHODS[name].fidelity[index].test
    path, _, function = re.sub(r"\[.*\]$", "", node).partition("::")
    assert path.startswith("tests/") and path.endswith(".py") and function, f"{node!r} is not a pytest node id"
    assert (REPO / path).is_file(), f"{name}: {path} does not exist"
    assert function in _defined(REPO / path), f"{name}: {path} defines no test {function}"
    assert function.rpartition("::")[2].startswith("test"), f"{name}: {function} is not a test"


@pytest.mark.parametrize("name, index", _entries())
def test_each_option_names_parameters_the_method_takes(name, index):
    option = vf.METHODS[name].fidelity[index].option
    if option is None:
        return
    fields = {f.name for f in dataclasses.fields(vf.METHODS[name].Params)}
    unknown = sorted(set(_option_keys(option)) - fields)
    assert unknown == [], f"{name}: option {option!r} names no parameter {unknown}"
    vf.method(name, **typed_method_args(name, option))  # and the values are valid ones


@pytest.mark.parametrize("name", NAMES)
def test_the_equation_is_written_in_the_parameters_paper_symbols(name):
    equation = vf.METHODS[name].equation
    for spec in param_specs(name):
        if spec.paper:  # a whole symbol: "α" is not found in "α1", "T" is found in "ᾱ_T"
            assert re.search(rf"(?<![^\W_]){re.escape(spec.paper)}(?![^\W_])", equation), \
                f"{name}: the equation does not use {spec.paper} ({spec.name})"
