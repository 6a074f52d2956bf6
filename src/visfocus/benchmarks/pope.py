"""POPE (Li et al. 2023): "Is there a <object> in the image?" yes/no probes of object hallucination, on COCO, A-OKVQA
and GQA images with random, popular and adversarial negatives — nine tasks ``pope_{source}_{sampling}``."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

from visfocus.benchmarks.base import Record, register_task, require_file
from visfocus.benchmarks.images import coco2017_name, first_existing_image, load_coco_boxes
from visfocus.benchmarks.scoring import BinaryTask

SOURCES = ("coco", "aokvqa", "gqa")
SAMPLINGS = ("random", "popular", "adversarial")
ONE_WORD_SUFFIX = " Answer the question using a single word or phrase."  # LLaVA's POPE prompt
COCO_2017_SPLITS = ("val2017", "train2017")
DATA_ROOT_HINT = "pass --data_root pointing at a folder with pope/ (or the POPE repo's output/ layout)"
_ASKED_OBJECT = re.compile(r"Is there an? (.+?) in the (?:image|picture|photo)\?", re.IGNORECASE)


def pope_file_name(source: str, sampling: str) -> str:
    return f"coco_pope_{sampling}.json" if source == "coco" else f"{source}_pope_seem_{sampling}.json"


def pope_file_candidates(data_root: Path, source: str, sampling: str) -> list[Path]:
    """This project's ``pope/`` folder, then the POPE repo's ``output/coco/`` or ``output/seem/<source>/``."""
    file_name = pope_file_name(source, sampling)
    repo_folder = Path("output") / ("coco" if source == "coco" else Path("seem") / source)
    return [data_root / "pope" / file_name, data_root / repo_folder / file_name,
            data_root / "pope" / repo_folder / file_name]


def parse_pope_rows(text: str) -> list[dict]:
    """POPE-COCO files are JSON lines; the SEEM (A-OKVQA, GQA) files are one JSON array. Accept either."""
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def asked_object(question: str) -> str | None:
    """``"Is there a dining table in the image?"`` → ``"dining table"``; None for other wordings."""
    match = _ASKED_OBJECT.fullmatch(question.strip())
    return match.group(1) if match else None


def pope_question(text: str, prompt_style: str) -> str:
    return text + ONE_WORD_SUFFIX if prompt_style == "oneword" else text


def image_lookups(data_root: Path, source: str, file_name: str) -> list[tuple[Path, str, str | None]]:
    """Where to look for a POPE image: COCO names are val2014 files, also found under their 2017 name in
    train2017 or val2017; GQA images sit in ``gqa/images/`` or ``images/``."""
    if source == "gqa":
        return [(data_root / "gqa", file_name, None), (data_root, file_name, None)]
    lookups: list[tuple[Path, str, str | None]] = [(data_root, file_name, "val2014")]
    lookups += [(data_root, coco2017_name(file_name), split) for split in COCO_2017_SPLITS]
    return lookups


class POPETask(BinaryTask):
    """One POPE file. Images are looked up under the data root; missing ones are reported by the runner."""

    prompt_styles = ("plain", "oneword")

    def __init__(self, name: str, source: str, sampling: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.source, self.sampling = source, sampling

    def load_records(self) -> list[Record]:
        data_root = self.data_root or Path.cwd()
        candidates = pope_file_candidates(data_root, self.source, self.sampling)
        path = next((c for c in candidates if c.is_file()), candidates[0])
        also = ", ".join(str(c) for c in candidates[1:])
        require_file(path, f"POPE file {path.name}", f"also looked at {also}; {DATA_ROOT_HINT}")
        boxes = (load_coco_boxes(data_root) or {}) if self.source != "gqa" else {}
        records = []
        for row in parse_pope_rows(path.read_text()):
            lookups = image_lookups(data_root, self.source, row["image"])
            image = first_existing_image(lookups) or lookups[0][0] / "images" / row["image"]
            meta = {"image": row["image"], "object": asked_object(row["text"])}
            records.append(Record(id=str(row["question_id"]), question=pope_question(row["text"], self.prompt_style),
                                  gold=str(row["label"]).strip().lower(), image_path=str(image), options=("yes", "no"),
                                  boxes=boxes.get(coco2017_name(row["image"]), ()), meta=meta))
        return records

    def split_info(self) -> dict:
        return {"source": self.source, "sampling": self.sampling}


for _source in SOURCES:
    for _sampling in SAMPLINGS:
        register_task(f"pope_{_source}_{_sampling}", partial(POPETask, source=_source, sampling=_sampling))
