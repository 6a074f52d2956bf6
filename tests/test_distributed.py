"""Data-parallel evaluation: two CPU ranks on gloo under torchrun give the single-process results, a killed rank's
run resumes on another number of ranks without losing or repeating a sample, sweeps choose the same point; the
sharding and the device placement the engine needs for ``device_map``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import visfocus as vf
from visfocus import distributed
from visfocus.errors import VisfocusError
from visfocus.models.loading import parse_max_memory, rank_max_memory
from visfocus.steer import ScaleLogits, SteerState, steering
from visfocus.steer.attention import visfocus_attention
from visfocus.tracefile import load_traces

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "ACCELERATE_USE_CPU": "1"}


def _command(ranks: int, *args: str) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "visfocus", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m",
            "visfocus", *args]


def _run(ranks: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(ranks, *args), env=env or ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _results(output: Path) -> tuple[dict, dict[str, list[dict]]]:
    (path,) = output.rglob("results.json")
    results = json.loads(path.read_text())
    samples = {p.name.removeprefix("samples_").removesuffix(".jsonl"): [json.loads(line) for line in
                                                                      p.read_text().splitlines()]
               for p in path.parent.glob("samples_*.jsonl")}
    return results, samples


def _predictions(rows: list[dict]) -> list[tuple]:
    return [(r["id"], r["output"], r["parsed"], r["correct"], round(r["confidence"], 6)) for r in rows]


# --- two ranks against one -------------------------------------------------------------------------------------
def test_two_ranks_give_the_single_process_results_on_the_organism(tmp_path):
    args = ["eval", "--tasks", "scenes_test", "--limit", "24"]
    _run(1, *args, "--output_path", str(tmp_path / "one"))
    _run(2, *args, "--output_path", str(tmp_path / "two"))
    one, one_samples = _results(tmp_path / "one")
    two, two_samples = _results(tmp_path / "two")
    assert two["tasks"]["scenes_test"]["metrics"] == one["tasks"]["scenes_test"]["metrics"]
    assert two["tasks"]["scenes_test"]["n_samples"] == one["tasks"]["scenes_test"]["n_samples"]
    assert _predictions(two_samples["scenes_test"]) == _predictions(one_samples["scenes_test"])  # sample order too
    assert not list((tmp_path / "two").rglob("*.rank*.jsonl"))  # merged and cleaned up


def test_accelerate_launch_runs_the_same_two_cpu_ranks(tmp_path):
    args = ["eval", "--tasks", "scenes_test", "--limit", "12", "--offset", "30"]
    _run(1, *args, "--output_path", str(tmp_path / "one"))
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launched = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", "-m",
                               "visfocus", *args, "--output_path", str(tmp_path / "two")],
                              env={**ENV, "HF_HOME": str(tmp_path / "hf")},  # no accelerate config of the machine's
                              capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert launched.stdout.count("results: ") == 1  # rank 0 reports for both
    one, one_samples = _results(tmp_path / "one")
    two, two_samples = _results(tmp_path / "two")
    assert _predictions(two_samples["scenes_test"]) == _predictions(one_samples["scenes_test"])
    assert two["tasks"]["scenes_test"]["metrics"] == one["tasks"]["scenes_test"]["metrics"]


def test_two_ranks_with_a_method_write_traces_that_read_as_one_run(tiny_dirs, tmp_path):
    args = ["eval", "--model", str(tiny_dirs["qwen2_vl"]), "--tasks", "synthetic_spatial", "--limit", "10",
            "--method", "scaling_vis", "--method_args", "alpha=2", "--trace", "mean", "--max_new_tokens", "2"]
    _run(1, *args, "--output_path", str(tmp_path / "one"))
    _run(2, *args, "--output_path", str(tmp_path / "two"))
    one, one_samples = _results(tmp_path / "one")
    two, two_samples = _results(tmp_path / "two")
    assert _predictions(two_samples["synthetic_spatial"]) == _predictions(one_samples["synthetic_spatial"])
    assert two["tasks"]["synthetic_spatial"]["metrics"] == one["tasks"]["synthetic_spatial"]["metrics"]
    run_two = next((tmp_path / "two").rglob("results.json")).parent
    traces = load_traces(run_two, "synthetic_spatial")
    assert sorted(traces) == sorted(r["id"] for r in two_samples["synthetic_spatial"])
    assert "<h3>" in _run(1, "report", str(run_two), "--out", str(tmp_path / "r.html")).stdout + \
        (tmp_path / "r.html").read_text()


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the worker with ``RANK=rank`` among the processes started with ``VISFOCUS_TEST_RUN=marker``."""
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"VISFOCUS_TEST_RUN={marker}".encode() in environ and f"RANK={rank}".encode() in environ:
            if b"torch.distributed.run" not in (proc / "cmdline").read_bytes():  # a worker, not the launcher
                return int(proc.name)
    return None


