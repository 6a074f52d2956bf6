"""Tasks: a benchmark split as a sized, iterable collection of ``Record``s, plus how to prompt, parse and score it.
One file per benchmark family; each name is registered once with ``register_task`` and listed by ``tasks()``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from visfocus.errors import VisfocusError

AnswerType = Literal["option", "yesno"]
SCORERS = ("exact", "adaptvis")


@dataclass
class Record:
    """One sample.

    id: unique within the task (string). question: the text shown to the model after the image (the prompt style is
    already applied; no image placeholder, no chat markup). gold: the canonical answer — an option word such as
    "left", or "yes"/"no" for binary tasks. image_path: where the image should be (it may be missing; the runner
    checks before any forward pass) — or ``image``: an in-memory PIL image for generated tasks. options: the
    canonical answer words. relation: for per-relation breakdowns. group / pair: WhatsUp set and pair keys.
    boxes: ``{"label": str, "xyxy": (x0, y0, x1, y1), "normalized": bool}`` — pixels unless normalized.
    """

    id: str
    question: str
    gold: str
    image_path: str | None = None
    image: Any = None
    options: tuple[str, ...] = ()
    relation: str | None = None
    group: str | None = None
    pair: str | None = None
    boxes: tuple[dict, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base task. Subclasses set ``answer_type`` and ``prompt_styles`` and implement ``load_records``, ``parse`` and
    ``score``. Records load lazily on first use."""

    answer_type: ClassVar[AnswerType] = "option"
    prompt_styles: ClassVar[tuple[str, ...]] = ("default",)
    main_metric: ClassVar[str] = "accuracy"  # what a sweep maximises
    reads_data: ClassVar[bool] = True  # its records come from files under the data root (False: generated)

    def __init__(self, name: str, data_root: str | Path | None = None, prompt_style: str | None = None,
                 scorer: str = "exact") -> None:
        self.name = name
        if scorer not in SCORERS:
            raise VisfocusError(f"unknown scorer '{scorer}'; choose one of {', '.join(SCORERS)}")
        self.scorer = scorer
        self.data_root = Path(data_root).expanduser() if data_root else _env_data_root()
        style = prompt_style or self.prompt_styles[0]
        if style not in self.prompt_styles:
            raise VisfocusError(f"task '{name}' has no prompt style '{style}'; choose one of "
                                f"{', '.join(self.prompt_styles)}")
        self.prompt_style = style
        self._records: list[Record] | None = None

    # --- the collection ------------------------------------------------------------------------------------------
    @property
    def records(self) -> list[Record]:
        if self._records is None:
            self._records = self.load_records()
        return self._records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    # --- what a task family implements --------------------------------------------------------------------------
    def load_records(self) -> list[Record]:
        raise NotImplementedError

    def parse(self, text: str, record: Record) -> str | None:
        """The canonical answer found in a generation, or None."""
        raise NotImplementedError

    def target_text(self, record: Record) -> str:
        """The answer text a fine-tuned model should produce for ``record`` (its canonical gold by default)."""
        return record.gold

    def is_correct(self, text: str, parsed: str | None, record: Record) -> bool:
        """Exact: the parsed answer equals the gold one. Subclasses add the official lenient scorer."""
        return parsed is not None and parsed == record.gold

    def score(self, rows: list[dict]) -> dict[str, Any]:
        """Task metrics from per-sample rows (keys: id, gold, parsed, correct, confidence, relation, group, pair)."""
        raise NotImplementedError

    def split_info(self) -> dict[str, Any]:
        """Anything a run must save to reproduce the split (e.g. the sampled indices of a dev/test variant)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What a run records of the task (``data_root``: absolute, and None for a generated task)."""
        root = self.data_root.resolve() if self.data_root and self.reads_data else None
        return {"name": self.name, "answer_type": self.answer_type, "prompt_style": self.prompt_style,
                "scorer": self.scorer, "data_root": str(root) if root else None}


def _env_data_root() -> Path | None:
    value = os.environ.get("VISFOCUS_DATA_ROOT")
    return Path(value).expanduser() if value else None


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """List ``name``; ``factory(name=..., data_root=..., prompt_style=..., scorer=...)`` builds the task."""
    if name in TASKS:
        raise ValueError(f"task '{name}' registered twice")
    TASKS[name] = factory


def tasks() -> list[str]:
    """All registered task names."""
    return sorted(TASKS)


def task(name: str, data_root: str | Path | None = None, prompt_style: str | None = None,
         scorer: str = "exact") -> Task:
    """Build the task ``name``: a sized, iterable collection of records."""
    if name not in TASKS:
        raise VisfocusError(f"unknown task '{name}'; `visfocus list tasks` shows the {len(TASKS)} registered tasks")
    return TASKS[name](name=name, data_root=data_root, prompt_style=prompt_style, scorer=scorer)


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it exists, else one clear error naming what is missing and where it was looked for."""
    if not path.is_file():
        raise VisfocusError(f"{what} not found at {path}" + (f"; {hint}" if hint else ""))
    return path
