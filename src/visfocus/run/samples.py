"""A samples file (``samples_<task>.jsonl``): one JSON line per finished sample, appended as it finishes, read back to
resume. What a line holds (``sample_row``), how lines written by older versions read (``upgraded``), reading a file
that a kill may have torn (``read_samples``) and appending to it durably (``SampleLog``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visfocus import durable
from visfocus.errors import VisfocusError

SAMPLE_KEYS = ("id", "correct")  # what makes a line of a samples file a sample row
RENAMED = {"passes": "forward_passes", "method_extras": "extras"}  # results schema ≤ 2 → its name now


def sample_row(record, answer, parsed: Any, correct: bool, batch_size: int, prompt: str | None = None) -> dict:
    """The line of one answered sample: the record (id, question, gold, relation, group, pair), the answer (output,
    parsed, correct, confidence, first token), its cost (``forward_passes`` of its whole batch of ``batch_size``, its
    own prefill/decode/shared-prefix tokens, its share of the batch's seconds), the method's ``extras`` (α used,
    branch, chosen layer, …; ``{}`` when none) and, with ``--log_samples``, the full chat prompt."""
    cost = answer.cost
    row = {"id": record.id, "question": record.question, "gold": record.gold, "output": answer.text,
           "parsed": parsed, "correct": correct, "confidence": answer.confidence, "first_token": answer.first_token,
           "relation": record.relation, "group": record.group, "pair": record.pair,
           "forward_passes": cost["forward_passes"], "prefill_tokens": cost["prefill_tokens"],
           "decode_tokens": cost["decode_tokens"], "shared_prefix_tokens": cost["shared_prefix_tokens"],
           "seconds": cost["seconds"] / batch_size, "batch_size": batch_size, "extras": dict(answer.extras or {})}
    if prompt is not None:
        row["prompt"] = prompt
    return row


def upgraded(row: dict) -> dict:
    """A row as this version writes it: ``passes`` is ``forward_passes``, ``method_extras`` is ``extras``, and the
    top-level ``alpha_used`` of older rows is ``extras["alpha_used"]``. Rows without old names are returned as they
    are."""
    if not any(key in row for key in (*RENAMED, "alpha_used")):
        return row
    new = {RENAMED.get(key, key): value for key, value in row.items() if key != "alpha_used"}
    extras = dict(new.get("extras") or {})
    if row.get("alpha_used") is not None:
        extras.setdefault("alpha_used", row["alpha_used"])
    new["extras"] = extras
    return new


@dataclass
class SampleFile:
    """What a samples file holds: its rows by id (file order, ``upgraded``), its lines as they should be, and whether
    the file on disk differs from them (an unterminated or torn last line, duplicate ids, blank lines)."""

    rows: dict[str, dict]
    lines: list[str]
    needs_repair: bool


def read_samples(path: Path) -> SampleFile:
    """Read ``samples_<task>.jsonl`` without changing it. The last line may lack its newline (a kill between a row
    and its ``\\n``): a complete row there is kept, a torn one dropped. Any other line that is not a sample row (not
    JSON, not an object with ``id`` and ``correct``) is one error naming the file and line. A repeated id keeps its
    first row."""
    if not path.exists():
        return SampleFile({}, [], False)
    pieces = path.read_bytes().split(b"\n")
    last = pieces.pop()  # b"" when the file ends with a newline, else the unterminated last line
    rows: dict[str, dict] = {}
    lines: list[str] = []
    repair = bool(last)
    for number, piece in enumerate([*pieces, last] if last else pieces, start=1):
        row = _sample_row(piece)
        if isinstance(row, str):
            if last and number == len(pieces) + 1:  # a torn last line: the write it belongs to never finished
                continue
            if not piece.strip():
                repair = True
                continue
            raise VisfocusError(f"{path}, line {number}: {row}; the samples file was changed by hand or by another "
                                "program — restore it, or remove that line to answer the sample again")
        if row["id"] in rows:
            repair = True
            continue
        rows[row["id"]] = upgraded(row)
        lines.append(piece.decode("utf-8"))
    return SampleFile(rows, lines, repair)


def _sample_row(piece: bytes) -> dict | str:
    """The row a line holds, or why it is not a sample row."""
    try:
        row = json.loads(piece.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not a JSON line"
    if not isinstance(row, dict) or any(key not in row for key in SAMPLE_KEYS) or not isinstance(row["id"], str):
        return f"not a sample row (needs {' and '.join(SAMPLE_KEYS)}, with a text id)"
    return row


def lines_of(rows: list[dict]) -> str:
    return "".join(json.dumps(row, default=str) + "\n" for row in rows)


class SampleLog:
    """A samples file as its writer sees it: rows appended and fsync'd per batch (``durable.append_file``). On
    opening, a file that needs it is repaired atomically (rewritten beside and renamed over): an unterminated last
    row gets its newline, a torn last line goes, so that appends never glue a row onto another."""

    def __init__(self, path: Path) -> None:
        self.path = path
        found = read_samples(path)
        self.rows = found.rows
        if found.needs_repair:
            durable.replace_file(path, "".join(line + "\n" for line in found.lines))

    def append(self, rows: list[dict]) -> None:
        durable.append_file(self.path, lines_of(rows))
        for row in rows:
            self.rows[row["id"]] = row