def test_a_killed_rank_resumes_on_one_rank_without_losing_or_repeating_a_sample(tmp_path):
    args = ["eval", "--tasks", "scenes_test", "--limit", "160"]
    marker = f"{os.getpid()}-{time.time_ns()}"
    run = subprocess.Popen(_command(2, *args, "--output_path", str(tmp_path / "killed")),
                           env={**ENV, "VISFOCUS_TEST_RUN": marker}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rank1_file, deadline = None, time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until rank 1 has logged a few samples, then kill it
        rank1_file = next((tmp_path / "killed").rglob("samples_scenes_test.rank1.jsonl"), None)
        if rank1_file is not None and len(rank1_file.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    pid = _rank_pid(marker, 1)
    assert pid is not None and rank1_file is not None
    os.kill(pid, signal.SIGKILL)
    output = run.communicate(timeout=120)[0].decode(errors="replace")
    assert run.returncode != 0, output[-2000:]
    logged_before = len(rank1_file.read_text().splitlines())
    assert logged_before < 80  # rank 1 did not finish its share

    _run(1, *args, "--output_path", str(tmp_path / "killed"))  # the same command, now on one process
    _run(1, *args, "--output_path", str(tmp_path / "whole"))
    resumed, resumed_samples = _results(tmp_path / "killed")
    whole, whole_samples = _results(tmp_path / "whole")
    ids = [r["id"] for r in resumed_samples["scenes_test"]]
    assert len(ids) == len(set(ids)) == 160
    assert _predictions(resumed_samples["scenes_test"]) == _predictions(whole_samples["scenes_test"])
    assert resumed["tasks"]["scenes_test"]["metrics"] == whole["tasks"]["scenes_test"]["metrics"]
    assert not list((tmp_path / "killed").rglob("*.rank*.jsonl"))


def test_a_sweep_on_two_ranks_chooses_the_single_process_point(tiny_dirs, tmp_path):
    args = ["sweep", "--model", str(tiny_dirs["llava"]), "--dev_task", "synthetic_spatial", "--limit", "8",
            "--method", "scaling_vis", "--grid", "alpha=0.5|2", "--max_new_tokens", "2"]
    _run(1, *args, "--output_path", str(tmp_path / "one"))
    _run(2, *args, "--output_path", str(tmp_path / "two"))
    one = json.loads(next((tmp_path / "one").rglob("sweep.json")).read_text())
    two = json.loads(next((tmp_path / "two").rglob("sweep.json")).read_text())
    assert two["chosen"] == one["chosen"] and two["trials"] == one["trials"]


# --- sharding and agreement --------------------------------------------------------------------------------------
def test_shard_keeps_an_images_samples_on_one_rank_and_covers_every_sample_once():
    items = [("a", 0), ("b", 1), ("a", 2), ("c", 3), ("d", 4), ("b", 5), ("e", 6)]
    shares = [distributed.shard(items, distributed.Ranks(rank, 2), lambda item: item[0]) for rank in range(2)]
    assert shares[0] == [("a", 0), ("a", 2), ("c", 3), ("e", 6)]  # groups a, c, e (0, 2, 4)
    assert shares[1] == [("b", 1), ("d", 4), ("b", 5)]  # groups b, d (1, 3)
    assert distributed.shard(items, distributed.Ranks(), lambda item: item[0]) == items


@dataclass(frozen=True)
class _FakeRanks(distributed.Ranks):
    others: tuple = ()

    def gather(self, value):
        return [value, *self.others]


def test_ranks_with_another_configuration_are_refused():
    distributed.same_everywhere(_FakeRanks(0, 3, others=({"a": 1}, {"a": 1})), {"a": 1}, "configuration")
    with pytest.raises(VisfocusError, match="rank 2 has another configuration than rank 0"):
        distributed.same_everywhere(_FakeRanks(0, 3, others=({"a": 1}, {"a": 2})), {"a": 1}, "configuration")


def test_ranks_of_a_single_process_and_their_devices():
    single = distributed.current()
    assert (single.rank, single.world_size, single.is_main, single.distributed) == (0, 1, True, False)
    assert single.broadcast("x") == "x" and single.gather("x") == ["x"]
    assert distributed.Ranks(1, 2, local_rank=1).device("cuda") == "cuda:1"
    assert distributed.Ranks(1, 2, local_rank=1).device("cpu") == "cpu"


def test_each_rank_shards_over_its_own_gpus():
    assert distributed.Ranks(0, 2, 0, local_world_size=2).gpus(8) == [0, 1, 2, 3]
    assert distributed.Ranks(3, 4, 1, local_world_size=2).gpus(8) == [4, 5, 6, 7]  # second node, second rank
    with pytest.raises(VisfocusError, match="4 ranks on this node but only 2 GPU"):
        distributed.Ranks(0, 4, 0, local_world_size=4).gpus(2)
    sizes = {g: f"{g}0GiB" for g in range(4)}
    assert rank_max_memory({1: "5GiB", 3: "7GiB", "cpu": "64GiB"}, [2, 3], sizes) == \
        {2: "20GiB", 3: "7GiB", "cpu": "64GiB"}
    assert rank_max_memory(None, [0, 1], sizes) == {0: "00GiB", 1: "10GiB"}


# --- device_map -------------------------------------------------------------------------------------------------
def test_max_memory_is_read_with_gpu_indices_as_integers():
    assert parse_max_memory("0:20GiB;1:18GiB;cpu:64GiB") == {0: "20GiB", 1: "18GiB", "cpu": "64GiB"}
    with pytest.raises(VisfocusError, match="DEVICE:SIZE"):
        parse_max_memory("20GiB")


@pytest.mark.parametrize("family", ["qwen3_vl", "llava_next"])
def test_a_model_loaded_with_a_device_map_answers_as_without(family, tiny_dirs, tiny_vlms, image):
    sharded = vf.load(str(tiny_dirs[family]), device_map={"": "cpu"})
    method = vf.method("adaptvis", alpha_low=0.0, alpha_high=2.0)
    plain = tiny_vlms[family].answer(image, "Where is the cup?", method=method, max_new_tokens=3, trace=True)
    mapped = sharded.answer(image, "Where is the cup?", method=method, max_new_tokens=3, trace=True)
    assert mapped.text == plain.text
    assert torch.equal(mapped.first_token_logits, plain.first_token_logits)
    assert torch.equal(mapped.trace.last_row, plain.trace.last_row)


def test_the_attention_function_makes_its_tensors_on_the_layers_device():
    """The engine's state lives on the CPU; a layer on another device (here "meta") must get every tensor the
    function creates on its own device, or the ops below would mix devices and raise."""

    B, H, H_kv, S, D = 2, 4, 2, 6, 8

    class Layer(torch.nn.Module):
        layer_idx = 1
        is_causal = True
        num_key_value_groups = H // H_kv

    query = torch.empty(B, H, S, D, device="meta")
    key, value = torch.empty(B, H_kv, S, D, device="meta"), torch.empty(B, H_kv, S, D, device="meta")
    mask = torch.ones(B, 1, S, S, dtype=torch.bool, device="meta")
    image_cols = torch.zeros(B, S, dtype=torch.bool)
    image_cols[:, 1:4] = True
    state = SteerState(image_cols=image_cols, edits=(ScaleLogits(alpha=(0.5, 2.0)),))
    with steering(state):
        out, _ = visfocus_attention(Layer(), query, key, value, mask, scaling=D**-0.5)
    assert out.device.type == "meta" and out.shape == (B, S, H, D)
