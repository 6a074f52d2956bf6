"""Remote code runs only when asked for with an explicit true: a model folder whose ``config.json`` names a Python file
(``auto_map``) that writes a marker when imported. Every way of saying no — on the command line, in a YAML config,
in lmms-eval's model args — leaves no marker; yes writes it, and says so on stderr."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import visfocus as vf
from visfocus.cli import main as cli_main
from visfocus.errors import VisfocusError
from visfocus.integrations.lmms.settings import parse_settings
from visfocus.values import FALSE_WORDS

REMOTE = '''
from pathlib import Path

Path({marker!r}).write_text("remote code ran")

from transformers import Qwen2VLConfig


class MarkerConfig(Qwen2VLConfig):
    pass
'''


@pytest.fixture
def remote_model(tiny_dirs, tmp_path):
    """A copy of a tiny model whose config asks for remote code, and the marker that code would write."""
    folder = tmp_path / "remote_model"
    shutil.copytree(tiny_dirs["qwen2_vl"], folder)
    marker = tmp_path / "marker.txt"
    (folder / "marker_config.py").write_text(REMOTE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "marker_config.MarkerConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def _eval(folder: Path, output: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(folder), "--tasks", "synthetic_spatial", "--limit", "1", "--max_new_tokens", "1",
            "--output_path", str(output), *extra]


@pytest.mark.parametrize("spelling", [*FALSE_WORDS, "False", " OFF ", "No"])
def test_no_spelling_of_false_runs_remote_code(remote_model, tmp_path, capsys, spelling):
    folder, marker = remote_model
    assert cli_main(_eval(folder, tmp_path, "--model_args", f"trust_remote_code={spelling}")) == 0
    assert not marker.exists()
    assert "trust_remote_code is on" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ['"false"', "false", "0", '"no"', "off"])
def test_a_yaml_false_runs_no_remote_code(remote_model, tmp_path, value):
    folder, marker = remote_model
    config = tmp_path / "run.yaml"
    config.write_text(f"model_args:\n  trust_remote_code: {value}\n")
    assert cli_main(_eval(folder, tmp_path, "--config", str(config))) == 0
    assert not marker.exists()


def test_anything_but_true_or_false_is_one_error_and_runs_nothing(remote_model, tmp_path, capsys):
    folder, marker = remote_model
    for spelling in ("maybe", "2", "tru", ""):
        assert cli_main(_eval(folder, tmp_path / spelling, "--model_args", f"trust_remote_code={spelling}")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"visfocus: error: model argument trust_remote_code must be true or false (true/1/yes/on or "
                       f"false/0/no/off), got {spelling!r}"]
    assert not marker.exists() and not list(tmp_path.rglob("results.json"))
    with pytest.raises(VisfocusError, match="trust_remote_code must be True or False, got 'false'"):
        vf.load(str(folder), trust_remote_code="false")  # the API takes a real bool only
    assert not marker.exists()
    assert parse_settings({"trust_remote_code": "0"}).model_args == {"trust_remote_code": False}
    with pytest.raises(VisfocusError, match="trust_remote_code must be true or false"):
        parse_settings({"trust_remote_code": "perhaps"})


def test_true_runs_the_remote_code_and_says_so(remote_model, tmp_path, capsys):
    folder, marker = remote_model
    cli_main(_eval(folder, tmp_path, "--model_args", "trust_remote_code=yes"))  # the remote class may not load
    assert marker.read_text() == "remote code ran"
    err = capsys.readouterr().err
    assert f"[visfocus] trust_remote_code is on: Python files shipped with '{folder}' (its auto_map) will run" in err
    assert "Traceback" not in err
