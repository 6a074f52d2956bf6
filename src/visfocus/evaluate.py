"""The evaluation runner behind ``visfocus eval`` and ``visfocus sweep``: tasks × one model × one or more methods,
batched, resumable, data-parallel. What a run is and owns lives in ``visfocus.run`` (its configuration, folder,
identity, sample files and results); this module drives them, in the order ``evaluate_many`` reads."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visfocus import distributed
from visfocus.api import VLM, load_image, load_model
from visfocus.benchmarks import Record, Task, task
from visfocus.errors import VisfocusError
from visfocus.interventions import method as build_method
from visfocus.run.config import RunConfig
from visfocus.run.folder import RunFolder, run_dir, slug
from visfocus.run.identity import check_commit, recorded_identity, run_identity
from visfocus.run.lock import now
from visfocus.run.progress import Progress
from visfocus.run.records import check_images, group_by_image, image_group, select
from visfocus.run.results import Results, finished, started, task_result
from visfocus.run.samples import sample_row

__all__ = ["LoadOnce", "RunConfig", "evaluate", "evaluate_many"]


def evaluate(config: RunConfig, after_batch: Callable[[str, int], None] | None = None,
             model: Callable[[], VLM] | None = None) -> Results:
    """Run (or resume) the evaluation; returns the results dict also written to ``<run dir>/results.json``.
    ``model``: gives the loaded VLM of ``config.model`` when there is work (a sweep loads it once for all trials);
    by default it is loaded here (``visfocus.api.load_model``).

    The run folder has one writer: a second run on it is refused while the first holds its lock. A resume must match
    the recorded identity (``visfocus.run.identity``); each launch is appended to ``provenance``. Sample rows are
    appended and fsync'd per batch, every other file is replaced atomically and durably (``visfocus.durable``);
    after each task every usable selected sample must have its row, else the run ends with an error naming the
    shortfall.

    Under ``torchrun`` / ``accelerate launch`` every rank runs this: the samples not yet finished (by any earlier
    run, whatever its number of ranks) are split by image across ranks (``distributed.shard``), each rank appends to
    ``samples_<task>.rank<r>.jsonl``, and rank 0 (which holds the lock) merges them in sample order into
    ``samples_<task>.jsonl`` and writes ``results.json``; every rank returns the same results.

    With ``share_prefix`` (the default) the samples of one image are answered one after another, so that its
    prefill (vision tower and prompt up to the question) runs once for all of them; the answers are the same."""
    return evaluate_many([config], after_batch, model)[0]


@dataclass
class _Run:
    """One configuration of ``evaluate_many``: its method, folder, identity, results and samples to answer."""

    config: RunConfig
    method: Any  # the built method, None for the baseline
    folder: RunFolder
    identity: dict[str, Any]
    previous: Results | None = None  # rank 0: what the folder held from earlier launches
    out: Any = None  # rank 0: the results this launch writes
    todo: dict[str, set[str]] = field(default_factory=dict)  # per task, the ids not answered yet
    before: dict[str, int] = field(default_factory=dict)  # per task, the rows on disk when this launch started
    absent: dict[str, list[str]] = field(default_factory=dict)  # rank 0: per task, usable samples with no row

    @classmethod
    def of(cls, config: RunConfig) -> _Run:
        method = build_method(config.method, **config.method_args) if config.method else None
        return cls(config, method, RunFolder(run_dir(config)), run_identity(config, method))


@dataclass
class _Work:
    """What every run of one ``evaluate_many`` shares: the tasks, their selected records, the ids with unusable
    images, and this rank's records still to answer by some run, in the order they are answered."""

    tasks: dict[str, Task]
    selected: dict[str, list[Record]]
    missing: dict[str, set[str]]
    order: dict[str, list[Record]] = field(default_factory=dict)

    def usable(self, name: str) -> list[Record]:
        return [r for r in self.selected[name] if r.id not in self.missing.get(name, ())]


