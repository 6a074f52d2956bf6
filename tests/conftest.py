"""Shared fixtures: tiny random-weight models of every family, built once per session into a temp folder."""

from __future__ import annotations

import pytest

import visfocus as vf
from visfocus.testing import FAMILIES, build_tiny, make_image


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_vlms(tiny_dirs):
    return {family: vf.load(str(path)) for family, path in tiny_dirs.items()}


@pytest.fixture
def image():
    return make_image(224, 160, seed=1)


@pytest.fixture
def other_image():
    return make_image(160, 256, seed=2)


@pytest.fixture
def restore_generation_configs(tiny_vlms):
    """Restores every tiny model's generation config after a test sets logits processors in it."""
    saved = {family: vlm.model.generation_config.to_dict() for family, vlm in tiny_vlms.items()}
    yield
    for family, vlm in tiny_vlms.items():
        vlm.model.generation_config = type(vlm.model.generation_config).from_dict(saved[family])
