"""What `lmms-eval --model visfocus` makes of its `--model_args` and of a task's `gen_kwargs` (pure functions; these run
without lmms-eval)."""

from __future__ import annotations

import pytest

from visfocus.api import Sampling
from visfocus.errors import VisfocusError
from visfocus.integrations.lmms.decoding import DEFAULT_MAX_NEW_TOKENS, cut_at_stop, decoding
from visfocus.integrations.lmms.settings import parse_settings


def test_method_parameters_are_typed_by_the_method_and_the_rest_is_how_to_load():
    # as lmms-eval hands them over: numbers already typed, the rest text
    s = parse_settings({"pretrained": "Qwen/Qwen3-VL-2B-Instruct", "method": "adaptvis", "alpha_low": 0.5,
                        "threshold": 0.3, "layers": "8;9;10", "dtype": "bfloat16", "device": "cuda",
                        "batch_size": "8", "trace": "mean", "share_prefix": "false"})
    assert s.model == "Qwen/Qwen3-VL-2B-Instruct" and s.method_name == "adaptvis"
    assert s.method_args == {"alpha_low": 0.5, "threshold": 0.3, "layers": (8, 9, 10)}
    assert s.model_args == {"dtype": "bfloat16", "device": "cuda"}
    assert (s.batch_size, s.trace, s.share_prefix) == (8, "mean", False)
    assert parse_settings({"prefix_sharing": False}).share_prefix is False  # the old name still reads
    method = s.build_method()
    assert method.name == "adaptvis" and method.params.layers == (8, 9, 10) and method.params.alpha_low == 0.5


def test_defaults_are_the_organism_under_the_plain_model():
    s = parse_settings({})
    assert (s.model, s.method_name, s.method_args, s.model_args, s.batch_size) == (None, "baseline", {}, {}, 1)
    assert parse_settings({"pretrained": "organism", "method": "none"}).model is None
    assert parse_settings({"method": "vcd", "sample": True}).method_args == {"sample": True}


@pytest.mark.parametrize("args, message", [
    ({"method": "adaptvs"}, "unknown method 'adaptvs'; registered methods: adaptvis, baseline"),
    ({"method": "adaptvis", "alpha": 0.5}, "method 'adaptvis' has no parameter alpha; its parameters: alpha_high"),
    ({"method": "adaptvis", "alpha_low": -1}, "alpha_low must be ≥ 0.0, got -1"),
    ({"method": "scaling_vis", "alpha": "lots"}, "method argument alpha must be a finite number, got 'lots'"),
    ({"batch_size": "auto"}, "batch_size must be an integer ≥ 1, got 'auto'"),
    ({"trace": "all"}, "trace must be heads or mean, got 'all'"),
    ({"share_prefix": "maybe"}, "share_prefix must be true or false (true/1/yes/on or false/0/no/off), got "
                                  "'maybe'"),
    ({"trust_remote_code": "maybe"}, "model argument trust_remote_code must be true or false"),
])
def test_bad_model_args_are_one_clear_error(args, message):
    with pytest.raises(VisfocusError) as err:
        parse_settings(args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gen_kwargs_greedy_unless_the_task_asks_to_sample():
    greedy = decoding({"max_new_tokens": 16, "temperature": 0, "do_sample": False, "until": ["\n\n"]})
    assert (greedy.max_new_tokens, greedy.until, greedy.sampling) == (16, ("\n\n",), None)
    assert decoding(None).max_new_tokens == DEFAULT_MAX_NEW_TOKENS and decoding(None).sampling is None
    # lmms-eval's own models: a temperature above 0 samples unless do_sample says otherwise
    assert decoding({"temperature": 0.7, "top_p": 0.9}).sampling == Sampling(temperature=0.7, top_p=0.9)
    assert decoding({"temperature": 0.7, "do_sample": False}).sampling is None
    assert decoding({"do_sample": True}).sampling == Sampling(temperature=1.0)
    assert decoding({"do_sample": True, "top_k": 20}).sampling == Sampling(temperature=1.0, top_k=20)
    assert decoding({"until": "Q:", "image_aspect_ratio": "pad"}).until == ("Q:",)
    assert decoding({"image_aspect_ratio": "pad"}).ignored == ("image_aspect_ratio",)


@pytest.mark.parametrize("gen_kwargs, message", [
    ({"num_beams": 3}, "num_beams=3: visfocus methods decode one beam"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer ≥ 1, got 0"),
    ({"temperature": "warm"}, "gen_kwargs temperature='warm' is not a number"),
    ({"do_sample": True, "top_p": 1.5}, "sampling top_p must be in (0, 1], got 1.5"),
])
def test_gen_kwargs_visfocus_cannot_honour_are_refused(gen_kwargs, message):
    with pytest.raises(VisfocusError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        decoding(gen_kwargs)


def test_the_answer_stops_at_the_first_stop_string():
    assert cut_at_stop("left\n\nBecause the cup", ("\n\n",)) == "left"
    assert cut_at_stop("yes. Q: next", ("\n\n", "Q:")) == "yes. "
    assert cut_at_stop("on", ()) == "on"


def _lmms_typed(value: str):
    """A model arg value as lmms-eval hands it over (its ``handle_arg_string``)."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.isnumeric():
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def test_every_lmms_eval_command_in_the_docs_has_valid_model_args():
    """The lmms-eval commands the README and the site show (``--model visfocus --model_args ...``) give settings the
    plugin accepts."""
    import shlex
    from pathlib import Path

    from docsgen.blocks import blocks

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(b.code for p in [root / "README.md", *(root / "docs").rglob("*.md")] for b in blocks(p.read_text())
                     if b.language == "bash")
    found = 0
    for line in text.replace("\\\n", " ").splitlines():
        argv = shlex.split(line.replace("$(visfocus lmms-tasks-path)", "TASKS"), comments=True) \
            if "--model visfocus" in line else []
        if "--model_args" in argv:
            pairs = (item.split("=", 1) for item in argv[argv.index("--model_args") + 1].split(","))
            parse_settings({key: _lmms_typed(value) for key, value in pairs})
            found += 1
    assert found >= 2


def test_the_cli_prints_where_the_task_files_are(capsys):
    from pathlib import Path

    from visfocus.cli import main

    assert main(["lmms-tasks-path"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "vsr_zeroshot_test.yaml").is_file() and (folder / "whatsup_vg_two_dev.yaml").is_file()