def evaluate_many(configs: list[RunConfig], after_batch: Callable[[str, int], None] | None = None,
                  model: Callable[[], VLM] | None = None) -> list[Results]:
    """Several runs that differ only in their method and its arguments (a sweep's trials), each exactly as
    ``evaluate`` would do it, answered sample-major: every batch of samples under each run in turn. With prefix
    sharing the model then keeps each batch's unedited prompts between runs, so a method that edits only the last
    prompt token (ScalingVis, AdaptVis, CLVS) re-runs only that token per run. ``after_batch(task, b)`` is called
    after batch ``b`` of a task has been answered under every run."""
    ranks = distributed.current()
    base = _common(configs)
    work = _select(base)
    runs = [_Run.of(config) for config in configs]
    for run in runs:
        distributed.same_everywhere(ranks, dataclasses.asdict(run.config), "configuration")
    opened: list[_Run] = []
    try:
        distributed.on_main(ranks, lambda: _open(runs, opened, work))
        ranks.barrier()  # rank 0 holds the folders: the files read below are the ones this launch continues
        _plan(runs, work, ranks)
        vlm = _load(runs, work, ranks, model)  # a bad model, layer or question fails before anything is written
        distributed.on_main(ranks, lambda: _start(runs, vlm))
        ranks.barrier()
        _answer(runs, work, vlm, ranks, after_batch)
        return _finish(runs, ranks)
    finally:
        for run in opened:
            run.folder.release()


def _common(configs: list[RunConfig]) -> RunConfig:
    """Validate every configuration; they must differ in their method only. The first is the base of all."""
    base = configs[0]
    for config in configs:
        config.validate()
        differ = [k for k in dataclasses.asdict(config)
                  if k not in ("method", "method_args") and getattr(config, k) != getattr(base, k)]
        if differ:
            raise VisfocusError(f"evaluate_many needs runs that differ only in method and method_args, not in "
                                f"{', '.join(differ)}")
    return base


def _select(base: RunConfig) -> _Work:
    """Build the tasks and select their records; unusable images stop here unless ``skip_missing``."""
    tasks = {name: task(name, base.data_root, base.prompt_style, base.scorer) for name in base.tasks}
    selected = {name: select(t, base.offset, base.limit) for name, t in tasks.items()}
    return _Work(tasks, selected, check_images(selected, base.skip_missing))


def _open(runs: list[_Run], opened: list[_Run], work: _Work) -> None:
    """Rank 0: open every run folder (lock it, and check that an earlier run there is this one)."""
    for run in runs:
        run.folder.take()
        opened.append(run)
        run.previous = run.folder.resumed(run.identity, work.tasks)


def _plan(runs: list[_Run], work: _Work, ranks: distributed.Ranks) -> None:
    """What is left to answer: per run, the usable samples with no row on disk; this rank's share of the samples any
    run still needs (split by image), grouped by image when prefixes are shared."""
    for run in runs:
        for name in work.tasks:
            finished_rows = run.folder.finished_rows(name)
            run.before[name] = len(finished_rows)
            run.todo[name] = {r.id for r in work.usable(name) if r.id not in finished_rows}
    for name in work.tasks:
        needed = [r for r in work.selected[name] if any(r.id in run.todo[name] for run in runs)]
        mine = distributed.shard(needed, ranks, image_group)
        work.order[name] = group_by_image(mine) if runs[0].config.share_prefix else mine


def _load(runs: list[_Run], work: _Work, ranks: distributed.Ranks, model: Callable[[], VLM] | None) -> VLM | None:
    """The model, when this rank has samples to answer, with every method's layers and every question checked."""
    if not any(work.order.values()):
        return None
    base = runs[0].config
    vlm = model() if model is not None else load_model(base.model, base.model_args, ranks)
    for run in runs:
        if run.method is not None:
            run.method.params.validate(vlm.num_layers)
    vlm.check_questions([r.question for records in work.order.values() for r in records],
                        max_new_tokens=base.max_new_tokens)
    return vlm


