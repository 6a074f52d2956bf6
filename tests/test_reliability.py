"""A run survives what happens to real runs: kill -9 at any point of its write path (one rank and two), a full disk at
any write, a second run on the same folder, a samples file that lost its last newline, rows that vanish. After each,
the same command resumes, and the final samples and metrics equal those of a run that was never interrupted."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import visfocus as vf
from visfocus.cli import main as cli_main
from visfocus.errors import VisfocusError
from visfocus.evaluate import RunConfig, evaluate
from visfocus.run.lock import HOLDER_FILE, RunLock
from visfocus.run.results import SCHEMA_VERSION
from visfocus.testing import faults
from visfocus.tracefile import load_traces

TASKS = ["synthetic_spatial", "scenes_test"]
LIMIT = 6
SEED = 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "ACCELERATE_USE_CPU": "1"}


def _config(model: Path, output: Path, **kw) -> RunConfig:
    values = dict(model=str(model), tasks=list(TASKS), limit=LIMIT, batch_size=2, max_new_tokens=2, trace="mean",
                  output_path=str(output))
    return RunConfig(**{**values, **kw})


def _argv(model: Path, output: Path) -> list[str]:
    return ["eval", "--model", str(model), "--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--batch_size", "2",
            "--max_new_tokens", "2", "--trace", "mean", "--output_path", str(output)]


def _final(output: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(results.json, {task: sample rows in file order}) of the one run folder under ``output``."""
    (path,) = output.rglob("results.json")
    rows = {name: [json.loads(line) for line in (path.parent / f"samples_{name}.jsonl").read_text().splitlines()]
            for name in TASKS}
    assert not list(path.parent.glob("*.rank*.jsonl")) and not list(path.parent.rglob(".*.tmp"))
    return json.loads(path.read_text()), rows


def _assert_same_run(output: Path, reference: Path) -> None:
    """The samples (ids in order, none missing or repeated; answers, verdicts, confidences) and the metrics of the run
    under ``output`` equal the uninterrupted ``reference``'s."""
    results, rows = _final(output)
    expected_results, expected_rows = _final(reference)
    for name in TASKS:
        ids = [r["id"] for r in rows[name]]
        assert ids == [r["id"] for r in expected_rows[name]] and len(set(ids)) == len(ids) == LIMIT
        assert [(r["output"], r["parsed"], r["correct"]) for r in rows[name]] == \
            [(r["output"], r["parsed"], r["correct"]) for r in expected_rows[name]]
        assert [r["confidence"] for r in rows[name]] == pytest.approx([r["confidence"] for r in expected_rows[name]],
                                                                     abs=1e-4)
        n = results["tasks"][name]["n_samples"]
        assert n == expected_results["tasks"][name]["n_samples"] and n["effective"] == LIMIT
        assert _close(results["tasks"][name]["metrics"], expected_results["tasks"][name]["metrics"])
        traces = load_traces(next(output.rglob("results.json")).parent, name)
        assert sorted(traces) == sorted(ids)  # every logged sample has its trace
    assert results["provenance"][-1]["ended_at"] is not None


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, abs=1e-6, nan_ok=True)
    return a == b


@pytest.fixture(scope="module")
def setting(tiny_dirs, tmp_path_factory):
    """The tiny model, loaded once, and an uninterrupted reference run with the number of write-path calls it made.
    Torch runs on one thread in this module: a forked child must not enter OpenMP's thread pool, which does not
    survive a fork (and every run here, reference included, then adds up in the same order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_dirs["qwen2_vl"]
    vlm = vf.load(str(model))
    reference = tmp_path_factory.mktemp("reference")
    counter = faults.Counter()
    restore = faults.intercept(counter)
    try:
        evaluate(_config(model, reference), model=lambda: vlm)
    finally:
        restore()
    yield model, vlm, reference, counter.calls
    torch.set_num_threads(threads)


def _killed_in_a_fork(model: Path, vlm, output: Path, k: int, mode: str) -> int:
    """Run in a forked child that SIGKILLs itself at its k-th write-path call; the child's exit status."""
    pid = os.fork()
    if pid == 0:  # the child: nothing it does may return into pytest
        try:
            faults.intercept(faults.kill_at(k, mode))
            evaluate(_config(model, output), model=lambda: vlm)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_kill_minus_nine_anywhere_in_the_write_path_then_resume_loses_and_repeats_nothing(setting, tmp_path):
    model, vlm, reference, calls = setting
    assert len(calls) >= 30 and {"write", "fsync", "replace", "unlink"} <= set(calls)
    schedule = random.Random(SEED)
    points = sorted(schedule.sample(range(1, len(calls) + 1), 24))
    survived = 0
    for k in points:
        mode = schedule.choice(faults.MODES)
        output = tmp_path / f"k{k}"
        status = _killed_in_a_fork(model, vlm, output, k, mode)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, mode, calls[k - 1])
        evaluate(_config(model, output), model=lambda: vlm)  # the same run again: it resumes
        _assert_same_run(output, reference)
        survived += 1
    print(f"\none rank: {survived} of {len(points)} kill points survived (of {len(calls)} write-path calls: "
          f"{', '.join(f'{name} {calls.count(name)}' for name in faults.PRIMITIVES)})")
    assert survived == len(points) >= 20


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "visfocus.testing.faults", *args], env=ENV, capture_output=True, text=True,
                          timeout=600)


