"""The run configuration is declared once (``visfocus.run.config``): the eval and sweep flags, the YAML keys, the
lmms-eval model args and the resume identity all come from its fields, under one name per concept."""

from __future__ import annotations

import argparse

import pytest

from visfocus.cli import build_parser
from visfocus.integrations.lmms.settings import LOAD_KEYS, OLD_ARGS, RUN_ARGS, parse_settings
from visfocus.models.loading import MODEL_ARGS
from visfocus.run.config import FIELDS, IDENTITY_FIELDS, SETTINGS, RunConfig, read_config_file
from visfocus.run.identity import COMMIT, WEIGHTS, run_identity
from visfocus.run.samples import upgraded


def _flags(command: str) -> dict[str, list[str]]:
    """{destination: its option strings} of ``visfocus <command>``."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a.option_strings for a in sub._actions if a.option_strings and a.dest != "help"}


def test_every_field_is_an_eval_flag_and_a_yaml_key(tmp_path):
    flags = _flags("eval")
    assert set(flags) - {"config"} == set(FIELDS)
    assert flags["share_prefix"] == ["--no_share_prefix", "--no_prefix_sharing"]  # the old name, still read
    assert flags["tasks"] == ["--tasks"] and flags["trace"] == ["--trace"]
    config = tmp_path / "run.yaml"
    for name in FIELDS:
        config.write_text(f"{name}: null\n")
        assert read_config_file(config) == {name: None}
    config.write_text("prefix_sharing: false\n")  # the old name of share_prefix
    assert RunConfig.from_values(read_config_file(config)).share_prefix is False


def test_the_sweep_takes_the_fields_declared_for_it_and_names_its_two_tasks():
    flags = _flags("sweep")
    own = {"dev_task", "eval_task", "method", "grid"}
    assert set(flags) - own == {name for name, s in SETTINGS.items() if "sweep" in s.commands}
    assert {"tasks", "method_args"}.isdisjoint(set(flags) - own)
    assert flags["dev_task"] == ["--dev_task", "--task"]  # --task: the old name
    args = build_parser().parse_args(["sweep", "--task", "a", "--eval_task", "b", "--method", "scaling_vis",
                                      "--no_share_prefix", "--limit", "3"])
    assert (args.dev_task, args.eval_task, args.share_prefix, args.limit) == ("a", "b", False, "3")


def test_flags_are_typed_by_the_fields_parsers_like_yaml():
    args = build_parser().parse_args(["eval", "--limit", "3", "--trace", "--log_samples", "--method", "baseline"])
    config = RunConfig.from_values({k: v for k in FIELDS if (v := getattr(args, k)) is not None})
    assert (config.limit, config.trace, config.log_samples, config.method) == (3, "heads", True, None)
    assert config.method_name == "baseline" and config.record()["method"] == "baseline"


def test_the_identity_is_the_fields_marked_so_plus_the_weights():
    assert set(IDENTITY_FIELDS) == {"model", "model_args", "method", "method_args", "prompt_style", "scorer",
                                    "max_new_tokens", "seed", "trace"}
    config = RunConfig(max_new_tokens=3)
    config.validate()
    identity = run_identity(config, None)
    assert set(identity) == {*IDENTITY_FIELDS, WEIGHTS} and COMMIT not in identity
    assert identity["method"] == "baseline" and identity["model"] == "organism"
    assert identity["model_args"] == MODEL_ARGS  # every model argument, defaults filled in


def test_lmms_model_args_are_the_fields_that_declare_one():
    declared = {s.lmms: name for name, s in SETTINGS.items() if s.lmms not in (None, "*")}
    assert RUN_ARGS == declared == {"pretrained": "model", "method": "method", "batch_size": "batch_size",
                                    "trace": "trace", "share_prefix": "share_prefix"}
    assert OLD_ARGS == {"prefix_sharing": "share_prefix"} and LOAD_KEYS == tuple(MODEL_ARGS)
    flattened = {name for name, s in SETTINGS.items() if s.lmms == "*"}
    assert flattened == {"model_args", "method_args"}
    s = parse_settings({"batch_size": "2", "trace": True, "dtype": "bf16"})
    assert (s.batch_size, s.trace, s.model_args) == (2, "heads", {"dtype": "bf16"})  # as `visfocus eval` types them


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_has_help_and_a_parser(name):
    s = SETTINGS[name]
    assert s.help and callable(s.parse) and s.flag in ("value", "switch", "negated", "optional")
    default = getattr(RunConfig(), name)
    assert s.parse(default, name) == default  # the default is what its parser makes of it


def test_sample_rows_of_older_versions_read_under_todays_names():
    old = {"id": "1", "correct": True, "passes": 4, "alpha_used": 0.5, "method_extras": {"branch": "smooth"}}
    assert upgraded(old) == {"id": "1", "correct": True, "forward_passes": 4,
                             "extras": {"branch": "smooth", "alpha_used": 0.5}}
    assert upgraded({"id": "2", "correct": False, "passes": 1, "alpha_used": None}) == \
        {"id": "2", "correct": False, "forward_passes": 1, "extras": {}}
    new = {"id": "3", "correct": True, "forward_passes": 2, "extras": {}}
    assert upgraded(new) is new