def _start(runs: list[_Run], vlm: VLM | None) -> None:
    """Rank 0, before the first answer: check the loaded weights against the recorded ones (a Hub commit), then
    write each run's results with this launch appended to its provenance."""
    from visfocus.models.loading import hub_commit

    base = runs[0]
    commit = hub_commit(base.config.model, base.identity["model_args"]["revision"]) \
        if vlm is not None and base.config.model is not None else None
    for run in runs:
        recorded = recorded_identity(run.previous) if run.previous is not None else {}
        check_commit(run.folder.path, recorded, run.identity, commit)
        run.out = started(run.previous, run.config.record(), run.identity, _method_record(run, vlm),
                          distributed.current().world_size)
        run.folder.write_results(run.out)


def _method_record(run: _Run, vlm: VLM | None) -> dict[str, Any]:
    """The method with every parameter, and its layer parameters given as fractions of the depth resolved as this
    model's layers (kept from an earlier launch when this one loads no model)."""
    method = {"name": run.config.method_name,
              "args": dataclasses.asdict(run.method.params) if run.method else {}}
    if run.method is not None and vlm is not None and (resolved := run.method.resolved(vlm.num_layers)):
        method["resolved"] = resolved
    elif "resolved" in (run.previous or {}).get("method", {}):
        method["resolved"] = run.previous["method"]["resolved"]
    return method


def _answer(runs: list[_Run], work: _Work, vlm: VLM | None, ranks: distributed.Ranks,
            after_batch: Callable[[str, int], None] | None) -> None:
    """Answer every task, then (rank 0) merge and score it, so that a later kill keeps its results."""
    import torch

    base = runs[0].config
    several = vlm is not None and len(runs) > 1 and base.share_prefix
    # several runs ask the same batch one after another: keep its whole unedited prompts for the next run
    with vlm.keeping_prompts() if several else contextlib.nullcontext():
        torch.manual_seed(base.seed)
        for name in work.tasks:
            _answer_task(runs, work, name, vlm, ranks, after_batch)
            ranks.barrier()  # every rank's samples of this task are on disk
            if ranks.is_main:
                _score_task(runs, work, name)


def _answer_task(runs: list[_Run], work: _Work, name: str, vlm: VLM | None, ranks: distributed.Ranks,
                 after_batch: Callable[[str, int], None] | None) -> None:
    """This rank's share of one task, batch by batch, each batch under every run that still needs it."""
    base = runs[0].config
    logs = [run.folder.sample_log(name, ranks.rank if ranks.distributed else None) for run in runs]
    n_usable = len(work.usable(name))
    progress = Progress([run.folder for run in runs], name, n_usable * len(runs),
                        sum(n_usable - len(run.todo[name]) for run in runs), shown=ranks.is_main)
    try:  # the bar is closed (its line ended) also when a batch fails, so an error gets its own line
        for b, start in enumerate(range(0, len(work.order[name]), base.batch_size)):
            chunk = work.order[name][start:start + base.batch_size]
            by_rows: dict[tuple[str, ...], list[int]] = {}  # the runs that need exactly these samples of the chunk
            for i, run in enumerate(runs):
                batch = tuple(r.id for r in chunk if r.id in run.todo[name])
                if batch:
                    by_rows.setdefault(batch, []).append(i)
            for ids, members in by_rows.items():
                batch = [r for r in chunk if r.id in ids]
                if len(members) > 1 and base.trace is None:  # every run's method on one forward where it can
                    rows = answer_rows_together(vlm, work.tasks[name], batch, [runs[i].method for i in members],
                                                base)
                else:
                    rows = [answer_rows(vlm, work.tasks[name], batch, runs[i].method, runs[i].config,
                                        runs[i].folder.traces(name)) for i in members]
                for i, run_rows in zip(members, rows):
                    logs[i].append(run_rows)
                    progress.update(len(batch))
            if after_batch:
                after_batch(name, b)
    finally:
        progress.close()