def test_kill_minus_nine_of_either_rank_then_resume_on_one_or_two_ranks(setting, tmp_path):
    model, vlm, reference, _ = setting
    counted = _torchrun("count", str(tmp_path / "calls"), "--", *_argv(model, tmp_path / "counted"))
    assert counted.returncode == 0, counted.stderr[-3000:]
    _assert_same_run(tmp_path / "counted", reference)
    calls = [int((tmp_path / f"calls.rank{rank}").read_text()) for rank in (0, 1)]
    schedule = random.Random(SEED)
    plans = [(rank, schedule.randint(1, calls[rank]), schedule.choice(faults.MODES)) for rank in (0, 1, 0, 1, 0, 1)]
    survived = 0
    for i, (rank, k, mode) in enumerate(plans):
        output = tmp_path / f"r{rank}k{k}"
        killed = _torchrun("kill", str(k), mode, "--rank", str(rank), "--", *_argv(model, output))
        assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
        if i == 0:  # resumed by the same two-rank command
            resumed = _torchrun("count", str(tmp_path / "again"), "--", *_argv(model, output))
            assert resumed.returncode == 0, resumed.stderr[-3000:]
        else:  # resumed on one rank
            evaluate(_config(model, output), model=lambda: vlm)
        _assert_same_run(output, reference)
        survived += 1
    print(f"\ntwo ranks: {survived} of {len(plans)} kill points survived (write-path calls per rank: {calls})")
    assert survived == len(plans)


def test_a_full_disk_at_any_write_is_one_error_then_a_clean_resume(setting, tmp_path, capsys):
    model, vlm, reference, calls = setting
    writes = sum(name in ("write", "replace") for name in calls)
    schedule = random.Random(SEED)
    points = sorted(schedule.sample(range(1, writes + 1), 12))
    survived = 0
    for k in points:
        output = tmp_path / f"k{k}"
        restore = faults.intercept(faults.disk_full_at(k))
        try:
            code = cli_main(_argv(model, output))
        finally:
            restore()
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("visfocus: error:")]
        assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0], (k, err[-2000:])
        assert "Traceback" not in err
        assert cli_main(_argv(model, output)) == 0
        _assert_same_run(output, reference)
        survived += 1
    print(f"\nfull disk: {survived} of {len(points)} ENOSPC points survived (of {writes} writes and renames)")
    assert survived == len(points) >= 10


def test_a_folder_that_turns_read_only_is_one_error_then_a_clean_resume(setting, tmp_path, capsys):
    model, vlm, reference, calls = setting
    renames = calls.count("replace")
    for k in (1, renames // 2, renames):  # the lock holder's file, a trace shard or results.json, the last results
        output = tmp_path / f"k{k}"
        restore = faults.intercept(faults.disk_full_at(k, ("replace",), errno.EROFS))
        try:
            code = cli_main(_argv(model, output))
        finally:
            restore()
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("visfocus: error:")]
        assert code == 2 and len(errors) == 1 and "Read-only file system" in errors[0]
        if k == 1:  # refused before anything was written: nothing is left behind
            assert not output.exists()
        assert cli_main(_argv(model, output)) == 0
        _assert_same_run(output, reference)


# --- one writer per run folder ---------------------------------------------------------------------------------
def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(setting, tmp_path, capsys):
    model, vlm, reference, _ = setting
    assert cli_main(_argv(model, tmp_path)) == 0
    folder = next(tmp_path.rglob("results.json")).parent
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    holder = RunLock(folder)
    holder.acquire()  # another run holds the folder
    try:
        capsys.readouterr()
        assert cli_main(_argv(model, tmp_path)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"visfocus: error: {folder} is in use by another visfocus run "
                                                   f"(pid {os.getpid()} on ")
    finally:
        holder.release()
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} == before
    assert cli_main(_argv(model, tmp_path)) == 0  # free again


