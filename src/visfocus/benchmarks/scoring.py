"""The two kinds of task: multiple-choice over option words (WhatsUp, the synthetic task) and yes/no judgements
(VSR, POPE). Each says how a generation is parsed, when it is correct, and which metrics apply."""

from __future__ import annotations

from typing import Any, ClassVar

from visfocus import metrics
from visfocus.benchmarks.base import Record, Task
from visfocus.parsing import adaptvis_option_correct, adaptvis_vsr_correct, parse_binary, parse_option, synonyms_for


def _common(rows: list[dict]) -> dict[str, Any]:
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
        out = _common(rows)
        if any(r.get("pair") for r in rows):
            out["pair"] = metrics.group_accuracy([r for r in rows if r.get("pair")], "pair", self.pair_size)
        if any(r.get("group") for r in rows):
            out["set"] = metrics.group_accuracy([r for r in rows if r.get("group")], "group", self.set_size)
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
        out = _common(rows)
        out.update(metrics.binary_metrics([r["gold"] for r in rows], [r.get("parsed") for r in rows]))
        return out
