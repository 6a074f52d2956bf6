"""What a method declares, as text, read from the registry: ``visfocus.listing``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from visfocus.interventions.base import METHODS, Method, Params, param, param_specs
from visfocus.listing import describe_method, describe_methods, extra_items, value_text


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_methods_description_names_everything_it_declares(name):
    cls = METHODS[name]
    text = "\n".join(describe_method(name))
    assert text.startswith(name)
    for spec in param_specs(name):
        assert f"parameter  {spec.label} = {spec.default!r}" in text
        assert spec.bounds_text() in text
    for key, meaning in cls.extras.items():
        assert f"reports    {key}: {meaning}" in text
    for key, caption in cls.app_outputs.items():
        assert f"app shows  {key}: {caption}" in text
    for site in cls.sites:
        assert site in text.splitlines()[len(param_specs(name)) + 1]
    if name != "baseline":
        assert all(f"bench      {label}" in text for label in cls.benchmark_points())
    order = "after its correction" if cls.processors_after_correction else "before its correction"
    assert (f"logits processors run {order}" in text) == ("logits" in cls.sites)
    assert name in describe_methods()


@dataclass(frozen=True)
class _ProbeParams(Params):
    strength: float = param(0.5, paper="γ", low=0.0, high=1.0, low_open=True)


class _Probe(Method):
    name = "probe_listing"
    Params = _ProbeParams
    sites = frozenset({"attention", "logits"})
    supports_sampling = False
    processors_after_correction = False
    extras = {"alpha_used": "the α applied", "grid": "a map"}
    app_outputs = {"grid": "the map over the image"}
    bench_points = {"probe_a": {"strength": 0.2}}


def test_a_newly_registered_method_is_described_from_its_declarations(monkeypatch):
    monkeypatch.setitem(METHODS, _Probe.name, _Probe)
    assert describe_method(_Probe.name) == [
        "probe_listing",
        "  parameter  strength (γ) = 0.5, in (0.0, 1.0]",
        "  acts on    attention, logits",
        "  shares the image prefix: yes · the caller's sampling applies: no · reads the answer options: no "
        "(at its defaults)",
        "  the model's own logits processors run before its correction (the warpers after)",
        "  reports    alpha_used: the α applied",
        "  reports    grid: a map",
        "  app shows  grid: the map over the image",
        "  bench      probe_a (strength=0.2)"]


def test_extra_items_list_the_declared_extras_first_and_leave_the_pictures_out(monkeypatch):
    monkeypatch.setitem(METHODS, _Probe.name, _Probe)
    extras = {"other": 1, "grid": [[0.0, 1.0]], "alpha_used": 0.5}
    assert extra_items(_Probe.name, extras) == [("alpha_used", "0.5"), ("other", "1")]
    assert extra_items(_Probe.name, extras, pictures=True) == [("alpha_used", "0.5"), ("grid", "[[0.0, 1.0]]"),
                                                               ("other", "1")]
    assert extra_items("no_such_method", {"a": "b"}) == [("a", "b")]


@pytest.mark.parametrize(("value", "text"), [
    (0.5, "0.5"), (1e-7, "1e-07"), (3, "3"), (True, "True"), (None, "None"), ("smooth", "smooth"),
    ([1, 2], "[1, 2]"), ({"a": 1}, '{"a": 1}'), ([[0.1] * 14] * 14, "[14×14]"), (list(range(40)), "[40 items]"),
    ("x" * 70, "x" * 59 + "…"),
])
def test_value_text_is_short(value, text):
    assert value_text(value) == text


def test_a_closed_pipe_ends_a_listing_quietly(monkeypatch, capsys):
    """`visfocus list models | head`: when the reader stops reading, the command stops without a traceback."""
    import io

    from visfocus.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise io.UnsupportedOperation("no file descriptor")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["list", "methods"]) == 0