def answer_rows(vlm: VLM, t: Task, batch: list[Record], method, config: RunConfig, trace_folder) -> list[dict]:
    """One batch answered under ``method``: its sample rows (``visfocus.run.samples.sample_row``), and with a trace
    mode its trace shard (written before the rows are logged: a logged sample always has its trace)."""
    from visfocus.tracefile import sample_arrays, write_shard

    answers = vlm.answer_batch(_images(batch), [r.question for r in batch], method,
                               max_new_tokens=config.max_new_tokens, options=[r.options or None for r in batch],
                               trace=config.trace is not None, share_prefix=config.share_prefix)
    if config.trace:
        write_shard(trace_folder, slug(f"batch_{batch[0].id}"),
                    {r.id: sample_arrays(a.trace, a.extras, config.trace) for r, a in zip(batch, answers)})
    return _sample_rows(vlm, t, batch, answers, config)


def answer_rows_together(vlm: VLM, t: Task, batch: list[Record], methods: list, config: RunConfig
                         ) -> list[list[dict]]:
    """One batch answered under several methods (runs without traces), each method's sample rows: the variant
    methods (the plain model, ScalingVis, AdaptVis) from one forward (``VLM.answer_variants``), the same rows as
    ``answer_rows`` gives each alone."""
    answers = vlm.answer_variants(_images(batch), [r.question for r in batch], methods,
                                  max_new_tokens=config.max_new_tokens, options=[r.options or None for r in batch],
                                  share_prefix=config.share_prefix, max_rows=VARIANT_ROWS * len(batch))
    return [_sample_rows(vlm, t, batch, method_answers, config) for method_answers in answers]


VARIANT_ROWS = 8  # methods whose decoding runs as rows of one generate at once (memory: that many KV caches)


def _images(batch: list[Record]) -> list:
    return [r.image if r.image is not None else load_image(r.image_path) for r in batch]


def _sample_rows(vlm: VLM, t: Task, batch: list[Record], answers: list, config: RunConfig) -> list[dict]:
    rows = []
    for r, a in zip(batch, answers):
        parsed = t.parse(a.text, r)
        prompt = vlm.adapter.build_prompt(r.question) if config.log_samples else None
        rows.append(sample_row(r, a, parsed, t.is_correct(a.text, parsed, r), len(batch), prompt))
    return rows


def _score_task(runs: list[_Run], work: _Work, name: str) -> None:
    """Rank 0: merge the task's sample files, score it and write each run's results."""
    missing = work.missing.get(name, set())
    for run in runs:
        rows = run.folder.merge(name, work.selected[name])
        run.out["tasks"][name] = task_result(work.tasks[name], work.selected[name], missing, rows)
        run.absent[name] = [r.id for r in work.usable(name) if r.id not in rows]
        run.out["provenance"][-1]["samples_added"][name] = len(rows) - run.before[name]
        run.out["updated_at"] = now()
        run.folder.write_results(run.out)


def _finish(runs: list[_Run], ranks: distributed.Ranks) -> list[Results]:
    """Rank 0 closes the launch (cost totals, end time); every rank returns the results on disk, each with its
    ``run_dir``; a sample without its row is one error."""
    if ranks.is_main:
        for run in runs:
            finished(run.out)
            run.folder.write_results(run.out)
    ranks.barrier()  # the merged results are on disk
    results = []
    for run in runs:
        out = run.out if ranks.is_main else run.folder.read_results()
        out["config"]["run_dir"] = str(run.folder.path)
        results.append(out)
    distributed.on_main(ranks, lambda: check_complete(runs))
    return results


def check_complete(runs: list[_Run]) -> None:
    """After the run every usable selected sample has its row (``effective == selected − missing``); a shortfall is
    one error naming the task and the ids, never a quietly smaller denominator."""
    short = [f"{run.folder.path.name}/{name}: {len(ids)} samples have no row (e.g. {', '.join(ids[:5])})"
             for run in runs for name, ids in run.absent.items() if ids]
    if short:
        raise VisfocusError(f"samples were lost: {'; '.join(short)}; the results file records the counts — run the "
                            "same command to answer them")


class LoadOnce:
    """A model loaded the first time it is asked for and then kept (a sweep's trials share it)."""

    def __init__(self, model: str | None, model_args: dict[str, Any] | None = None) -> None:
        self.model, self.model_args, self.vlm = model, model_args or {}, None

    def __call__(self) -> VLM:
        if self.vlm is None:
            self.vlm = load_model(self.model, self.model_args, distributed.current())
        return self.vlm
