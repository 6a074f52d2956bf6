"""``visfocus app`` end to end: the app runs in a subprocess on a free localhost port and is called through
``gradio_client`` as a browser session would, against the built-in model organism; a second one with a login and a
profile folder (two app processes in all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402 (only with gradio installed)
from gradio_client.exceptions import AppError, AuthenticationError  # noqa: E402

import visfocus as vf  # noqa: E402
import visfocus.organism  # noqa: E402
from visfocus.app.compute import MAX_NEW_TOKENS, Explorer, parse_answer  # noqa: E402
from visfocus.app.launch import PASSWORD_VARIABLE  # noqa: E402
from visfocus.errors import VisfocusError  # noqa: E402
from visfocus.testing.app_server import log_tail, running_app  # noqa: E402

STARTUP_S = 90
# the app shows one column per registered method, the baseline first (ui.build)
NAMES = sorted(vf.METHODS, key=lambda n: (n != "baseline", n))
REFUSED = "is not one of the profiles this app offers"


@pytest.fixture(scope="module")
def app_url(request, tmp_path_factory):
    """The URL of a running ``python -m visfocus.cli app``; its log is shown when a test of this module fails."""
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    failed_before = request.session.testsfailed
    try:
        with running_app(log_path, startup_s=STARTUP_S) as url:
            yield url
    except VisfocusError as err:
        pytest.fail(str(err))
    finally:
        if request.session.testsfailed > failed_before:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_sep("-", f"visfocus app log ({log_path})")
                reporter.write_line(log_tail(log_path))


@pytest.fixture(scope="module")
def organism():
    return vf.load(str(visfocus.organism.organism_path()))


@pytest.fixture(scope="module")
def scenes():
    return list(vf.task("scenes_test"))[:4]


def _client(url: str) -> Client:
    return Client(url, verbose=False)


def _compare(client: Client, path, record, methods: list[str], params: dict | None = None) -> dict:
    return client.predict(handle_file(str(path)), record.question, ", ".join(record.options), record.gold,
                          json.dumps(methods), json.dumps(params or {}), api_name="/compare")


def _same_extras(got: dict, expected: dict) -> bool:
    """The extras the app sent (JSON) are the public API's: numbers to within float noise, the rest exactly."""
    expected = json.loads(json.dumps(expected, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return got.keys() == expected.keys() and all(
        got[k] == pytest.approx(v, abs=1e-5) if isinstance(v, float) else got[k] == v for k, v in expected.items())


def test_the_cli_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "visfocus.cli", "app", "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout and "--max_results" in done.stdout
    for flag in ("--auth", PASSWORD_VARIABLE, "--profiles", "--max_upload_mb", "--max_queue", "--max_sessions",
                 "--session_ttl_min", "--export_ttl_min"):
        assert flag in done.stdout, flag


def test_an_example_scene_gets_the_answers_of_the_public_api(app_url, organism, scenes, tmp_path):
    record = scenes[0]
    path = tmp_path / "scene.png"
    record.image.save(path)
    out = _compare(_client(app_url), path, record, ["baseline", "adaptvis"])
    assert list(out) == ["baseline", "adaptvis"]
    for method in ("baseline", "adaptvis"):
        expected = organism.answer(record.image, record.question, method=vf.method(method),
                                   max_new_tokens=MAX_NEW_TOKENS, options=list(record.options))
        got = out[method]
        assert got["text"] == expected.text, method
        assert got["first_token"] == expected.first_token
        assert got["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
        assert _same_extras(got["extras"], expected.extras)  # the decisions the method declares and reports
        assert set(got["extras"]) <= set(vf.METHODS[method].extras)
        assert got["parsed"] == parse_answer(expected.text, record.options)
        assert got["correct"] == (got["parsed"] == record.gold)
        assert got["method"] == method and got["params"] == {}
    assert out["baseline"]["extras"] == {} and out["adaptvis"]["extras"]["alpha_used"] is not None


def test_a_bad_upload_gets_the_error_message_and_the_next_request_still_works(app_url, scenes, tmp_path):
    client = _client(app_url)
    bad = tmp_path / "not_an_image.png"
    bad.write_text("this is text, not a picture")
    with pytest.raises(AppError, match="not a readable image"):
        _compare(client, bad, scenes[3], ["baseline"])
    good = tmp_path / "scene.png"
    scenes[3].image.save(good)
    out = _compare(client, good, scenes[3], ["baseline"])
    assert list(out) == ["baseline"] and out["baseline"]["text"]
    assert 0 < out["baseline"]["confidence"] <= 1


def _redraw(client: Client, layer: int, sinks: int) -> tuple[list, list]:
    out = client.predict(layer, "mean", 0, "jet", 0.5, sinks, api_name="/redraw")
    assert len(out) == 2 * len(NAMES)
    return list(out[:len(NAMES)]), list(out[len(NAMES):])


def test_two_sessions_keep_their_own_results(app_url, organism, scenes, tmp_path):
    """Session A compares one scene with the baseline, then session B another scene with two methods; each redraw
    shows its own session's methods, image and view settings."""
    ui = pytest.importorskip("visfocus.app.ui")
    paths = {}
    for name, record in (("a", scenes[1]), ("b", scenes[2])):
        paths[name] = tmp_path / f"{name}.png"
        record.image.save(paths[name])
    session_a, session_b = _client(app_url), _client(app_url)
    out_a = _compare(session_a, paths["a"], scenes[1], ["baseline"])
    out_b = _compare(session_b, paths["b"], scenes[2], ["baseline", "adaptvis"])
    assert list(out_a) == ["baseline"] and list(out_b) == ["baseline", "adaptvis"]

    layer = 1
    heats_a, notes_a = _redraw(session_a, layer, sinks=2)
    heats_b, notes_b = _redraw(session_b, layer, sinks=0)
    assert [h is not None for h in heats_a] == [name == "baseline" for name in NAMES]
    assert [h is not None for h in heats_b] == [name in ("baseline", "adaptvis") for name in NAMES]
    assert notes_a[0].startswith("masked 2 sink token(s)") and notes_b == [""] * len(NAMES)

    explorer = Explorer(organism)
    expected = {}
    for name, record, sinks in (("a", scenes[1], 2), ("b", scenes[2], 0)):
        with Image.open(paths[name]) as img:
            picture = img.convert("RGB")
        result = explorer.answer(picture, record.question, "baseline", {}, record.options, record.gold)
        expected[name] = np.asarray(ui.heatmap(result, picture, layer, "mean", 0, "jet", 0.5, sinks)[0], dtype=float)
    for name, heats in (("a", heats_a), ("b", heats_b)):
        with Image.open(heats[0]) as img:
            drawn = np.asarray(img.convert("RGB"), dtype=float)
        width, height = scenes[1 if name == "a" else 2].image.size
        assert drawn.shape == expected[name].shape == (height, width + ui.render.BAR_WIDTH, 3)
        own = np.abs(drawn - expected[name]).mean()
        other = np.abs(drawn - expected["b" if name == "a" else "a"]).mean()
        assert own < 3 and own < other / 3, (name, own, other)  # the app sends lossy WebP


def test_a_request_naming_a_server_path_or_a_value_beyond_its_bounds_is_refused_and_the_app_keeps_serving(
        app_url, scenes, tmp_path):
    client = _client(app_url)
    path = tmp_path / "scene.png"
    scenes[0].image.save(path)
    refusals = []
    for profile in ("/etc/shadow", "/nope"):  # a file that exists and one that does not: the same answer
        with pytest.raises(AppError) as caught:
            _compare(client, path, scenes[0], ["vea"], {"vea": {"profile": profile}})
        message = str(caught.value)
        assert REFUSED in message and "JSON" not in message and "not found" not in message, message
        refusals.append(message.replace(repr(profile), "<profile>"))
    assert refusals[0] == refusals[1] and "started without --profiles DIR" in refusals[0]
    with pytest.raises(AppError, match="scaling_vis parameter alpha must be a number ≥ 0, got -1"):
        _compare(client, path, scenes[0], ["scaling_vis"], {"scaling_vis": {"alpha": -1}})
    with pytest.raises(AppError, match=r"vcd parameter noise_step must be an integer in \[0, 999\], got 5000"):
        _compare(client, path, scenes[0], ["vcd"], {"vcd": {"noise_step": 5000}})
    out = _compare(client, path, scenes[0], ["baseline"])
    assert list(out) == ["baseline"] and out["baseline"]["text"]


def test_with_a_login_only_a_signed_in_client_gets_in_and_a_profile_is_named_from_the_folder(organism, scenes,
                                                                                            tmp_path):
    """``--auth USER`` with the password in the environment, and ``--profiles DIR`` with one profile."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    late = organism.num_layers - 1
    (profiles / "late.json").write_text(json.dumps({"layers": [late],
                                                    "auroc_per_layer": [0.5] * organism.num_layers}))
    log_path = tmp_path / "app.log"
    try:
        with running_app(log_path, "--auth", "alice", "--profiles", str(profiles), startup_s=STARTUP_S,
                         env={PASSWORD_VARIABLE: "s3cret"}) as url:
            with pytest.raises(AuthenticationError, match="credentials were not provided"):
                Client(url, verbose=False)
            with pytest.raises(ValueError, match="Could not login"):
                Client(url, auth=("alice", "wrong"), verbose=False)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + "gradio_api/info", timeout=10)
            assert refused.value.code == 401
            client = Client(url, auth=("alice", "s3cret"), verbose=False)
            path = tmp_path / "scene.png"
            scenes[0].image.save(path)
            out = _compare(client, path, scenes[0], ["vea"], {"vea": {"profile": "late"}})
            assert out["vea"]["params"] == {"profile": "late"} and out["vea"]["extras"]["evidence_layers"] == [late]
            with pytest.raises(AppError, match=rf"layer profile '\.\./late' {REFUSED} \(late\)"):
                _compare(client, path, scenes[0], ["vea"], {"vea": {"profile": "../late"}})
    except VisfocusError as err:
        pytest.fail(str(err))
    log = log_tail(log_path)
    assert "[visfocus] warning" not in log  # local, and with a login
    assert "s3cret" not in log
