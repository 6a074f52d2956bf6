"""Property-based fuzzing (Hypothesis) of every parser a user's text reaches: ``KEY=VALUE`` lists, model args, each
registered method's arguments and grids, lmms-eval's model args, and YAML configs. Whatever the input, the only
exception is the project's own ``VisfocusError`` (one clear line), never a ``TypeError``/``KeyError``/… traceback."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visfocus.errors import VisfocusError
from visfocus.integrations.lmms.settings import parse_settings
from visfocus.interventions import METHODS, method, typed_method_args
from visfocus.models.loading import MODEL_ARGS, parse_model_args
from visfocus.run.config import FIELDS, RunConfig, read_config_file
from visfocus.sweep import parse_grid
from visfocus.values import parse_bool, parse_key_values

PARAMETER_NAMES = sorted({f.name for cls in METHODS.values() for f in dataclasses.fields(cls.Params)})
WORDS = ["true", "false", "yes", "off", "none", "null", "nan", "inf", "-1", "0", "0.5", "1e309", "2", "1;2", "0;99",
         "0.28:0.45", "0.5:0.2", "high", "heads", "a", ""]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# text made of the pieces these parsers split on, the words they recognise, and anything else
pieces = st.one_of(st.sampled_from([*PARAMETER_NAMES, *MODEL_ARGS, *FIELDS, *WORDS, "=", ",", ";", ":", "|", " "]),
                   st.text(max_size=6))
texts = st.lists(pieces, max_size=12).map("".join)
key_values = st.lists(st.tuples(st.sampled_from([*PARAMETER_NAMES, *MODEL_ARGS, "x"]), st.sampled_from(WORDS)),
                      max_size=5).map(lambda items: ",".join(f"{k}={v}" for k, v in items))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=10), st.sampled_from(WORDS))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def _only_our_error(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except VisfocusError as err:
        assert "\n" not in str(err)
        return err


@FUZZ
@given(value=values)
def test_booleans_are_true_false_or_our_error(value):
    result = _only_our_error(parse_bool, value, "flag")
    assert isinstance(result, (bool, VisfocusError))
    if isinstance(value, str) and value.strip().lower() in ("0", "no", "off", "false"):
        assert result is False


@FUZZ
@given(text=st.one_of(texts, key_values))
def test_key_values_and_model_args(text):
    _only_our_error(parse_key_values, text, "argument")
    _only_our_error(parse_model_args, text)


@pytest.mark.parametrize("name", sorted(METHODS))
@FUZZ
@given(text=st.one_of(texts, key_values))
def test_method_args_and_grids_of_every_method(name, text):
    typed = _only_our_error(typed_method_args, name, text)
    if isinstance(typed, dict):
        _only_our_error(lambda: method(name, **typed))
    grid = _only_our_error(parse_grid, name, text.replace(";", "|"))
    if isinstance(grid, dict):
        for candidates in grid.values():
            assert isinstance(candidates, list)


@FUZZ
@given(args=st.dictionaries(st.sampled_from([*PARAMETER_NAMES, *MODEL_ARGS, "method", "batch_size", "trace", "x",
                                              "share_prefix", "prefix_sharing", "pretrained"]), scalars, max_size=6),
       name=st.sampled_from(sorted(METHODS)))
def test_lmms_model_args(args, name):
    _only_our_error(parse_settings, {"method": name, **args})


@FUZZ
@given(data=st.one_of(values, st.dictionaries(st.sampled_from([*FIELDS, "x"]), values, max_size=6)))
def test_yaml_configs(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("yaml") / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    config = _only_our_error(read_config_file, path)
    if isinstance(config, dict):
        _only_our_error(RunConfig.from_values, config)


@FUZZ
@given(text=st.text(max_size=80))
def test_any_text_as_a_yaml_config(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "run.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    config = _only_our_error(read_config_file, path)
    if isinstance(config, dict):
        _only_our_error(RunConfig.from_values, config)