def test_a_lock_left_by_a_killed_run_is_taken_over(setting, tmp_path, capsys):
    model, vlm, reference, _ = setting
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from visfocus.run.lock import RunLock; lock = RunLock(Path(sys.argv[1])); "
                               "lock.acquire(); print('locked', flush=True); time.sleep(600)", str(folder)],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(VisfocusError, match=f"in use by another visfocus run \\(pid {holder.pid} on "):
            RunLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(folder)
    lock.acquire()  # the kernel released the dead process's lock; its holder file is stale
    assert f"taking over from a run that ended without releasing it (pid {holder.pid} on" in capsys.readouterr().err
    assert json.loads((folder / HOLDER_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / HOLDER_FILE).exists()


# --- the samples file ------------------------------------------------------------------------------------------
def test_a_last_row_without_its_newline_is_kept_and_never_glued(setting, tmp_path):
    model, vlm, reference, _ = setting
    evaluate(_config(model, tmp_path, tasks=["synthetic_spatial"], limit=4), model=lambda: vlm)
    (samples,) = tmp_path.rglob("samples_synthetic_spatial.jsonl")
    samples.write_bytes(samples.read_bytes()[:-1])  # a kill between the last row and its "\n", or a copy tool
    out = evaluate(_config(model, tmp_path, tasks=["synthetic_spatial"], limit=8), model=lambda: vlm)
    lines = samples.read_text().splitlines()
    assert len(lines) == 8 and len({json.loads(line)["id"] for line in lines}) == 8
    assert out["tasks"]["synthetic_spatial"]["n_samples"]["effective"] == 8


@pytest.mark.parametrize("line, why", [("{}", "not a sample row"), ("[1, 2]", "not a sample row"),
                                       ("not json", "not a JSON line"), ('{"id": 3, "correct": true}', "text id")])
def test_a_line_that_is_not_a_sample_row_is_one_error_naming_file_and_line(setting, tmp_path, capsys, line, why):
    model, vlm, reference, _ = setting
    evaluate(_config(model, tmp_path, tasks=["synthetic_spatial"], limit=2), model=lambda: vlm)
    (samples,) = tmp_path.rglob("samples_synthetic_spatial.jsonl")
    rows = samples.read_text().splitlines()
    samples.write_text("\n".join([rows[0], line, rows[1]]) + "\n")
    before = samples.read_bytes()
    capsys.readouterr()
    for argv in (_argv(model, tmp_path), ["compare", str(samples.parent), str(samples.parent)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"visfocus: error: {samples}, line 2: ") and why in err[0]
    assert samples.read_bytes() == before  # nothing repaired away


def test_rows_that_vanish_during_a_run_are_reported_not_hidden(setting, tmp_path, monkeypatch):
    model, vlm, reference, _ = setting
    from visfocus.run import samples

    append = samples.SampleLog.append
    monkeypatch.setattr(samples.SampleLog, "append", lambda self, rows: append(self, rows[:-1]))  # one row lost
    config = _config(model, tmp_path, tasks=["synthetic_spatial"], limit=4, trace=None)
    with pytest.raises(VisfocusError, match=r"samples were lost: baseline/synthetic_spatial: 2 samples have no "
                                               r"row \(e\.g\. "):
        evaluate(config, model=lambda: vlm)
    saved = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert saved["tasks"]["synthetic_spatial"]["n_samples"]["effective"] == 2  # the counts are recorded
    monkeypatch.undo()
    assert evaluate(config, model=lambda: vlm)["tasks"]["synthetic_spatial"]["n_samples"]["effective"] == 4


# --- resume compares like with like ----------------------------------------------------------------------------
def test_a_run_with_a_layer_list_resumes_from_flags_or_yaml(setting, tmp_path, capsys):
    model, vlm, reference, _ = setting
    base = ["eval", "--model", str(model), "--tasks", "synthetic_spatial", "--max_new_tokens", "1", "--output_path",
            str(tmp_path)]
    flags = ["--method", "scaling_vis", "--method_args", "alpha=2,layers=1;0"]
    assert cli_main([*base, *flags, "--limit", "2"]) == 0
    assert cli_main([*base, *flags, "--limit", "3"]) == 0  # resumed: one more sample, not refused
    (tmp_path / "run.yaml").write_text("method: scaling_vis\nmethod_args: {alpha: 2, layers: [1, 0]}\nlimit: 4\n")
    assert cli_main([*base, "--config", str(tmp_path / "run.yaml")]) == 0
    (results,) = tmp_path.rglob("results.json")
    saved = json.loads(results.read_text())
    assert saved["tasks"]["synthetic_spatial"]["n_samples"]["effective"] == 4
    assert [launch["samples_added"] for launch in saved["provenance"]] == \
        [{"synthetic_spatial": 2}, {"synthetic_spatial": 1}, {"synthetic_spatial": 1}]
    sweep = ["sweep", "--model", str(model), "--dev_task", "synthetic_spatial", "--limit", "2", "--method",
             "scaling_vis", "--grid", "layers=0|1;0", "--max_new_tokens", "1", "--output_path", str(tmp_path / "sweep")]
    assert cli_main(sweep) == 0 and cli_main(sweep) == 0  # every trial resumes


def test_a_resume_is_refused_when_weights_trace_or_data_root_differ(setting, tiny_dirs, tmp_path, capsys):
    model, vlm, reference, _ = setting
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    argv = ["eval", "--model", str(copy), "--tasks", "synthetic_spatial", "--limit", "1", "--max_new_tokens", "1",
            "--output_path", str(tmp_path / "runs")]
    assert cli_main(argv) == 0
    (results,) = (tmp_path / "runs").rglob("results.json")
    before = results.read_bytes()
    capsys.readouterr()
    assert cli_main([*argv, "--trace", "mean"]) == 2
    assert "different configuration (trace: None → 'mean')" in capsys.readouterr().err
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "initializer_range": 0.5}))  # other weights
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "different configuration (weights: " in err and "config_sha256" in err
    assert results.read_bytes() == before  # refused runs write nothing


