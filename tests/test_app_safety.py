"""The app is safe to expose, checked without a server: the login (``--auth``) and the warning for an app others can
reach without one, the launch limits, every numeric parameter held within its method's own bounds (page controls and
``/compare`` JSON alike, for every registered method), VEA's layer profile only ever a name from the operator's
folder (one error, whatever a refused value names), and exports deleted once old."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import visfocus as vf
from visfocus.app.compute import Explorer
from visfocus.app.exports import EXPORT_PREFIX, ExportFolder, stale_exports
from visfocus.app.launch import (
    PASSWORD_VARIABLE,
    exposure_warning,
    is_local,
    parse_auth,
    plan_launch,
)
from visfocus.app.params import (
    MAX_PARAMS_CHARS,
    PROFILE_PARAMETER,
    ProfileFolder,
    read_params,
    read_value,
    request_json,
    request_params,
)
from visfocus.cli import build_parser, main
from visfocus.errors import VisfocusError
from visfocus.interventions.base import ParamSpec, param_specs

QUESTION = "Is the cup on the table? Answer with yes or no."
REFUSED = "is not one of the profiles this app offers"
# words that would tell a caller what exists on the server
ORACLE_WORDS = ("not found", "json", "exist", "no such", "directory", "permission", "is not a file")


# --- the login -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "environ", "expected"), [
    ("alice:s3cret", {}, ("alice", "s3cret")),
    ("alice:pass:with:colons", {}, ("alice", "pass:with:colons")),  # the password is all after the first ':'
    ("alice:s3cret", {PASSWORD_VARIABLE: "other"}, ("alice", "s3cret")),  # given on the command line: that one
    ("alice", {PASSWORD_VARIABLE: "from-env"}, ("alice", "from-env")),
    (None, {PASSWORD_VARIABLE: "from-env"}, None),  # no --auth: no login, whatever the environment holds
])
def test_auth_is_user_and_password_or_user_with_the_password_in_the_environment(given, environ, expected):
    assert parse_auth(given, environ) == expected


@pytest.mark.parametrize(("given", "environ", "message"), [
    ("alice", {}, f"--auth alice has no password in the environment variable {PASSWORD_VARIABLE}"),
    ("alice", {PASSWORD_VARIABLE: ""}, f"--auth alice has no password in the environment variable {PASSWORD_VARIABLE}"),
    ("alice:", {}, "--auth alice has no password after the ':'"),
    (":hunter2", {}, "--auth needs a user name without spaces before the ':'"),
    ("", {}, "--auth needs a user name"),
    ("al ice:hunter2", {}, "--auth needs a user name without spaces"),
])
def test_a_malformed_auth_is_one_error_line_that_never_shows_the_password(given, environ, message):
    with pytest.raises(VisfocusError) as caught:
        parse_auth(given, environ)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text
    assert "USER:PASS" in text and PASSWORD_VARIABLE in text  # what to do instead
    assert "hunter2" not in text


def test_the_cli_stops_on_a_malformed_auth_with_one_line_before_loading_anything(capsys, monkeypatch):
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    assert main(["app", "--auth", ":hunter2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visfocus: error: --auth needs a user name") and err.count("\n") == 1
    assert "hunter2" not in err


# --- who can reach the app -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "local"), [
    ("127.0.0.1", True), ("localhost", True), ("LOCALHOST", True), ("::1", True), ("[::1]", True),
    ("127.0.0.2", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("my-server.example", False),
])
def test_only_loopback_addresses_are_local(host, local):
    assert is_local(host) is local


@pytest.mark.parametrize(("host", "share", "reach"), [
    ("0.0.0.0", False, "anyone who can reach this machine on port 7860 (--host 0.0.0.0)"),
    ("192.168.1.20", False, "anyone who can reach this machine on port 7860 (--host 192.168.1.20)"),
    ("127.0.0.1", True, "anyone who has its public gradio.live link (--share)"),
])
def test_an_app_others_can_reach_without_a_login_gets_a_warning(host, share, reach):
    warning = exposure_warning(host, 7860, share, None)
    assert warning.startswith("the app has no login and ") and reach in warning
    assert "--auth USER:PASS" in warning and PASSWORD_VARIABLE in warning  # how to add a login
    assert exposure_warning(host, 7860, share, ("alice", "s3cret")) is None  # with a login: no warning


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_local_app_gets_no_warning(host):
    assert exposure_warning(host, 7860, False, None) is None


def _run_until_the_model_loads(argv: list[str], monkeypatch) -> int:
    """``visfocus app ARGV`` up to the model load (stubbed to stop there): its exit code."""
    pytest.importorskip("gradio")

    def stop(*_args, **_kwargs):
        raise VisfocusError("stopped before loading the model")

    monkeypatch.setattr("visfocus.api.load", stop)
    return main(["app", *argv])


@pytest.mark.parametrize(("argv", "warned"), [
    (["--host", "0.0.0.0"], True),
    (["--share"], True),
    (["--host", "0.0.0.0", "--auth", "alice:s3cret"], False),
    (["--share", "--auth", "alice:s3cret"], False),
    ([], False),
    (["--host", "localhost"], False),
])
def test_the_cli_prints_the_exposure_warning_on_stderr(argv, warned, monkeypatch, capsys):
    code = _run_until_the_model_loads(argv, monkeypatch)
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[-1] == "visfocus: error: stopped before loading the model"
    warnings = [line for line in err if line.startswith("[visfocus] warning: the app has no login")]
    assert len(warnings) == (1 if warned else 0), err


def _plan(*argv: str, environ: dict | None = None):
    return plan_launch(build_parser().parse_args(["app", *argv]), environ or {})


def test_the_launch_plan_carries_the_login_and_the_limits_with_their_defaults():
    plan = _plan()
    kwargs = plan.launch_kwargs()
    assert kwargs == {"server_name": "127.0.0.1", "server_port": 7860, "share": False, "auth": None,
                      "max_file_size": 20 * 1024 * 1024, "state_session_capacity": 100, "show_error": True}
    assert plan.max_queue == 16 and plan.session_ttl_s == 3600 and plan.export_ttl_s == 1800
    assert plan.delete_cache() == (60, 1800) and plan.warning is None
    exposed = _plan("--host", "0.0.0.0", "--auth", "alice", "--max_upload_mb", "5", "--max_queue", "4",
                    "--max_sessions", "10", "--session_ttl_min", "2", "--export_ttl_min", "0.5",
                    environ={PASSWORD_VARIABLE: "s3cret"})
    kwargs = exposed.launch_kwargs()
    assert kwargs["auth"] == ("alice", "s3cret") and kwargs["max_file_size"] == 5 * 1024 * 1024
    assert kwargs["state_session_capacity"] == 10 and kwargs["server_name"] == "0.0.0.0"
    assert kwargs["show_error"] is False  # internal error texts stay on the server when others can reach it
    assert exposed.max_queue == 4 and exposed.session_ttl_s == 120 and exposed.delete_cache() == (60, 30)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--max_queue", "0", "--max_queue must be an integer ≥ 1, got 0"),
    ("--max_sessions", "-1", "--max_sessions must be an integer ≥ 1, got -1"),
    ("--max_upload_mb", "0", "--max_upload_mb must be a number ≥ 0.001, got 0"),
    ("--export_ttl_min", "0", "--export_ttl_min must be a number ≥ 0.1, got 0"),
])
def test_a_limit_that_bounds_nothing_is_refused(flag, value, message):
    with pytest.raises(VisfocusError, match=message):
        _plan(flag, value)


# --- numbers within each method's own bounds ---------------------------------------------------------------------
def _bounded_cases() -> list[tuple[str, ParamSpec, str]]:
    """(method, spec, "low" or "high") for every numeric parameter bound of every registered method."""
    return [(name, spec, side) for name in sorted(vf.METHODS) for spec in param_specs(name)
            if spec.kind in ("int", "float") for side in ("low", "high") if getattr(spec, side) is not None]


BOUNDED = _bounded_cases()


def _beyond(spec: ParamSpec, side: str) -> int | float:
    step = 1 if spec.kind == "int" else 0.5
    return getattr(spec, side) - step if side == "low" else getattr(spec, side) + step


def _open(spec: ParamSpec, side: str) -> bool:
    return spec.low_open if side == "low" else spec.high_open


def _inside(spec: ParamSpec, side: str) -> int | float:
    """A value just inside an open bound."""
    step = 1 if spec.kind == "int" else 0.01
    return getattr(spec, side) + step if side == "low" else getattr(spec, side) - step


def _page_values(method: str, **changed) -> list:
    return [changed.get(spec.name, spec.default) for spec in param_specs(method)]


def _bounds_message(spec: ParamSpec) -> str:
    """The bounds as the refusal states them: "≥ 0", "in [0, 999]", "in (0, 1]", …"""
    def shown(v):
        return str(v) if isinstance(v, int) else f"{v:g}"

    if spec.low is not None and spec.high is not None:
        return (f"in {'(' if spec.low_open else '['}{shown(spec.low)}, {shown(spec.high)}"
                f"{')' if spec.high_open else ']'}")
    if spec.low is not None:
        return f"{'>' if spec.low_open else '≥'} {shown(spec.low)}"
    return f"{'<' if spec.high_open else '≤'} {shown(spec.high)}"


def test_there_are_bounded_numeric_parameters_to_check():
    assert BOUNDED and any(side == "high" for _, _, side in BOUNDED)
    assert any(spec.kind == "int" for _, spec, _ in BOUNDED) and any(_open(spec, side) for _, spec, side in BOUNDED)


@pytest.mark.parametrize(("method", "spec", "side"), BOUNDED, ids=lambda v: getattr(v, "name", v))
def test_a_value_beyond_a_bound_is_refused_from_the_page_and_the_api(method, spec, side):
    values = [_beyond(spec, side), *([getattr(spec, side)] if _open(spec, side) else [])]  # an open bound itself too
    kind = "an integer" if spec.kind == "int" else "a number"
    for value in values:
        shown = str(value) if isinstance(value, int) else f"{value:g}"
        expected = f"{method} parameter {spec.name} must be {kind} {_bounds_message(spec)}, got {shown}"
        with pytest.raises(VisfocusError) as page:
            read_params(method, _page_values(method, **{spec.name: value}))
        with pytest.raises(VisfocusError) as api:
            request_params({method: {spec.name: value}})
        with pytest.raises(VisfocusError) as text:
            request_params({method: {spec.name: str(value)}})  # a number as text is read, then bounded
        assert str(page.value) == str(api.value) == str(text.value) == expected


@pytest.mark.parametrize(("method", "spec", "side"), BOUNDED, ids=lambda v: getattr(v, "name", v))
def test_the_app_reads_what_the_method_accepts_at_a_bound_and_the_method_refuses_what_the_app_refuses(method, spec,
                                                                                                   side):
    """The app's bounds are the declaration's (``ParamSpec.contains``): a closed bound itself is read, an open one
    is not and neither does the method take it; what the app reads, the method builds with (CLVS's β > 1 is valid:
    no cap)."""
    bound = getattr(spec, side)
    accepted = _inside(spec, side) if _open(spec, side) else bound
    assert request_params({method: {spec.name: accepted}}) == {method: {spec.name: accepted}}
    vf.method(method, **{spec.name: accepted})
    for refused in (_beyond(spec, side), *([bound] if _open(spec, side) else [])):
        with pytest.raises(VisfocusError, match=spec.name):
            vf.method(method, **{spec.name: refused})


def test_clvs_takes_the_additive_beta_above_one_and_the_survey_delta_above_one():
    assert request_params({"clvs": {"smoothing": 1.5}}) == {"clvs": {"smoothing": 1.5}}
    vf.method("clvs", smoothing=1.5)
    assert request_params({"clvs": {"uncertainty_threshold": 3.0, "variant": "survey"}})["clvs"] == {
        "uncertainty_threshold": 3.0, "variant": "survey"}
    vf.method("clvs", uncertainty_threshold=3.0, variant="survey")


@pytest.mark.parametrize(("given", "typed"), [
    ({"vcd": {"sample": "true", "seed": "7", "noise_step": 10.0}},
     {"vcd": {"sample": True, "seed": 7, "noise_step": 10}}),
    ({"vcd": {"sample": "0", "alpha": "0.5"}}, {"vcd": {"sample": False, "alpha": 0.5}}),
    ({"scaling_vis": {"layers": [0, 1], "decode": "off"}}, {"scaling_vis": {"layers": (0, 1), "decode": False}}),
    ({"scaling_vis": {"layers": "0;1"}}, {"scaling_vis": {"layers": (0, 1)}}),
    ({"scaling_vis": {"layers": "0.25:0.75"}}, {"scaling_vis": {"layers": "0.25:0.75"}}),
    ({"dola": {"layers": "low"}}, {"dola": {"layers": "low"}}),
    ({"adaptvis": {"confidence_decimals": None, "confidence": "max_logit"}},
     {"adaptvis": {"confidence_decimals": None, "confidence": "max_logit"}}),
])
def test_api_params_are_typed_through_the_projects_parsers(given, typed):
    out = request_params(given)
    assert out == typed
    for method, values in out.items():
        for name, value in values.items():
            assert type(value) is type(typed[method][name]), name


@pytest.mark.parametrize(("given", "message"), [
    ({"scaling_vis": {"alpha": "abc"}}, "scaling_vis parameter alpha must be a finite number ≥ 0, got 'abc'"),
    ({"scaling_vis": {"alpha": math.nan}}, "scaling_vis parameter alpha must be a finite number ≥ 0, got nan"),
    ({"scaling_vis": {"alpha": True}}, "scaling_vis parameter alpha must be a finite number ≥ 0, got True"),
    ({"scaling_vis": {"alpha": None}}, "scaling_vis parameter alpha needs a value (default 0.5)"),
    ({"vcd": {"noise_step": 2.5}}, "vcd parameter noise_step must be an integer in [0, 999], got 2.5"),
    ({"vcd": {"sample": "maybe"}}, "vcd parameter sample must be true or false"),
    ({"adaptvis": {"confidence": "loud"}}, "adaptvis parameter confidence must be one of max_prob, option_prob"),
    ({"scaling_vis": {"layers": "one"}}, "scaling_vis parameter layers must be layer indices"),
    ({"scaling_vis": {"strength": 1}}, "method 'scaling_vis' has no parameter strength; its parameters: alpha"),
    ({"nope": {}}, "params for unknown method 'nope'"),
    ({"scaling_vis": 2}, "params must be a JSON object of objects"),
    ([], "params must be a JSON object of objects"),
])
def test_bad_api_params_are_one_clear_error(given, message):
    with pytest.raises(VisfocusError) as caught:
        request_params(given)
    assert str(caught.value).startswith(message)


def test_request_json_is_bounded_in_length_and_says_what_is_wrong():
    assert request_json(None, "params", "{}") == {} and request_json('{"a": {}}', "params", "{}") == {"a": {}}
    with pytest.raises(VisfocusError, match=r"params is not valid JSON \(Expecting value at character 0\)"):
        request_json("nope", "params", "{}")
    with pytest.raises(VisfocusError, match=f"params is {MAX_PARAMS_CHARS + 1} characters; the app reads at most"):
        request_json(" " * (MAX_PARAMS_CHARS + 1), "params", "{}")


def test_the_page_refuses_an_overlong_question(tiny_vlms, image):
    ui = pytest.importorskip("visfocus.app.ui")
    explorer = Explorer(tiny_vlms["qwen3_vl"])
    with pytest.raises(VisfocusError, match="the question is 2001 characters; the app takes at most 2000"):
        ui.compare(explorer, image, "?" * 2001, "", "", ["baseline"], {})
    assert explorer.forward_calls == 0


# --- layer profiles: names from the operator's folder only -------------------------------------------------------
def _profile(layers: list[int], depth: int = 2) -> str:
    return json.dumps({"layers": layers, "auroc_per_layer": [0.5 + 0.1 * i for i in range(depth)]})


@pytest.fixture
def server(tmp_path) -> Path:
    """A server: a secret outside the profile folder, the folder with two profiles, a broken one, an oversized one
    and a link that leads out of it."""
    (tmp_path / "secret.json").write_text(_profile([0]))
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "late.json").write_text(_profile([1]))
    (folder / "deep.json").write_text(_profile([3], depth=32))
    (folder / "broken.json").write_text("{ not a profile")
    (folder / "huge.json").write_text(_profile([1]) + " " * 1_000_001)
    (folder / "notes.txt").write_text("not a profile")
    (folder / "escape.json").symlink_to(tmp_path / "secret.json")
    return tmp_path


@pytest.fixture
def profiles(server) -> ProfileFolder:
    return ProfileFolder.open(server / "profiles")


# the registered methods that take a layer profile (a parameter named PROFILE_PARAMETER)
PROFILED = [name for name in sorted(vf.METHODS) if any(s.name == PROFILE_PARAMETER for s in param_specs(name))]


def _profile_spec(method: str) -> ParamSpec:
    return next(spec for spec in param_specs(method) if spec.name == PROFILE_PARAMETER)


def test_a_method_takes_a_layer_profile():
    assert "vea" in PROFILED


@pytest.mark.parametrize("method", PROFILED)
def test_the_folder_offers_its_json_files_by_stem(profiles, method):
    spec = _profile_spec(method)
    assert profiles.names() == ["broken", "deep", "huge", "late"]  # not notes.txt, not the link that leads out
    assert read_value(method, spec, "late", profiles) == "late"
    assert read_value(method, spec, "", profiles) is None and read_value(method, spec, None) is None
    assert read_params(method, _page_values(method, profile="late"), profiles) == {"profile": "late"}
    assert request_params({method: {"profile": "late"}}, profiles) == {method: {"profile": "late"}}


def _refused_values(server: Path) -> list:
    return ["/etc/shadow", "/etc/no-such-file", "../secret", "../secret.json", "late.json", "missing",
            str(server / "secret.json"), str(server / "profiles" / "late.json"), str(server / "nothing.json"),
            "escape", 5, ["late"]]


def _shape(message: str, value) -> str:
    """The error with the refused value (its repr, long ones cut) cut out: what every refusal must share."""
    head, sep, tail = message.partition(" is not one of the profiles")
    assert sep and head.startswith("layer profile ") and repr(value).startswith(head[14:].removesuffix("...")), message
    return f"layer profile <value>{sep}{tail}"


@pytest.mark.parametrize("method", PROFILED)
def test_every_value_but_an_offered_name_gets_the_same_error_that_reveals_nothing(server, profiles, method):
    shapes = set()
    for value in _refused_values(server):
        for read in (lambda v: read_value(method, _profile_spec(method), v, profiles),
                     lambda v: request_params({method: {"profile": v}}, profiles),
                     lambda v: profiles.load(v)):
            with pytest.raises(VisfocusError) as caught:
                read(value)
            text = str(caught.value)
            shape = _shape(text, value)
            assert REFUSED in shape and not any(word in shape.lower() for word in ORACLE_WORDS), text
            assert str(server) not in shape
            shapes.add(shape)
    assert shapes == {"layer profile <value> is not one of the profiles this app offers (broken, deep, huge, late); "
                      "pick one by name from the app's profile list or leave it empty"}


@pytest.mark.parametrize("method", PROFILED)
def test_without_a_profile_folder_every_profile_value_gets_that_error(server, method):
    shapes = set()
    for value in [*_refused_values(server), "late"]:
        with pytest.raises(VisfocusError) as caught:
            request_params({method: {"profile": value}})
        shape = _shape(str(caught.value), value)
        assert not any(word in shape.lower() for word in ORACLE_WORDS), shape
        shapes.add(shape)
    assert shapes == {"layer profile <value> is not one of the profiles this app offers (none: the app was started "
                      "without --profiles DIR); pick one by name from the app's profile list or leave it empty"}


def test_a_large_or_broken_profile_in_the_folder_is_refused_by_name(profiles):
    with pytest.raises(VisfocusError, match=r"layer profile 'huge' is 1\.0 MB, over the app's 1 MB limit"):
        profiles.load("huge")
    with pytest.raises(VisfocusError) as caught:
        profiles.load("broken")
    assert str(caught.value).startswith("layer profile 'broken' is not a usable layer profile")
    assert str(profiles.root) not in str(caught.value)
    assert profiles.load("late")["layers"] == [1]


def test_the_profile_folder_must_exist(tmp_path):
    with pytest.raises(VisfocusError, match="--profiles .*nothing: no such folder"):
        ProfileFolder.open(tmp_path / "nothing")


def test_vea_answers_with_the_named_profile_and_refuses_any_other_value(tiny_vlms, image, profiles, server):
    vlm = tiny_vlms["qwen3_vl"]
    assert vlm.num_layers == 2
    explorer = Explorer(vlm, profiles=profiles)
    named = explorer.answer(image, QUESTION, "vea", {"profile": "late"})
    assert named.extras["evidence_layers"] == [1] and named.params == {"profile": "late"}  # the profile's layers
    plain = explorer.answer(image, QUESTION, "vea", {})
    assert plain.extras["evidence_layers"] == [0]  # without one: the middle 10 % (one layer of two)
    assert explorer.forward_calls == 2
    with pytest.raises(VisfocusError, match="layer profile 'deep' was made for a model with 32 layers; this one has 2"):
        explorer.answer(image, QUESTION, "vea", {"profile": "deep"})
    for value in ("/etc/shadow", str(server / "secret.json"), "../secret"):
        with pytest.raises(VisfocusError, match=REFUSED):
            explorer.answer(image, QUESTION, "vea", {"profile": value})
    with pytest.raises(VisfocusError, match=r"\(none: the app was started without --profiles DIR\)"):
        Explorer(vlm).answer(image, QUESTION, "vea", {"profile": "late"})
    assert explorer.forward_calls == 2  # no refused request ran the model


@pytest.mark.parametrize("method", PROFILED)
def test_the_page_offers_the_profiles_by_name_or_disables_the_control(profiles, method):
    ui = pytest.importorskip("visfocus.app.ui")
    with ui.gr.Blocks():
        offered = ui.control(_profile_spec(method), profiles)
        none = ui.control(_profile_spec(method), None)
    assert [value for _, value in offered.choices] == ["", "broken", "deep", "huge", "late"]
    assert offered.value == "" and offered.interactive is not False
    assert [value for _, value in none.choices] == [""] and none.interactive is False
    assert "start the app with --profiles DIR" in none.label


# --- bounded sessions and exports ------------------------------------------------------------------------------------
def test_session_state_expires_and_gradio_sweeps_its_cache():
    ui = pytest.importorskip("visfocus.app.ui")
    from types import SimpleNamespace

    demo = ui.build(SimpleNamespace(vlm=SimpleNamespace(num_layers=2, num_heads=4), profiles=None), [],
                    session_ttl_s=120, delete_cache=(60, 1800))
    states = [block for block in demo.blocks.values() if isinstance(block, ui.gr.State)]
    kept = [state for state in states if state.time_to_live == 120]
    assert len(kept) == 4  # results, the image they are about, the picked example, the baseline verdicts
    assert all(math.isinf(state.time_to_live) for state in states if state not in kept)  # constants only
    assert all(state.value is None or state.value == {} for state in kept)
    assert demo.delete_cache == (60, 1800)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_new_export_deletes_the_exports_older_than_the_ttl(tmp_path):
    exports = ExportFolder(ttl_s=600, root=tmp_path)
    old, recent = exports.new(), exports.new()
    (old / "results.json").write_text("{}")
    _age(old, 601)
    _age(recent, 599)
    (tmp_path / "not-an-export").mkdir()
    _age(tmp_path / "not-an-export", 10_000)
    assert stale_exports(tmp_path, time.time(), 600) == [old]
    fresh = exports.new()
    assert not old.exists() and recent.is_dir() and fresh.is_dir() and fresh.parent == tmp_path
    assert fresh.name.startswith(EXPORT_PREFIX) and (tmp_path / "not-an-export").is_dir()  # only its own exports
    assert set(exports.prune(time.time() + 601)) == {recent, fresh}
    assert [p.name for p in tmp_path.iterdir()] == ["not-an-export"]


def test_the_export_folder_is_made_under_the_temp_folder_on_first_use():
    exports = ExportFolder(ttl_s=60)
    folder = exports.new()
    try:
        assert folder.parent == exports.root and exports.root.name.startswith("visfocus-app-exports-")
        assert exports.root.resolve().parent == Path(tempfile.gettempdir()).resolve()  # Gradio may serve it
    finally:
        shutil.rmtree(exports.root, ignore_errors=True)


def test_the_page_exports_into_its_export_folder_and_deletes_old_exports(tiny_vlms, image, tmp_path):
    ui = pytest.importorskip("visfocus.app.ui")
    explorer = Explorer(tiny_vlms["qwen3_vl"])
    exports = ExportFolder(ttl_s=600, root=tmp_path / "exports")
    (tmp_path / "exports").mkdir()
    demo = ui.build(explorer, [], exports=exports)
    export_files = next(block_fn.fn for block_fn in demo.fns.values() if block_fn.name == "export_files")
    state = ui.compare(explorer, image, QUESTION, "yes, no", "", ["baseline"], {})
    first = [Path(p) for p in export_files(state, image, 0, "mean", 0, "jet", 0.5, 0)]
    assert sorted(p.name for p in first) == ["heatmap_baseline_layer0.png", "results.json", "shares.png",
                                             "topk_baseline.png"]
    assert all(p.is_file() and p.parent.parent == tmp_path / "exports" for p in first)
    assert json.loads((first[0].parent / "results.json").read_text())["baseline"]["text"] == state["baseline"].text
    _age(first[0].parent, 601)
    second = [Path(p) for p in export_files(state, image, 1, "mean", 0, "jet", 0.5, 0)]
    assert not first[0].parent.exists() and all(p.is_file() for p in second)
    assert [p.name for p in (tmp_path / "exports").iterdir()] == [second[0].parent.name]
