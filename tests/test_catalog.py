"""Every image-text-to-text model type of the installed transformers, supported or why not: ``visfocus.models.catalog``
and ``visfocus list models``."""

from __future__ import annotations

import pytest

from visfocus.cli import main
from visfocus.models import ADAPTERS
from visfocus.models.catalog import (
    CROSS_ATTENTION,
    ENCODER_DECODER,
    NOT_ADAPTED,
    NOT_SUPPORTED,
    SUPPORTED,
    catalog,
    classify,
    image_text_to_text_model_types,
)

ENCODER_DECODER_TYPES = ("florence2", "vision-encoder-decoder", "pix2struct", "udop")


@pytest.fixture(scope="module")
def entries():
    return {entry.model_type: entry for entry in catalog()}


def test_every_mapping_entry_appears_exactly_once_sorted():
    listed = [entry.model_type for entry in catalog()]
    assert listed == sorted(listed) and len(listed) == len(set(listed))
    assert set(image_text_to_text_model_types()) <= set(listed)
    assert set(listed) == set(image_text_to_text_model_types()) | set(ADAPTERS)


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_every_registered_adapter_is_supported(model_type, entries):
    entry = entries[model_type]
    assert entry.status == SUPPORTED and entry.supported
    assert entry.family == ADAPTERS[model_type].family and entry.family in entry.reason


def test_only_registered_adapters_are_supported(entries):
    assert {t for t, e in entries.items() if e.supported} == set(ADAPTERS)
    assert all(e.status == NOT_SUPPORTED and e.reason for e in entries.values() if not e.supported)


def test_mllama_is_refused_as_cross_attention(entries):
    if "mllama" in entries:
        assert entries["mllama"].status == NOT_SUPPORTED and entries["mllama"].reason == CROSS_ATTENTION
    assert classify("mllama", adapters={}).reason == CROSS_ATTENTION


def test_an_encoder_decoder_type_is_refused_as_such(entries):
    present = [t for t in ENCODER_DECODER_TYPES if t in entries]
    if not present:
        pytest.skip("no known encoder-decoder type in this transformers' image-text-to-text mapping")
    for model_type in present:
        assert entries[model_type].reason == ENCODER_DECODER


def test_an_adapter_decides_even_for_a_type_outside_the_mapping():
    class _Probe:
        family = "probe_family"

    entries = {e.model_type: e for e in catalog(adapters={"probe_type": _Probe})}
    assert entries["probe_type"].supported and entries["probe_type"].family == "probe_family"


def test_a_type_whose_config_cannot_be_read_falls_back_to_not_adapted():
    entry = classify("no_such_model_type_xyz", adapters={})
    assert entry.status == NOT_SUPPORTED
    assert entry.reason.startswith(NOT_ADAPTED) and "architecture not checked" in entry.reason


def test_list_models_prints_supported_families_then_every_other_type(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("not supported ("))
    for family in {cls.family for cls in ADAPTERS.values()}:
        assert any(line.strip().startswith(family) for line in lines[:header])
    table = lines[header + 1:]
    assert table[0].split() == ["model_type", "status", "reason"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == set(image_text_to_text_model_types()) - set(ADAPTERS)
    assert all(NOT_SUPPORTED in row for row in rows.values())
    if "mllama" in rows:
        assert CROSS_ATTENTION in rows["mllama"]


def test_list_all_gives_a_count_not_the_whole_catalog(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "model families: " in out and "visfocus list models" in out
    assert "not supported (" not in out


def test_the_catalog_never_touches_the_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the catalog opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(catalog()) >= len(image_text_to_text_model_types())
