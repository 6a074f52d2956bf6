"""The evaluation runner behind ``visfocus eval``: tasks × one model × one method, batched, resumable, with per-sample
JSONL and a typed results.json (see ``visfocus.results``)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visfocus import distributed
from visfocus import results as res
from visfocus.benchmarks import Record, Task, task
from visfocus.errors import VisfocusError
from visfocus.images import image_file_problem
from visfocus.models.loading import MODEL_ARGS, parse_max_memory, parse_model_args  # noqa: F401  (re-exported)
from visfocus.resume import check_data_roots, check_resumable, recorded_identity, run_identity
from visfocus.runconfig import RunConfig, run_dir, slug
from visfocus.runfolder import Progress, RunFolder, finished_rows, merge_samples, samples_path


def select(t: Task, config: RunConfig) -> list[Record]:
    end = None if config.limit is None else config.offset + config.limit
    return t.records[config.offset:end]


def image_problem(record: Record) -> str | None:
    """Why this record's image cannot be used, or None (``images.image_file_problem``: the whole file is decoded, so a
    truncated one counts)."""
    if record.image is not None:
        return None
    if record.image_path is None:
        return "no image path (" + str(record.meta.get("image_missing_reason", "unknown")) + ")"
    return image_file_problem(record.image_path)


def check_images(selected: dict[str, list[Record]], skip_missing: bool) -> dict[str, set[str]]:
    """Ids with unusable images per task (each file checked once); raise (before any forward pass) unless
    ``skip_missing``."""
    missing: dict[str, set[str]] = {}
    examples: dict[str, str] = {}  # one example sample per distinct kind of problem
    checked: dict[str, str | None] = {}
    for name, records in selected.items():
        for r in records:
            if r.image is None and r.image_path is not None and r.image_path not in checked:
                checked[r.image_path] = image_problem(r)
            problem = checked.get(r.image_path) if r.image is None and r.image_path is not None else image_problem(r)
            if problem:
                missing.setdefault(name, set()).add(r.id)
                kind = problem.split(":")[0] if ": " in problem else problem
                examples.setdefault(kind, f"{name}#{r.id} {problem}")
    total = sum(len(v) for v in missing.values())
    if total and not skip_missing:
        n = sum(len(v) for v in selected.values())
        shown = "; ".join(list(examples.values())[:3])
        raise VisfocusError(f"{total} of {n} images are missing or unusable (e.g. {shown}); fix --data_root or "
                            "pass --skip_missing to evaluate the rest and count them in results")
    return missing


def evaluate(config: RunConfig, after_batch: Callable[[str, int], None] | None = None,
             model: Callable[[], Any] | None = None) -> res.Results:
    """Run (or resume) the evaluation; returns the results dict also written to ``<run dir>/results.json``.
    ``model``: gives the loaded VLM of ``config.model`` when there is work (a sweep loads it once for all trials);
    by default it is loaded here.

    The run folder has one writer: a second run on it is refused while the first holds its lock. A resume must match
    the recorded identity (``run_identity``); each launch is appended to ``provenance``. Sample rows are appended and
    fsync'd per batch, every other file is replaced atomically and durably (``visfocus.durable``); after each task
    every usable selected sample must have its row, else the run ends with an error naming the shortfall.

    Under ``torchrun`` / ``accelerate launch`` every rank runs this: the samples not yet finished (by any earlier
    run, whatever its number of ranks) are split by image across ranks (``distributed.shard``), each rank appends to
    ``samples_<task>.rank<r>.jsonl``, and rank 0 (which holds the lock) merges them in sample order into
    ``samples_<task>.jsonl`` and writes ``results.json``; every rank returns the same results.

    With ``prefix_sharing`` (the default) the samples of one image are answered one after another, so that its
    prefill (vision tower and prompt up to the question) runs once for all of them; the answers are the same."""
    return evaluate_many([config], after_batch, model)[0]


@dataclass
class _Run:
    """One configuration of ``evaluate_many``: its method, folder, identity, results so far and samples to answer."""

    config: RunConfig
    method: Any
    folder: RunFolder
    identity: dict[str, Any]
    todo: dict[str, set[str]] = field(default_factory=dict)  # per task, the ids this rank still answers
    before: dict[str, int] = field(default_factory=dict)  # per task, the rows on disk when this launch started
    absent: dict[str, list[str]] = field(default_factory=dict)  # rank 0: per task, usable samples with no row
    out: Any = None  # rank 0: the results written to results.json


def on_main(ranks: distributed.Ranks, work: Callable[[], None]) -> None:
    """Run ``work`` on rank 0 only; a ``VisfocusError`` there is raised on every rank (so none waits forever)."""
    message = None
    if ranks.is_main:
        try:
            work()
        except VisfocusError as err:
            message = str(err)
    message = ranks.broadcast(message)
    if message is not None:
        raise VisfocusError(message)


def evaluate_many(configs: list[RunConfig], after_batch: Callable[[str, int], None] | None = None,
                  model: Callable[[], Any] | None = None) -> list[res.Results]:
    """Several runs that differ only in their method and its arguments (a sweep's trials), each exactly as
    ``evaluate`` would do it, answered sample-major: every batch of samples under each run in turn. With prefix
    sharing the model then keeps each batch's unedited prompts between runs, so a method that edits only the last
    prompt token (ScalingVis, AdaptVis, CLVS) re-runs only that token per run. ``after_batch(task, b)`` is called
    after batch ``b`` of a task has been answered under every run."""
    import visfocus as vf

    ranks = distributed.current()
    base = configs[0]
    for config in configs:
        config.validate()
        differ = [k for k in dataclasses.asdict(config)
                  if k not in ("method", "method_args") and getattr(config, k) != getattr(base, k)]
        if differ:
            raise VisfocusError(f"evaluate_many needs runs that differ only in method and method_args, not in "
                                f"{', '.join(differ)}")
    built = {name: task(name, base.data_root, base.prompt_style, base.scorer) for name in base.tasks}
    selected = {name: select(t, base) for name, t in built.items()}
    missing = check_images(selected, base.skip_missing)
    runs = []
    for config in configs:
        method = vf.method(config.method, **config.method_args) if config.method else None
        runs.append(_Run(config, method, RunFolder(run_dir(config, config.method_args)), run_identity(config, method)))
        distributed.same_everywhere(ranks, dataclasses.asdict(config), "configuration")
    taken: list[_Run] = []
    try:
        on_main(ranks, lambda: _open(runs, taken, built))
        return _evaluate_runs(runs, built, selected, missing, ranks, after_batch, model)
    finally:
        for run in taken:
            run.folder.release()


def _open(runs: list[_Run], taken: list[_Run], built: dict[str, Task]) -> None:
    """Rank 0: lock every run folder (creating it when missing) and check that each earlier run there is this one."""
    for run in runs:
        run.folder.take()
        taken.append(run)
        previous = run.folder.previous()
        if previous is not None:
            check_resumable(run.folder.path, recorded_identity(previous), run.identity)
            check_data_roots(run.folder.path, previous, built)
        run.out = previous


def _evaluate_runs(runs: list[_Run], built: dict[str, Task], selected: dict[str, list[Record]],
                   missing: dict[str, set[str]], ranks: distributed.Ranks,
                   after_batch: Callable[[str, int], None] | None, model: Callable[[], Any] | None
                   ) -> list[res.Results]:
    import torch

    base = runs[0].config
    ranks.barrier()  # rank 0 holds the folders: the files read below are the ones this launch continues
    for run in runs:
        for name in built:
            finished = finished_rows(run.folder.path, name)
            run.before[name] = len(finished)
            run.todo[name] = {r.id for r in selected[name] if r.id not in missing.get(name, set()) and
                              r.id not in finished}
    # the samples any run still needs, this rank's share (by image), grouped by image when prefixes are shared
    order = {name: distributed.shard([r for r in selected[name] if any(r.id in run.todo[name] for run in runs)],
                                     ranks, image_group) for name in built}
    if base.prefix_sharing:
        order = {name: group_by_image(records) for name, records in order.items()}
    vlm = None
    if any(order.values()):  # a bad model, layer or question fails before anything is written
        vlm = model() if model is not None else load_model(base, ranks)
        for run in runs:
            if run.method is not None:
                run.method.params.validate(vlm.num_layers)
        vlm.check_questions([r.question for records in order.values() for r in records],
                            max_new_tokens=base.max_new_tokens)
    on_main(ranks, lambda: _start(runs, vlm))
    ranks.barrier()

    # several runs ask the same batch one after another: keep its whole unedited prompts for the next run
    several = vlm is not None and len(runs) > 1 and base.prefix_sharing
    with vlm.keeping_prompts() if several else contextlib.nullcontext():
        torch.manual_seed(base.seed)
        for name, t in built.items():
            rank = ranks.rank if ranks.distributed else None
            logs = [res.SampleLog(samples_path(run.folder.path, name, rank)) for run in runs]
            n_usable = len(selected[name]) - len(missing.get(name, ()))
            progress = Progress([run.folder.path for run in runs], name, n_usable * len(runs),
                                sum(n_usable - len(run.todo[name]) for run in runs), shown=ranks.is_main)
            try:  # the bar is closed (its line ended) also when a batch fails, so an error gets its own line
                for b, start in enumerate(range(0, len(order[name]), base.batch_size)):
                    chunk = order[name][start:start + base.batch_size]
                    for run, log in zip(runs, logs):
                        batch = [r for r in chunk if r.id in run.todo[name]]
                        if batch:
                            log.append(_answer_rows(vlm, t, batch, run.method, run.config,
                                                    run.folder.path / f"traces_{name}"))
                            progress.update(len(batch))
                    if after_batch:
                        after_batch(name, b)
            finally:
                progress.close()
            ranks.barrier()  # every rank's samples of this task are on disk
            if ranks.is_main:  # merged and scored task by task, so a later kill keeps this task's results
                for run in runs:
                    rows = merge_samples(run.folder.path, name, selected[name])
                    run.out["tasks"][name] = _task_result(t, selected[name], missing.get(name, set()), rows)
                    run.absent[name] = [r.id for r in selected[name]
                                        if r.id not in rows and r.id not in missing.get(name, set())]
                    run.out["provenance"][-1]["samples_added"][name] = len(rows) - run.before[name]
                    run.out["updated_at"] = res.now()
                    res.write_json(run.folder.results_path, run.out)
    if ranks.is_main:
        for run in runs:
            run.out["cost"] = res.empty_cost()
            for name in run.out["tasks"]:
                res.add_cost(run.out["cost"], run.out["tasks"][name]["cost"])
            run.out["provenance"][-1]["ended_at"] = run.out["updated_at"] = res.now()
            res.write_json(run.folder.results_path, run.out)
    ranks.barrier()  # the merged results are on disk
    results = []
    for run in runs:
        out = run.out if ranks.is_main else res.read_json(run.folder.results_path, "results file")
        out["config"]["run_dir"] = str(run.folder.path)
        results.append(out)
    on_main(ranks, lambda: check_complete(runs))
    return results


def _start(runs: list[_Run], vlm) -> None:
    """Rank 0, before the first answer: check the loaded weights against the recorded ones (a Hub commit), then
    write each run's results with this launch appended to its provenance."""
    from visfocus.models.loading import hub_commit

    commit = hub_commit(runs[0].config.model, runs[0].identity["model_args"]["revision"]) \
        if vlm is not None and runs[0].config.model is not None else None
    for run in runs:
        recorded = recorded_identity(run.out) if run.out is not None else {}
        if commit is not None:
            if recorded.get("weights_commit") not in (None, commit):
                raise VisfocusError(f"{run.folder.path} holds a run of {run.config.model} at commit "
                                    f"{recorded['weights_commit']}, but the loaded weights are commit {commit}; "
                                    "pass model_args revision=<that commit> to resume it, or use another --output_path")
            run.identity["weights_commit"] = commit
        elif recorded.get("weights_commit"):
            run.identity["weights_commit"] = recorded["weights_commit"]
        run.out = _results_to_write(run, vlm)
        res.write_json(run.folder.results_path, run.out)


def _results_to_write(run: _Run, vlm) -> res.Results:
    """This launch's results: the earlier launches' tasks, creation and provenance kept, this launch appended."""
    previous = run.out or {}
    method = {"name": run.config.method or "baseline",
              "args": dataclasses.asdict(run.method.params) if run.method else {}}
    if run.method is not None and vlm is not None and (resolved := run.method.resolved(vlm.num_layers)):
        method["resolved"] = resolved  # layer parameters given as fractions of the depth, as this model's layers
    elif "resolved" in previous.get("method", {}):
        method["resolved"] = previous["method"]["resolved"]
    first = res.launch(distributed.current().world_size)
    return {"schema_version": res.SCHEMA_VERSION, "created_at": previous.get("created_at", first["started_at"]),
            "updated_at": first["started_at"], "config": dataclasses.asdict(run.config), "identity": run.identity,
            "method": method, "versions": previous.get("versions", first["versions"]),
            "git_hash": previous.get("git_hash", first["git_hash"]),
            "provenance": [*previous.get("provenance", []), first], "tasks": dict(previous.get("tasks", {})),
            "cost": res.empty_cost()}


def check_complete(runs: list[_Run]) -> None:
    """After the run every usable selected sample has its row (``effective == selected − missing``); a shortfall is
    one error naming the task and the ids, never a quietly smaller denominator."""
    short = [f"{run.folder.path.name}/{name}: {len(ids)} samples have no row (e.g. {', '.join(ids[:5])})"
             for run in runs for name, ids in run.absent.items() if ids]
    if short:
        raise VisfocusError(f"samples were lost: {'; '.join(short)}; the results file records the counts — run the "
                            "same command to answer them")


def group_by_image(records: list[Record]) -> list[Record]:
    """The records with each image's samples together: images in order of first appearance, samples in order."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(image_group(r), []).append(r)
    return [r for group in groups.values() for r in group]


class LoadOnce:
    """A run configuration's model, loaded the first time it is asked for and then kept (for a sweep's trials)."""

    def __init__(self, config: RunConfig) -> None:
        self.config, self.vlm = config, None

    def __call__(self):
        if self.vlm is None:
            self.vlm = load_model(self.config, distributed.current())
        return self.vlm


def image_group(record: Record) -> str:
    """What keeps samples together on one rank: their image (a file, or the record itself for a generated one)."""
    return record.image_path if record.image is None and record.image_path else f"record:{record.id}"


def load_model(config: RunConfig, ranks: distributed.Ranks | None = None):
    """The VLM of ``config.model`` (None: the model organism) with ``config.model_args`` (``parse_model_args``: dtype,
    device, device_map, max_memory, revision, trust_remote_code); under several ranks, ``cuda`` is this rank's GPU and
    ``device_map`` shards over this rank's share of the GPUs."""
    import torch

    import visfocus as vf
    from visfocus.organism import NOTE, organism_path

    ranks = ranks or distributed.Ranks()
    args = parse_model_args(config.model_args)
    if config.model is None and ranks.is_main:
        print(f"[visfocus] {NOTE}", file=sys.stderr)
    path = str(organism_path()) if config.model is None else config.model
    args["device"] = ranks.device(args["device"])
    if args["device_map"] is not None and ranks.distributed and torch.cuda.is_available():
        # data × model parallel: each rank shards its model over its own GPUs only
        sizes = {gpu: f"{torch.cuda.get_device_properties(gpu).total_memory}B"
                 for gpu in range(torch.cuda.device_count())}
        args["max_memory"] = rank_max_memory(args["max_memory"], ranks.gpus(len(sizes)), sizes)
    return vf.load(path, **args)