def test_a_task_read_from_another_data_root_is_refused(setting, tmp_path, monkeypatch, image):
    model, vlm, reference, _ = setting
    from visfocus.benchmarks import TASKS, Record
    from visfocus.benchmarks.scoring import OptionTask

    class FromFiles(OptionTask):
        def load_records(self):
            return [Record(id="0", question="Where is the cup? Answer with left or right.", gold="left",
                           options=("left", "right"), image_path=str(self.data_root / "0.png"))]

    monkeypatch.setitem(TASKS, "from_files", lambda **kw: FromFiles(**kw))
    for root in ("a", "b"):
        (tmp_path / root).mkdir()
        image.save(tmp_path / root / "0.png")
    config = _config(model, tmp_path / "runs", tasks=["from_files"], data_root=str(tmp_path / "a"), trace=None)
    evaluate(config, model=lambda: vlm)
    evaluate(_config(model, tmp_path / "runs", tasks=["synthetic_spatial"], data_root=str(tmp_path / "b"),
                     trace=None, limit=1), model=lambda: vlm)  # a generated task reads no data root
    with pytest.raises(VisfocusError, match=f"holds from_files read from {tmp_path / 'a'}, but this run reads it "
                                            f"from {tmp_path / 'b'}"):
        evaluate(_config(model, tmp_path / "runs", tasks=["from_files"], data_root=str(tmp_path / "b"), trace=None),
                 model=lambda: vlm)


def test_each_launch_is_recorded_and_the_first_versions_are_kept(setting, tmp_path):
    model, vlm, reference, _ = setting
    config = _config(model, tmp_path, tasks=["synthetic_spatial"], limit=2, trace=None)
    evaluate(config, model=lambda: vlm)
    (path,) = tmp_path.rglob("results.json")
    saved = json.loads(path.read_text())
    saved["versions"]["torch"] = "0.0-first-launch"
    path.write_text(json.dumps(saved))
    out = evaluate(_config(model, tmp_path, tasks=["synthetic_spatial"], limit=3, trace=None), model=lambda: vlm)
    assert out["versions"]["torch"] == "0.0-first-launch" and out["created_at"] == saved["created_at"]
    first, second = out["provenance"]
    assert first == saved["provenance"][0] and second["pid"] == os.getpid() and second["ended_at"] is not None
    assert second["samples_added"] == {"synthetic_spatial": 1} and second["versions"]["torch"] == torch.__version__


def test_a_schema_1_folder_resumes_and_is_upgraded(setting, tmp_path):
    model, vlm, reference, _ = setting
    evaluate(_config(model, tmp_path, tasks=["synthetic_spatial"], limit=2, trace=None, method="scaling_vis",
                     method_args={"alpha": 2}), model=lambda: vlm)
    (path,) = tmp_path.rglob("results.json")
    old = json.loads(path.read_text())
    for key in ("identity", "provenance"):
        del old[key]
    old["schema_version"] = 1
    old["config"]["method_args"] = {"alpha": 2}  # as a schema-1 run recorded what it was given
    path.write_text(json.dumps(old))
    out = evaluate(_config(model, tmp_path, tasks=["synthetic_spatial"], limit=3, trace=None, method="scaling_vis",
                           method_args={"alpha": 2.0}), model=lambda: vlm)
    assert out["schema_version"] == SCHEMA_VERSION and out["tasks"]["synthetic_spatial"]["n_samples"]["effective"] == 3
    assert len(out["provenance"]) == 1 and out["identity"]["method_args"] == {"alpha": 2.0, "layers": None,
                                                                                "decode": False}
    path.write_text(json.dumps(old))
    with pytest.raises(VisfocusError, match="different configuration \\(max_new_tokens: 2 → 3\\)"):
        evaluate(_config(model, tmp_path, tasks=["synthetic_spatial"], limit=3, trace=None, method="scaling_vis",
                         method_args={"alpha": 2.0}, max_new_tokens=3), model=lambda: vlm)
