"""The evaluation runner behind ``visfocus eval``: tasks × one model × one method, batched, resumable, with per-sample
JSONL and a typed results.json (see ``visfocus.results``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from visfocus import distributed
from visfocus import results as res
from visfocus.benchmarks import Record, Task, task
from visfocus.errors import VisfocusError
from visfocus.runfolder import Progress, merge_samples, rank_rows

# Changing any of these changes the answers, so a run folder holding another value is refused, never mixed.
IDENTITY_KEYS = ("model", "model_args", "method", "method_args", "prompt_style", "scorer", "max_new_tokens", "seed")


@dataclass
class RunConfig:
    model: str | None = None  # Hub id or local path; None = the built-in model organism
    model_args: dict[str, Any] = field(default_factory=dict)  # dtype, device, trust_remote_code
    tasks: list[str] = field(default_factory=lambda: ["scenes_test"])
    method: str | None = None
    method_args: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    limit: int | None = None
    offset: int = 0
    seed: int = 0
    batch_size: int = 1
    max_new_tokens: int = 8
    prompt_style: str | None = None
    scorer: str = "exact"
    output_path: str = "runs"
    log_samples: bool = False  # also store the full chat prompt of every sample
    skip_missing: bool = False
    trace: str | None = None  # "heads" or "mean": write traces_<task>/ (see visfocus.tracefile)
    prefix_sharing: bool = True  # answer one image's samples from one prefill of its prefix (same answers, faster)

    def validate(self) -> None:
        if not isinstance(self.prefix_sharing, bool):
            raise VisfocusError(f"prefix_sharing must be true or false, got {self.prefix_sharing!r}")
        if self.trace is not None and self.trace not in ("heads", "mean"):
            raise VisfocusError(f"--trace must be heads or mean, got {self.trace!r}")
        if not self.tasks:
            raise VisfocusError("no task given; `visfocus list tasks` shows them")
        for name, value, low in (("--limit", self.limit, 1), ("--offset", self.offset, 0),
                                 ("--batch_size", self.batch_size, 1), ("--max_new_tokens", self.max_new_tokens, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise VisfocusError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "run"


def run_dir(config: RunConfig, method_params: dict[str, Any]) -> Path:
    model = "organism" if config.model is None else _slug(config.model.rstrip("/").replace("/", "__"))
    method = config.method or "baseline"
    label = "_".join([method, *(f"{k}-{v}" for k, v in sorted(method_params.items()))])
    return Path(config.output_path) / model / _slug(label)


def select(t: Task, config: RunConfig) -> list[Record]:
    end = None if config.limit is None else config.offset + config.limit
    return t.records[config.offset:end]


def image_problem(record: Record) -> str | None:
    """Why this record's image cannot be used, or None."""
    if record.image is not None:
        return None
    if record.image_path is None:
        return "no image path (" + str(record.meta.get("image_missing_reason", "unknown")) + ")"
    path = Path(record.image_path)
    if not path.is_file():
        return f"missing: {path}"
    try:
        with Image.open(path):  # reads the header only
            pass
    except OSError:
        return f"unreadable: {path}"
    return None


def check_images(selected: dict[str, list[Record]], skip_missing: bool) -> dict[str, set[str]]:
    """Ids with unusable images per task; raise (before any forward pass) unless ``skip_missing``."""
    missing: dict[str, set[str]] = {}
    examples: dict[str, str] = {}  # one example sample per distinct kind of problem
    for name, records in selected.items():
        for r in records:
            problem = image_problem(r)
            if problem:
                missing.setdefault(name, set()).add(r.id)
                kind = problem.split(":")[0] if problem.startswith(("missing", "unreadable")) else problem
                examples.setdefault(kind, f"{name}#{r.id} {problem}")
    total = sum(len(v) for v in missing.values())
    if total and not skip_missing:
        n = sum(len(v) for v in selected.values())
        shown = "; ".join(list(examples.values())[:3])
        raise VisfocusError(f"{total} of {n} images are missing or unreadable (e.g. {shown}); fix --data_root or "
                            "pass --skip_missing to evaluate the rest and count them in results")
    return missing


def _check_identity(folder: Path, config: RunConfig) -> dict[str, Any] | None:
    path = folder / "results.json"
    if not path.exists():
        return None
    previous = json.loads(path.read_text(encoding="utf-8"))
    old, new = previous.get("config", {}), dataclasses.asdict(config)
    changed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if changed:
        raise VisfocusError(f"{folder} holds a run with a different configuration ({'; '.join(changed)}); use "
                            "another --output_path or remove that folder")
    return previous