def rank_max_memory(max_memory: dict | None, gpus: list[int], sizes: dict[int, str]) -> dict:
    """``max_memory`` for one rank: its own GPUs only (the user's cap where given, else the whole device), plus
    the user's CPU cap; devices left out are not used by ``device_map="auto"``."""
    given = max_memory or {}
    return {gpu: given.get(gpu, sizes[gpu]) for gpu in gpus} | ({"cpu": given["cpu"]} if "cpu" in given else {})


def _answer_rows(vlm, t: Task, batch: list[Record], method, config: RunConfig, trace_folder: Path) -> list[dict]:
    from visfocus.api import load_image
    from visfocus.tracefile import sample_arrays, write_shard

    images = [r.image if r.image is not None else load_image(r.image_path) for r in batch]
    answers = vlm.answer_batch(images, [r.question for r in batch], method, max_new_tokens=config.max_new_tokens,
                               options=[r.options or None for r in batch], trace=config.trace is not None,
                               share_prefix=config.prefix_sharing)
    if config.trace:  # written before the samples are logged: a logged sample always has its trace
        write_shard(trace_folder, slug(f"batch_{batch[0].id}"),
                    {r.id: sample_arrays(a.trace, a.extras, config.trace) for r, a in zip(batch, answers)})
    rows = []
    for r, a in zip(batch, answers):
        parsed = t.parse(a.text, r)
        row = {"id": r.id, "question": r.question, "gold": r.gold, "output": a.text, "parsed": parsed,
               "correct": t.is_correct(a.text, parsed, r), "confidence": a.confidence, "first_token": a.first_token,
               "alpha_used": a.alpha_used, "relation": r.relation, "group": r.group, "pair": r.pair,
               "passes": a.cost["forward_passes"], "prefill_tokens": a.cost["prefill_tokens"],
               "decode_tokens": a.cost["decode_tokens"], "shared_prefix_tokens": a.cost["shared_prefix_tokens"],
               "seconds": a.cost["seconds"] / len(batch),
               "batch_size": len(batch), **({"method_extras": a.extras} if a.extras else {})}
        if config.log_samples:
            row["prompt"] = vlm.adapter.build_prompt(r.question)
        rows.append(row)
    return rows


def _task_result(t: Task, selected: list[Record], missing: set[str], found: dict[str, dict]) -> res.TaskResult:
    rows = [found[r.id] for r in selected if r.id not in missing and r.id in found]
    cost = res.empty_cost()
    for row in rows:
        # A batch's passes serve all its rows: each row carries its share.
        res.add_cost(cost, {"forward_passes": row["passes"] / row["batch_size"],
                            "prefill_tokens": row["prefill_tokens"],
                            "decode_tokens": row["decode_tokens"], "seconds": row["seconds"]})
    cost["forward_passes"] = round(cost["forward_passes"])
    return {"task": t.describe(), "split": t.split_info(),
            "n_samples": {"original": len(t), "selected": len(selected), "missing_images": len(missing),
                          "effective": len(rows)},
            "metrics": t.score(rows) if rows else {}, "cost": cost}
