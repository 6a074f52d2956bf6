"""visfocus inside lmms-eval, through lmms-eval's own command line (subprocesses) on the built-in model organism and
the rendered-scenes task: the entry point, equal numbers to `visfocus eval` on the same samples, two processes,
`loglikelihood`, trace files and one-line errors. Needs the `[lmms]` extra and lmms-eval (README)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

import visfocus as vf  # noqa: E402
from visfocus.errors import VisfocusError  # noqa: E402
from visfocus.evaluate import RunConfig, evaluate  # noqa: E402
from visfocus.integrations.lmms import TASK_FILES  # noqa: E402
from visfocus.integrations.lmms.settings import parse_settings  # noqa: E402

BIN = Path(sys.executable).parent
LIMIT = 24


def _env(tmp_path: Path) -> dict[str, str]:
    # one thread per process (two torch processes on two cores), no network, CPU ranks on gloo, a fresh HF home
    # (no accelerate default config, no shared caches)
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "ACCELERATE_USE_CPU": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HOME": str(tmp_path / "hf")}


def run_lmms(tmp_path: Path, model_args: str, *, tasks: str = "scenes_test", limit: int = LIMIT,
             processes: int = 1, check: bool = True) -> tuple[subprocess.CompletedProcess, dict, dict[int, dict]]:
    """lmms-eval's CLI; returns the process, the task's results and the logged samples by doc id."""
    out = tmp_path / "out"
    args = ["--model", "visfocus", "--model_args", model_args, "--tasks", tasks, "--include_path", str(TASK_FILES),
            "--limit", str(limit), "--batch_size", "4", "--output_path", str(out), "--log_samples"]
    if processes == 1:
        command = [str(BIN / "lmms-eval"), *args]
    else:
        command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "0", "-m", "lmms_eval", *args]
    proc = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    if not check:
        return proc, {}, {}
    results_files = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    # lmms-eval logs an error during evaluation and still exits 0: no results file is the failure to look for
    assert proc.returncode == 0 and len(results_files) == 1, proc.stderr[-3000:]
    (results_file,) = results_files
    results = json.loads(Path(results_file).read_text())["results"]
    task, samples = tasks, {}
    for path in glob.glob(str(out / "**" / f"*_samples_{task}.jsonl"), recursive=True):
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            samples[row["doc_id"]] = row
    return proc, results[task], samples


def _answer(sample: dict) -> str:
    """A logged sample's answer text (lmms-eval 0.7 logs the text, 0.6 a list holding it)."""
    response = sample["filtered_resps"]
    return response[0] if isinstance(response, list) else response


def visfocus_eval(tmp_path: Path, method: str | None, method_args: dict, limit: int = LIMIT) -> tuple[dict, list]:
    config = RunConfig(tasks=["scenes_test"], method=method, method_args=method_args, limit=limit, batch_size=4,
                       output_path=str(tmp_path / "runs"))
    out = evaluate(config)
    rows = [json.loads(line) for line in
            (Path(out["config"]["run_dir"]) / "samples_scenes_test.jsonl").read_text().splitlines()]
    return out["tasks"]["scenes_test"]["metrics"], rows


def test_lmms_eval_finds_the_model_by_its_name():
    from lmms_eval.models import get_model

    from visfocus.integrations.lmms.model import VisFocusLmms

    assert get_model("visfocus") is VisFocusLmms


