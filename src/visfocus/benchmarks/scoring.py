"""The two kinds of task: multiple-choice over option words (WhatsUp, the synthetic task) and yes/no judgements
(VSR, POPE). Each says how a generation is parsed, when it is correct, and which metrics apply."""

from __future__ import annotations

from typing import Any, ClassVar

from visfocus import metrics
from visfocus.benchmarks.base import Record, Task
from visfocus.parsing import adaptvis_option_correct, adaptvis_vsr_correct, parse_binary, parse_option, synonyms_for


def _common(rows: list[dict]) -> dict[str, Any]:
    """``n``, ``accuracy`` (mean of the rows' ``correct`` flags, i.e. of the task's scorer), ``n_unparsed``, the
    confidence metrics and ``per_relation``.

    ``n_unparsed`` counts rows whose ``parsed`` is None: outputs in which this project's whole-word parser found no
    answer. Under the exact scorer each of them is an error. Under a compatibility scorer (``adaptvis``) it is a
    diagnostic only and enters no metric: the official scorer has no "unparsed", it judges every output by substring
    ("Not really." is a correct "no" there), so an unparsed output may count as correct."""
    correct = [bool(r["correct"]) for r in rows]
    confidence = [r.get("confidence") for r in rows]
    out: dict[str, Any] = {"n": len(rows), "accuracy": metrics.accuracy(correct),
                           "n_unparsed": sum(r.get("parsed") is None for r in rows)}
    if rows and all(c is not None for c in confidence):
        out["mean_confidence"] = sum(confidence) / len(confidence)
        out["auroc_confidence_vs_correct"] = metrics.auroc(confidence, correct)
    if any(r.get("relation") for r in rows):
        out["per_relation"] = metrics.per_relation(rows)
    return out


class OptionTask(Task):
    """The answer is one of ``record.options``; parsed as the first option word (or synonym) mentioned."""

    answer_type = "option"
    pair_size: ClassVar[int] = 2
    set_size: ClassVar[int] = 4

    def parse(self, text: str, record: Record) -> str | None:
        return parse_option(text, record.options, synonyms_for(record.options))

    def is_correct(self, text: str, parsed: str | None, record: Record) -> bool:
        if self.scorer == "adaptvis":
            return adaptvis_option_correct(text, record.gold)
        return super().is_correct(text, parsed, record)

    def score(self, rows: list[dict]) -> dict[str, Any]:
        """Accuracy and the common metrics; with WhatsUp keys, ``pair`` and ``set`` accuracy over complete groups
        (``metrics.group_accuracy``). Under ``--scorer adaptvis`` also ``pair_official`` and ``set_official``: the
        official formula #correct pairs / (n/2) and #correct sets / (n/4), n = all scored rows, a missing member
        counting as a failure (``metrics.adaptvis_group_accuracy``), to reproduce the paper's pair/set columns."""
        out = _common(rows)
        if any(r.get("pair") for r in rows):
            out["pair"] = metrics.group_accuracy([r for r in rows if r.get("pair")], "pair", self.pair_size)
            if self.scorer == "adaptvis":
                out["pair_official"] = metrics.adaptvis_group_accuracy(rows, "pair", self.pair_size)
        if any(r.get("group") for r in rows):
            out["set"] = metrics.group_accuracy([r for r in rows if r.get("group")], "group", self.set_size)
            if self.scorer == "adaptvis":
                out["set_official"] = metrics.adaptvis_group_accuracy(rows, "group", self.set_size)
        return out


class BinaryTask(Task):
    """The answer is "yes" or "no" (a True/False prompt parses True as yes)."""

    answer_type = "yesno"

    def parse(self, text: str, record: Record) -> str | None:
        return parse_binary(text)

    def is_correct(self, text: str, parsed: str | None, record: Record) -> bool:
        if self.scorer == "adaptvis":
            return adaptvis_vsr_correct(text, record.gold)
        return super().is_correct(text, parsed, record)

    def score(self, rows: list[dict]) -> dict[str, Any]:
        """Accuracy, the common metrics and ``metrics.binary_metrics`` ("yes" positive), all from one set of
        predictions, named by ``confusion_from``.

        Exact scorer: ``"parsed"``, the parsed answers (an unparsed answer is an error in either class). A
        compatibility scorer (``adaptvis``): ``"scorer"``, the scorer's own decisions turned into predictions by
        ``metrics.scorer_predictions`` (the gold label when ``correct``, the other label otherwise), so tp, fn, tn,
        fp, precision, recall, F1, macro-F1, yes_ratio and ``tpr_tnr_harmonic_mean`` (the official "F1") are the
        official code's, and accuracy = (tp + tn) / n."""
        out = _common(rows)
        gold = [r["gold"] for r in rows]
        if self.scorer == "exact":
            predictions, source = [r.get("parsed") for r in rows], "parsed"
        else:
            predictions, source = metrics.scorer_predictions(gold, [bool(r["correct"]) for r in rows]), "scorer"
        out.update(metrics.binary_metrics(gold, predictions))
        out["confusion_from"] = source
        return out
