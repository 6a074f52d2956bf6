"""The records a run answers: the selection (``--offset``/``--limit``), which of them have a usable image (checked
before any forward pass), and the order they are answered in (one image's samples together, so that they share its
prefill and stay on one rank)."""

from __future__ import annotations

from visfocus.benchmarks import Record, Task
from visfocus.errors import VisfocusError
from visfocus.images import image_file_problem


def select(t: Task, offset: int, limit: int | None) -> list[Record]:
    return t.records[offset:None if limit is None else offset + limit]


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


def image_group(record: Record) -> str:
    """What keeps samples together on one rank: their image (a file, or the record itself for a generated one)."""
    return record.image_path if record.image is None and record.image_path else f"record:{record.id}"


def group_by_image(records: list[Record]) -> list[Record]:
    """The records with each image's samples together: images in order of first appearance, samples in order."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(image_group(r), []).append(r)
    return [r for group in groups.values() for r in group]
