"""Our tasks inside lmms-eval: the YAML files in ``task_files/`` name a visfocus task (``dataset_path``) and this
module serves it, so that lmms-eval asks the same questions about the same images and scores the answers with the
same parser and metrics as ``visfocus eval`` (tuning on dev, reporting on test, pair/set accuracy, the TPR/TNR harmonic
mean under its own name).

``VisfocusTask`` (the YAML's ``class``) builds the docs from the task's records instead of downloading a dataset;
``dataset_kwargs`` may give ``data_root`` (else ``VISFOCUS_DATA_ROOT``), ``prompt_style``, ``scorer`` and
``skip_missing`` (a YAML of your own can ``include:`` one of ours and set them). Each doc
carries its record's index; images are read when lmms-eval asks for them. ``process_results`` keeps one row per doc
(what ``visfocus eval`` logs) and ``aggregate`` scores the rows with the task's own ``score``."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import datasets
from lmms_eval.api.task import ConfigurableTask

from visfocus.benchmarks import Task, task
from visfocus.errors import VisfocusError
from visfocus.images import open_image
from visfocus.integrations.lmms.settings import exit_with
from visfocus.run.records import image_problem

_LOADED: dict[str, Task] = {}  # task key (json of its settings) → the visfocus task, loaded once per process
_METRICS: dict[str, tuple[str, ...]] = {}  # task key → its metric names


def task_key(name: str, dataset_kwargs: dict[str, Any] | None) -> str:
    """The visfocus task and its settings as one string a doc can carry (``skip_missing`` is not a task setting)."""
    kwargs = {k: v for k, v in (dataset_kwargs or {}).items() if k != "skip_missing"}
    unknown = sorted(set(kwargs) - {"data_root", "prompt_style", "scorer"})
    if unknown:
        raise VisfocusError(f"task {name}: unknown dataset_kwargs {unknown}; known: data_root, prompt_style, scorer, "
                            "skip_missing")
    return json.dumps({"name": name, **kwargs}, sort_keys=True)


def loaded(key: str) -> Task:
    """The visfocus task behind ``key`` (built on first use in this process)."""
    if key not in _LOADED:
        settings = json.loads(key)
        _LOADED[key] = task(settings.pop("name"), **settings)
    return _LOADED[key]


def task_docs(key: str, skip_missing: bool = False) -> list[dict[str, Any]]:
    """One doc per record: what lmms-eval passes around (no image; ``doc_to_visual`` reads it from the record).
    Records whose image is missing or unreadable (``evaluate.image_problem``) are an error, or with ``skip_missing``
    left out (and counted on stderr), as ``visfocus eval --skip_missing`` does."""
    t = loaded(key)
    problems = {i: problem for i, r in enumerate(t.records) if (problem := image_problem(r)) is not None}
    missing = set(problems)
    if missing and not skip_missing:
        first = problems[min(missing)]
        raise VisfocusError(f"task {t.name}: {len(missing)} of {len(t)} images are missing ({first}); point "
                            "VISFOCUS_DATA_ROOT (or dataset_kwargs data_root) at them, or set dataset_kwargs "
                            "skip_missing: true")
    if missing:
        print(f"[visfocus] {t.name}: {len(missing)} of {len(t)} images are missing; evaluating the other "
              f"{len(t) - len(missing)}", file=sys.stderr)
    return [{"visfocus_task": key, "index": i, "id": r.id, "question": r.question, "gold": r.gold,
             "options": list(r.options), "relation": r.relation or "", "group": r.group or "", "pair": r.pair or ""}
            for i, r in enumerate(t.records) if i not in missing]


class VisfocusTask(ConfigurableTask):
    """An lmms-eval task whose docs are a visfocus task's records (``dataset_path`` names the task)."""

    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}  # "class" is how the YAML chose us
        super().__init__(config=config, **kwargs)

    def download(self, dataset_kwargs: dict | None = None) -> None:
        """The docs of the visfocus task; what keeps it from loading (no data, missing images) ends the command
        with one error line."""
        try:
            docs = task_docs(task_key(self.config.dataset_path, dataset_kwargs),
                             skip_missing=bool((dataset_kwargs or {}).get("skip_missing", False)))
        except VisfocusError as err:
            exit_with(err)
        split = self.config.test_split or "test"
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset


def _record(doc: dict[str, Any]):
    return loaded(doc["visfocus_task"]).records[doc["index"]]


def doc_to_visual(doc: dict[str, Any]) -> list:
    record = _record(doc)
    return [open_image(record.image if record.image is not None else record.image_path)]


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["question"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    """The row ``visfocus eval`` would log for this answer, once per metric the task's YAML lists."""
    t, record, text = loaded(doc["visfocus_task"]), _record(doc), results[0]
    parsed = t.parse(text, record)
    row = {"id": record.id, "gold": record.gold, "output": text, "parsed": parsed,
           "correct": t.is_correct(text, parsed, record), "relation": record.relation, "group": record.group,
           "pair": record.pair, "visfocus_task": doc["visfocus_task"]}
    return {metric: {**row, "metric": metric} for metric in task_metrics(doc["visfocus_task"])}


def aggregate(rows: list[dict[str, Any]]) -> float:
    """One metric of the task's own ``score`` over the rows (every rank's, gathered by lmms-eval). Duplicates that
    lmms-eval adds to even out ranks are dropped by id. A metric that needs what the rows lack (pair accuracy
    without complete pairs) is NaN."""
    unique = list({row["id"]: row for row in rows}.values())
    value: Any = loaded(rows[0]["visfocus_task"]).score(unique)
    for part in METRIC_PATHS[rows[0]["metric"]]:
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if value is not None else math.nan


# lmms-eval metric name → where it sits in the task's ``score``
METRIC_PATHS = {name: (name,) for name in ("accuracy", "precision", "recall", "f1", "tpr", "tnr",
                                            "tpr_tnr_harmonic_mean", "yes_ratio", "n_unparsed")}
METRIC_PATHS |= {"pair_accuracy": ("pair", "accuracy"), "set_accuracy": ("set", "accuracy")}
BINARY_METRICS = ("accuracy", "precision", "recall", "f1", "tpr", "tnr", "tpr_tnr_harmonic_mean", "yes_ratio",
                  "n_unparsed")


def task_metrics(key: str) -> tuple[str, ...]:
    if key not in _METRICS:
        _METRICS[key] = metrics_for(loaded(key))
    return _METRICS[key]


def metrics_for(t: Task) -> tuple[str, ...]:
    """The metrics a task reports, in the order its YAML lists them: a yes/no task's binary metrics ("yes"
    positive); an option task's accuracy, plus pair and set accuracy where its records form pairs and sets."""
    if t.answer_type == "yesno":
        return BINARY_METRICS
    pairs = ("pair_accuracy",) if any(r.pair for r in t.records) else ()
    sets = ("set_accuracy",) if any(r.group for r in t.records) else ()
    return ("accuracy", *pairs, *sets, "n_unparsed")


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The answer words, for a ``multiple_choice`` YAML over an option task (lmms-eval then scores each word with
    ``loglikelihood``)."""
    return list(doc["options"])


def doc_to_gold_index(doc: dict[str, Any]) -> int:
    return list(doc["options"]).index(doc["gold"])
