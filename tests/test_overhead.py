"""The overhead benchmark's rows come from the method registry: the plain rows, every registered method's
``benchmark_points`` (the baseline is the plain rows) and eager attention; checked without building a model."""

from __future__ import annotations

import pytest

import visfocus as vf
from visfocus import overhead
from visfocus.cli import main
from visfocus.interventions.base import METHODS, Method


def test_every_registered_method_but_the_baseline_adds_its_benchmark_points_between_the_plain_rows_and_eager():
    table = overhead.configs()
    rows = list(table)
    assert rows[:3] == ["plain_sdpa", "visfocus_no_edit", "trace"] and rows[-1] == "eager"
    assert table["trace"].trace and table["plain_sdpa"].attention == "sdpa" and table["eager"].attention == "eager"
    expected = {label: (name, params) for name in METHODS if name != "baseline"
                for label, params in METHODS[name].benchmark_points().items()}
    assert {row: config.method for row, config in table.items() if config.method is not None} == expected
    assert all(table[row].attention == "visfocus" and not table[row].trace for row in expected)
    assert "baseline" not in table


@pytest.mark.parametrize("row", [row for row, config in overhead.configs().items() if config.method is not None])
def test_every_method_row_builds_its_method(row):
    name, params = overhead.configs()[row].method
    assert vf.method(name, **params).name == name


class _Timed(Method):
    name = "probe_timed"
    sites = frozenset({"attention"})
    bench_points = {"probe_soft": {"strength": 0.1}, "probe_hard": {}}


class _Clash(Method):
    name = "probe_clash"
    bench_points = {"trace": {}}


def test_a_newly_registered_method_gets_its_rows_and_a_label_used_twice_is_refused(monkeypatch):
    monkeypatch.setitem(METHODS, _Timed.name, _Timed)
    table = overhead.configs()
    assert table["probe_soft"].method == ("probe_timed", {"strength": 0.1})
    assert table["probe_hard"].method == ("probe_timed", {})
    monkeypatch.setitem(METHODS, _Clash.name, _Clash)
    with pytest.raises(RuntimeError, match="benchmark row 'trace' of method 'probe_clash'"):
        overhead.configs()


def test_the_long_sequence_comparison_runs_the_plain_rows_and_the_methods_that_edit_attention(monkeypatch):
    monkeypatch.setitem(METHODS, _Timed.name, _Timed)
    table = overhead.configs()
    chosen = list(table)
    long = overhead.long_configs(chosen, table)
    assert {"plain_sdpa", "trace", "eager", "probe_soft", "probe_hard"} <= set(long)
    assert "visfocus_no_edit" not in long
    for row in long:
        method = table[row].method
        assert method is None or "attention" in METHODS[method[0]].sites
    assert overhead.long_configs(["plain_sdpa", "probe_soft"], table) == ["plain_sdpa", "probe_soft"]


def test_an_unknown_row_is_one_error_naming_every_row(capsys):
    assert main(["bench", "--configs", "plain_sdpa,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visfocus: error: unknown configs ['nope']")
    assert all(row in err for row in overhead.configs())
