"""A new method is one file: a toy method written to a temporary module, and nothing else changed, is found by the
registry, `visfocus list methods`, an eval run, a sweep, the app's controls, the lmms-eval plugin and every
registry-parametrised test. The module is named in ``VISFOCUS_METHODS``, as a user's own method would be."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY = "toy_gain"
TOY_MODULE = textwrap.dedent('''
    """A toy method: the image keys' attention logits of the last prompt row times a gain (ScalingVis by another
    name), declared as every method declares itself."""

    from dataclasses import dataclass

    from visfocus.interventions.base import Method, MethodResult, Params, param, register_method
    from visfocus.steer.edits import ScaleLogits


    @dataclass(frozen=True)
    class ToyParams(Params):
        gain: float = param(1.5, paper="g", low=0.0, high=4.0)
        sharpen: bool = False


    @register_method
    class ToyGain(Method):
        name = "toy_gain"
        Params = ToyParams
        identity = {"gain": 1.0}
        search_grid = {"gain": (0.5, 2.0)}
        sites = frozenset({"attention"})
        extras = {"gain_used": "the gain applied"}

        def run(self, batch, *, max_new_tokens):
            edit = ScaleLogits(alpha=float(self.params.gain))
            generation = batch.runner.generate((edit,), max_new_tokens=max_new_tokens)
            return MethodResult(generation, extras=[{"gain_used": self.params.gain} for _ in range(batch.size)])
''')

# what the first subprocess checks, in one interpreter that has the toy module registered
PROBE = textwrap.dedent('''
    import contextlib, io, json, sys
    import visfocus as vf
    from visfocus.cli import main
    from visfocus.interventions.base import param_specs

    out = {"methods": vf.methods().get("toy_gain")}
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        main(["list", "methods"])
    out["listed"] = "toy_gain" in listing.getvalue()
    out["controls"] = [(s.name, s.kind, s.low, s.high) for s in param_specs("toy_gain")]
    from visfocus.app.ui import control
    out["app_controls"] = [type(control(s)).__name__ for s in param_specs("toy_gain")]
    from visfocus.integrations.lmms.settings import parse_settings
    settings = parse_settings({"method": "toy_gain", "gain": 2.0})
    out["lmms"] = [settings.method_name, repr(settings.build_method())]
    print("PROBE " + json.dumps(out))
''')


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "toy_gain_method.py").write_text(TOY_MODULE, encoding="utf-8")
    env = dict(os.environ, VISFOCUS_METHODS="toy_gain_method", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_a_method_in_one_file_is_found_everywhere(tmp_path):
    env = _env(tmp_path)
    probe = _run([sys.executable, "-c", PROBE], env, tmp_path)
    found = json.loads(probe.split("PROBE ", 1)[1])
    assert found["methods"] == {"gain": 1.5, "sharpen": False} and found["listed"]
    assert found["controls"] == [["gain", "float", 0.0, 4.0], ["sharpen", "bool", None, None]]
    assert len(found["app_controls"]) == 2
    assert found["lmms"] == ["toy_gain", "toy_gain(gain=2.0, sharpen=False)"]

    runs = tmp_path / "runs"
    _run([sys.executable, "-m", "visfocus", "eval", "--tasks", "scenes_test", "--method", TOY, "--method_args",
          "gain=2.0", "--limit", "4", "--output_path", str(runs)], env, tmp_path)
    rows = [json.loads(line) for path in runs.rglob("samples_scenes_test.jsonl")
            for line in path.read_text().splitlines()]
    assert len(rows) == 4 and all(row["extras"] == {"gain_used": 2.0} for row in rows)

    _run([sys.executable, "-m", "visfocus", "sweep", "--method", TOY, "--dev_task", "scenes_dev", "--eval_task",
          "scenes_test", "--limit", "4", "--output_path", str(runs)], env, tmp_path)
    sweep = json.loads(next(runs.rglob("sweep.json")).read_text())
    assert sweep["method"] == TOY and [t["args"] for t in sweep["trials"]] == [{"gain": 0.5}, {"gain": 2.0}]


# the test files that parametrise over the registry, and how many toy_gain tests each must run at least
REGISTRY_TESTS = {"tests/test_engine.py": 1, "tests/test_api.py": 1, "tests/test_prefix_sharing.py": 1,
                  "tests/test_parsers_fuzz.py": 1, "tests/test_app_safety.py": 1}


def test_registry_parametrised_tests_cover_a_new_method(tmp_path):
    env = _env(tmp_path)
    collected = _run([sys.executable, "-m", "pytest", "--collect-only", "-k", TOY, *REGISTRY_TESTS], env, REPO)
    ids = [line for line in collected.splitlines() if "::" in line]
    for path, least in REGISTRY_TESTS.items():
        assert sum(i.startswith(path) for i in ids) >= least, f"{path} runs no test of a new method"
    result = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", TOY, *REGISTRY_TESTS],
                  env, REPO)
    passed = re.search(r"(\d+) passed", result)
    assert passed and int(passed.group(1)) == len(ids) and not re.search(r"\d+ (failed|error)", result)


def test_a_method_module_that_fails_to_import_is_named_in_one_error_line(tmp_path):
    (tmp_path / "broken_method.py").write_text("raise RuntimeError('half written')\n", encoding="utf-8")
    env = dict(os.environ, VISFOCUS_METHODS="broken_method, not_a_module", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "visfocus", "eval", "--method", TOY, "--limit", "1",
                           "--output_path", str(tmp_path / "runs")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("visfocus: error: unknown method")
    assert "'broken_method', which failed to import (RuntimeError: half written)" in lines[0]
    assert "'not_a_module', which failed to import (ModuleNotFoundError" in lines[0]
    assert not (tmp_path / "runs").exists()