def evaluate(config: RunConfig, after_batch: Callable[[str, int], None] | None = None,
             model: Callable[[], Any] | None = None) -> res.Results:
    """Run (or resume) the evaluation; returns the results dict also written to ``<run dir>/results.json``.
    ``model``: gives the loaded VLM of ``config.model`` when there is work (a sweep loads it once for all trials);
    by default it is loaded here.

    Under ``torchrun`` / ``accelerate launch`` every rank runs this: the samples not yet finished (by any earlier
    run, whatever its number of ranks) are split by image across ranks (``distributed.shard``), each rank appends to
    ``samples_<task>.rank<r>.jsonl``, and rank 0 merges them in sample order into ``samples_<task>.jsonl`` and writes
    ``results.json``; every rank returns the same results.

    With ``prefix_sharing`` (the default) the samples of one image are answered one after another, so that its
    prefill (vision tower and prompt up to the question) runs once for all of them; the answers are the same."""
    return evaluate_many([config], after_batch, model)[0]


@dataclass
class _Run:
    """One configuration of ``evaluate_many``: its method, folder, results so far and samples still to answer."""

    config: RunConfig
    method: Any
    folder: Path
    out: res.Results
    todo: dict[str, set[str]]  # per task, the ids this rank still answers


def evaluate_many(configs: list[RunConfig], after_batch: Callable[[str, int], None] | None = None,
                  model: Callable[[], Any] | None = None) -> list[res.Results]:
    """Several runs that differ only in their method and its arguments (a sweep's trials), each exactly as
    ``evaluate`` would do it, answered sample-major: every batch of samples under each run in turn. With prefix
    sharing the model then keeps each batch's unedited prompts between runs, so a method that edits only the last
    prompt token (ScalingVis, AdaptVis, CLVS) re-runs only that token per run. ``after_batch(task, b)`` is called
    after batch ``b`` of a task has been answered under every run."""
    import torch

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
        folder = run_dir(config, {k: v for k, v in config.method_args.items()})
        distributed.same_everywhere(ranks, dataclasses.asdict(config), "configuration")
        previous = _check_identity(folder, config)
        todo = {}
        for name in built:
            finished = set(res.SampleLog(folder / f"samples_{name}.jsonl").rows) | rank_rows(folder, name).keys()
            todo[name] = {r.id for r in selected[name] if r.id not in missing.get(name, set()) and r.id not in finished}
        out: res.Results = {
            "schema_version": res.SCHEMA_VERSION, "created_at": previous["created_at"] if previous else res.now(),
            "updated_at": res.now(), "config": dataclasses.asdict(config),
            "method": {"name": config.method or "baseline",
                       "args": dataclasses.asdict(method.params) if method else {}},
            "versions": res.versions(), "git_hash": res.git_hash(),
            "tasks": dict(previous.get("tasks", {})) if previous else {}, "cost": res.empty_cost()}
        runs.append(_Run(config, method, folder, out, todo))
    # the samples any run still needs, this rank's share (by image), grouped by image when prefixes are shared
    order = {name: distributed.shard([r for r in selected[name] if any(r.id in run.todo[name] for run in runs)],
                                     ranks, image_group) for name in built}
    if base.prefix_sharing:
        order = {name: group_by_image(records) for name, records in order.items()}
    vlm = None
    if any(order.values()):  # a bad model fails before anything is written
        vlm = model() if model is not None else load_model(base, ranks)
        for run in runs:  # layer parameters given as fractions of the depth, as this model's layer indices
            if run.method is not None and (resolved := run.method.resolved(vlm.num_layers)):
                run.out["method"]["resolved"] = resolved
    if ranks.is_main:
        for run in runs:
            run.folder.mkdir(parents=True, exist_ok=True)
            res.write_json(run.folder / "results.json", run.out)
    ranks.barrier()

    # several runs ask the same batch one after another: keep its whole unedited prompts for the next run
    several = vlm is not None and len(runs) > 1 and base.prefix_sharing
    with vlm.keeping_prompts() if several else contextlib.nullcontext():
        torch.manual_seed(base.seed)
        for name, t in built.items():
            own = f"samples_{name}.jsonl" if not ranks.distributed else f"samples_{name}.rank{ranks.rank}.jsonl"
            logs = [res.SampleLog(run.folder / own) for run in runs]
            n_usable = len(selected[name]) - len(missing.get(name, ()))
            progress = Progress([run.folder for run in runs], name, n_usable * len(runs),
                                 sum(n_usable - len(run.todo[name]) for run in runs), shown=ranks.is_main)
            for b, start in enumerate(range(0, len(order[name]), base.batch_size)):
                chunk = order[name][start:start + base.batch_size]
                for run, log in zip(runs, logs):
                    batch = [r for r in chunk if r.id in run.todo[name]]
                    if batch:
                        log.append(_answer_rows(vlm, t, batch, run.method, run.config, run.folder / f"traces_{name}"))
                        progress.update(len(batch))
                if after_batch:
                    after_batch(name, b)
            progress.close()
            ranks.barrier()  # every rank's samples of this task are on disk
            if ranks.is_main:  # merged and scored task by task, so a later kill keeps this task's results
                for run in runs:
                    run.out["tasks"][name] = _task_result(t, selected[name], missing.get(name, set()),
                                                          merge_samples(run.folder, name, selected[name]))
                    run.out["updated_at"] = res.now()
                    res.write_json(run.folder / "results.json", run.out)
    results = []
    for run in runs:
        if ranks.is_main:
            for name in run.out["tasks"]:
                res.add_cost(run.out["cost"], run.out["tasks"][name]["cost"])
            res.write_json(run.folder / "results.json", run.out)
    ranks.barrier()  # the merged results are on disk
    for run in runs:
        out = run.out if ranks.is_main else json.loads((run.folder / "results.json").read_text(encoding="utf-8"))
        out["config"]["run_dir"] = str(run.folder)
        results.append(out)
    return results


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
    """The VLM of ``config.model`` (None: the model organism) with ``config.model_args`` (dtype, device, device_map,
    max_memory, trust_remote_code); under several ranks, ``cuda`` is this rank's GPU and ``device_map`` shards over
    this rank's share of the GPUs."""
    import torch

    import visfocus as vf
    from visfocus.organism import NOTE, organism_path

    ranks = ranks or distributed.Ranks()
    if config.model is None and ranks.is_main:
        print(f"[visfocus] {NOTE}", file=sys.stderr)
    path = str(organism_path()) if config.model is None else config.model
    args = dict(config.model_args)
    dtype, trust = args.pop("dtype", "float32"), bool(args.pop("trust_remote_code", False))
    device = ranks.device(args.pop("device", "cpu"))
    device_map, max_memory = args.pop("device_map", None), parse_max_memory(args.pop("max_memory", None))
    if args:
        raise VisfocusError(f"unknown model argument(s) {', '.join(sorted(args))}; known: dtype, device, device_map, "
                            "max_memory, trust_remote_code")
    if device_map is not None and ranks.distributed and torch.cuda.is_available():
        # data × model parallel: each rank shards its model over its own GPUs only
        sizes = {gpu: f"{torch.cuda.get_device_properties(gpu).total_memory}B"
                 for gpu in range(torch.cuda.device_count())}
        max_memory = rank_max_memory(max_memory, ranks.gpus(len(sizes)), sizes)
    return vf.load(path, dtype=dtype, device=device, trust_remote_code=trust, device_map=device_map,
                   max_memory=max_memory)