def test_lmms_eval_indexes_every_shipped_task():
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("ERROR", include_path=str(TASK_FILES))
    shipped = {p.stem for p in TASK_FILES.glob("[a-z]*.yaml")}
    assert {"vsr_random_test", "vsr_zeroshot_dev", "whatsup_controlled_a_test", "whatsup_vg_two", "scenes_test"} \
        <= shipped
    assert shipped <= set(manager.all_tasks)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _yaml(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    return yaml.load(path.read_text(), Loader=Loader)


@pytest.mark.parametrize("path", sorted(TASK_FILES.glob("[a-z]*.yaml")), ids=lambda p: p.stem)
def test_each_task_file_serves_its_visfocus_task_with_that_tasks_metrics(path):
    from visfocus.integrations.lmms.tasks import metrics_for

    config = _yaml(path)
    assert config["task"] == path.stem and config["class"] == "!function visfocus.integrations.lmms.tasks.VisfocusTask"
    if config.get("output_type") == "multiple_choice":  # scenes_test_choice: lmms-eval's own accuracy over choices
        assert [m["metric"] for m in config["metric_list"]] == ["acc"]
        return
    assert config["dataset_path"] in vf.tasks()
    if not config["dataset_path"].startswith("scenes") and not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    t = vf.task(config["dataset_path"], data_root=None if path.stem.startswith("scenes") else SHARED_DATA)
    assert [m["metric"] for m in config["metric_list"]] == list(metrics_for(t))
    assert {m["aggregation"] for m in config["metric_list"]} == {"!function visfocus.integrations.lmms.tasks.aggregate"}
    template = _yaml(TASK_FILES / config["include"])
    assert template["generation_kwargs"] == {"max_new_tokens": RunConfig().max_new_tokens, "do_sample": False,
                                             "temperature": 0, "until": []}  # as `visfocus eval` decodes


@pytest.mark.parametrize("method, method_args", [(None, {}), ("adaptvis", {"alpha_low": 0.5, "threshold": 0.9})])
def test_an_lmms_eval_run_equals_visfocus_eval_on_the_same_samples(tmp_path, method, method_args):
    args = ",".join([f"method={method or 'baseline'}", *(f"{k}={v}" for k, v in method_args.items())])
    _, results, samples = run_lmms(tmp_path, args + ",trace=mean")
    metrics, rows = visfocus_eval(tmp_path, method, method_args)
    assert results["accuracy,none"] == pytest.approx(metrics["accuracy"])
    assert results["n_unparsed,none"] == metrics["n_unparsed"]
    assert sorted(samples) == list(range(LIMIT))
    # sample by sample: the same answer text, parsed and scored the same way
    assert [_answer(samples[i]) for i in range(LIMIT)] == [row["output"] for row in rows]
    assert [samples[i]["accuracy"]["correct"] for i in range(LIMIT)] == [row["correct"] for row in rows]
    # trace=mean wrote visfocus trace files next to lmms-eval's outputs, one sample per doc
    from visfocus.tracefile import load_traces

    (folder,) = {path.parent.parent for path in (tmp_path / "out" / "visfocus_traces").rglob("*.npz")}
    label = "baseline" if method is None else "adaptvis_" + "_".join(f"{k}-{v}" for k, v in sorted(method_args.items()))
    assert folder == tmp_path / "out" / "visfocus_traces" / "organism" / label  # one folder per model and method
    traces = load_traces(folder, "scenes_test")
    assert sorted(traces, key=int) == [str(i) for i in range(LIMIT)]


def test_trace_files_of_an_earlier_run_are_refused_not_mixed(tmp_path):
    from visfocus.integrations.lmms.model import trace_folder

    settings = parse_settings({"method": "scaling_vis", "alpha": 0.5, "trace": "mean"})
    folder = trace_folder(settings, str(tmp_path), rank=1)
    assert folder == tmp_path / "visfocus_traces" / "organism" / "scaling_vis_alpha-0.5"
    (folder / "traces_scenes_test").mkdir(parents=True)
    (folder / "traces_scenes_test" / "rank1_doc0.npz").write_bytes(b"")
    assert trace_folder(settings, str(tmp_path), rank=0) == folder  # another rank's shards: this launch's own
    with pytest.raises(VisfocusError, match="already holds trace files of an earlier run"):
        trace_folder(settings, str(tmp_path), rank=1)
    other = parse_settings({"method": "scaling_vis", "alpha": 0.8, "trace": "mean"})
    assert trace_folder(other, str(tmp_path), rank=1) == folder.with_name("scaling_vis_alpha-0.8")


def test_two_processes_give_the_same_numbers(tmp_path):
    # an odd count, so that lmms-eval pads one rank with a repeated request
    _, results, samples = run_lmms(tmp_path, "method=adaptvis,alpha_low=0.5,threshold=0.9", limit=9, processes=2)
    metrics, rows = visfocus_eval(tmp_path, "adaptvis", {"alpha_low": 0.5, "threshold": 0.9}, limit=9)
    assert results["accuracy,none"] == pytest.approx(metrics["accuracy"])
    assert sorted(samples) == list(range(9))
    assert [_answer(samples[i]) for i in range(9)] == [row["output"] for row in rows]


def test_loglikelihood_scores_each_answer_word_under_the_method(tmp_path):
    from visfocus.organism import organism_path

    n = 8
    _, results, samples = run_lmms(tmp_path, "method=scaling_vis,alpha=2.0", tasks="scenes_test_choice", limit=n)
    vlm = vf.load(str(organism_path()))
    task = vf.task("scenes_test")
    method = vf.method("scaling_vis", alpha=2.0)
    correct = []
    for i, record in enumerate(task.records[:n]):
        scores = vlm.score_continuations([record.image] * len(record.options), [record.question] * len(record.options),
                                         [" " + o for o in record.options], method)
        # lmms-eval's convention: the mean negative log-likelihood per token (its multiple choice takes the lowest)
        losses = [-s.logprob / len(s.tokens) for s in scores]
        assert [float(r[0]) for r in samples[i]["filtered_resps"]] == pytest.approx(losses, abs=1e-4)
        correct.append(record.options[losses.index(min(losses))] == record.gold)
    assert results["acc,none"] == pytest.approx(sum(correct) / n)


@pytest.mark.parametrize("model_args, message", [
    ("method=adaptvs", "unknown method 'adaptvs'; registered methods: " + ", ".join(sorted(vf.METHODS))),
    ("method=adaptvis,alpha_lo=0.5", "method 'adaptvis' has no parameter alpha_lo; its parameters: "
     + ", ".join(sorted(vf.methods()["adaptvis"])) + "; model args: pretrained, method, batch_size, trace, "
     "share_prefix, trace_dir, max_batch_size, dtype, device, device_map, max_memory, revision, trust_remote_code"),
    ("method=adaptvis,alpha_low=-0.5", "alpha_low must be ≥ 0.0, got -0.5"),
])
def test_bad_model_args_are_one_error_line(tmp_path, model_args, message):
    proc, _, _ = run_lmms(tmp_path, model_args, limit=2, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("visfocus: error:")] == \
        [f"visfocus: error: {message}"]


# (answer, gold): lmms-eval's POPE score, visfocus's (the README's table)
POPE_ANSWERS = [("yes", "yes", 1.0, True), ("No", "no", 1.0, True), ("Yes.", "yes", 0.0, True),
                ("No, there is not.", "no", 0.0, True), ("Yes, there is a dog.", "yes", 0.0, True),
                ("There is a dog.", "yes", 0.0, False), ("yes", "no", 0.0, False)]


@pytest.mark.parametrize("answer, gold, lmms_score, visfocus_correct", POPE_ANSWERS)
def test_lmms_evals_pope_and_ours_score_the_same_answers_differently(answer, gold, lmms_score, visfocus_correct):
    from lmms_eval.tasks.pope.utils import pope_process_results

    from visfocus.parsing import parse_binary

    scored = pope_process_results({"question_id": 0, "category": "random", "answer": gold}, [answer])
    assert scored["pope_accuracy"]["score"] == lmms_score  # exact equality of pred.lower().strip() with yes/no
    assert (parse_binary(answer) == gold) is visfocus_correct  # the first whole yes/no/true/false word


def test_docs_need_every_image_unless_missing_ones_are_skipped():
    from visfocus.errors import VisfocusError
    from visfocus.integrations.lmms.tasks import task_docs, task_key

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    key = task_key("vsr_random_test", {"data_root": str(SHARED_DATA)})
    with pytest.raises(VisfocusError, match=r"task vsr_random_test: 2192 of 2195 images are missing"):
        task_docs(key)
    docs = task_docs(task_key("vsr_random_test", {"data_root": str(SHARED_DATA), "skip_missing": True}),
                     skip_missing=True)
    assert len(docs) == 3  # the staged COCO images (docs/benchmarks.md)

    records = vf.task("vsr_random_test", data_root=SHARED_DATA).records
    assert all(Path(records[d["index"]].image_path).is_file() for d in docs)
    assert [d["id"] for d in docs] == [records[d["index"]].id for d in docs]
    assert {d["gold"] for d in docs} <= {"yes", "no"}


def test_the_model_honours_stop_strings_and_refuses_what_it_cannot_answer():
    from lmms_eval.api.instance import Instance

    from visfocus.errors import VisfocusError
    from visfocus.integrations.lmms.model import VisFocusLmms

    META = {"task": "t", "doc_id": 0, "repeats": 1}
    record = vf.task("scenes_test")[1]
    doc = {"question": record.question}
    model = VisFocusLmms(method="dola")
    model.task_dict = {"t": {"test": [doc]}}

    def request(gen_kwargs, visuals=(record.image,)):
        return Instance("generate_until", (record.question, gen_kwargs, lambda d: list(visuals), 0, "t", "test"), 0,
                        META)

    plain = model.vlm.answer(record.image, record.question, model.method, max_new_tokens=8).text
    assert len(plain) > 1
    stop = plain[1]  # cut after the answer's first character
    assert model.generate_until([request({"max_new_tokens": 8, "until": [stop]})]) == [plain.split(stop, 1)[0]]
    assert model.generate_until([request({"max_new_tokens": 8, "until": []})]) == [plain]
    with pytest.raises(VisfocusError, match="method 'dola' does not take sampling"):
        model.generate_until([request({"max_new_tokens": 8, "temperature": 0.7})])
    with pytest.raises(VisfocusError, match="task t doc 0 has 2 images"):
        model.generate_until([request({}, visuals=(record.image, record.image))])
    agentic = Instance("generate_until", (record.question, lambda d: [], {}, 0, "t", "test"), 0, META)
    with pytest.raises(VisfocusError, match="chat-style requests"):
        model.generate_until([agentic])
    with pytest.raises(VisfocusError, match="multi-round tasks are not supported"):
        model.generate_until_multi_round([agentic])


def test_requests_are_answered_grouped_by_image_and_returned_in_lmms_evals_order(monkeypatch):
    """Requests about one image are answered one after another (so they share its prefix, as visfocus eval's samples
    do), in lmms-eval's order within each image; the answers come back in lmms-eval's order, equal to answering each
    request alone. Without prefix sharing the order is lmms-eval's."""
    from lmms_eval.api.instance import Instance

    from visfocus.integrations.lmms.model import VisFocusLmms

    records = vf.task("scenes_test")[:2]
    order = [0, 1, 0, 1, 0]  # image of each request, interleaved
    docs = [{"question": f"{records[k].question} ({n})"} for n, k in enumerate(order)]

    def request(n: int):
        return Instance("generate_until", (docs[n]["question"], {"max_new_tokens": 2, "until": []},
                                           lambda doc, k=order[n]: [records[k].image], n, "t", "test"), n,
                        {"task": "t", "doc_id": n, "repeats": 1})

    for share, expected_calls in ((True, [0, 2, 4, 1, 3]), (False, [0, 1, 2, 3, 4])):
        model = VisFocusLmms(method="scaling_vis", batch_size=1, share_prefix=share)
        model.task_dict = {"t": {"test": docs}}
        alone = [model.vlm.answer(records[order[n]].image, docs[n]["question"], model.method, max_new_tokens=2).text
                 for n in range(len(order))]
        asked, answer_batch = [], model.vlm.answer_batch

        def recording(images, questions, *args, _inner=answer_batch, _asked=asked, **kwargs):
            _asked.extend(int(q.rsplit("(", 1)[1].rstrip(")")) for q in questions)
            return _inner(images, questions, *args, **kwargs)

        monkeypatch.setattr(model.vlm, "answer_batch", recording)
        assert model.generate_until([request(n) for n in range(len(order))]) == alone
        assert asked == expected_calls