def rank_max_memory(max_memory: dict | None, gpus: list[int], sizes: dict[int, str]) -> dict:
    """``max_memory`` for one rank: its own GPUs only (the user's cap where given, else the whole device), plus
    the user's CPU cap; devices left out are not used by ``device_map="auto"``."""
    given = max_memory or {}
    return {gpu: given.get(gpu, sizes[gpu]) for gpu in gpus} | ({"cpu": given["cpu"]} if "cpu" in given else {})


def parse_max_memory(text: str | dict | None) -> dict | None:
    """``"0:20GiB;1:20GiB;cpu:64GiB"`` → ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}`` (GPU indices as ints)."""
    if text is None or isinstance(text, dict):
        return text
    out: dict = {}
    for item in filter(None, (part.strip() for part in str(text).split(";"))):
        device, sep, size = item.partition(":")
        if not sep or not size:
            raise VisfocusError(f"cannot read max_memory '{item}': expected DEVICE:SIZE, e.g. 0:20GiB;1:20GiB")
        out[int(device) if device.strip().isdigit() else device.strip()] = size.strip()
    return out


def _answer_rows(vlm, t: Task, batch: list[Record], method, config: RunConfig, trace_folder: Path) -> list[dict]:
    from visfocus.api import load_image
    from visfocus.tracefile import sample_arrays, write_shard

    images = [r.image if r.image is not None else load_image(r.image_path) for r in batch]
    answers = vlm.answer_batch(images, [r.question for r in batch], method, max_new_tokens=config.max_new_tokens,
                               options=[r.options or None for r in batch], trace=config.trace is not None,
                               share_prefix=config.prefix_sharing)
    if config.trace:  # written before the samples are logged: a logged sample always has its trace
        write_shard(trace_folder, _slug(f"batch_{batch[0].id}"),
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


def _task_result(t: Task, selected: list[Record], missing: set[str], log: res.SampleLog) -> res.TaskResult:
    rows = [log.rows[r.id] for r in selected if r.id not in missing and r.id in log.rows]
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
