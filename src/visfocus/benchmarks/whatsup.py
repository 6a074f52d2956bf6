"""WhatsUp (Kamath et al. 2023) as AdaptVis asks it: "Where is the X in relation to the Y? Answer with …", six
subsets, each as ``whatsup_<subset>`` (all rows), ``_dev`` (AdaptVis's seeded 20 %) and ``_test`` (the other 80 %).

Questions come from the AdaptVis files ``<root>/adaptvis_prompts/`` (or ``<root>/prompts/``), else from a local copy
of HF ``AdaptVis/all_datasets`` (``<root>``, ``<root>/all_datasets`` or ``<root>/AdaptVis/all_datasets``; see
``hub.py``), else, with no data root, from the Hub; row ``id`` i pairs with row i of the official WhatsUp list.
Images: Controlled A/B through ``whatsup/Controlled_Images_{A,B}_index.jsonl`` or the official
``controlled_{images,clevr}_dataset.json`` (else the dataset's ``image_path``); COCO/VG through the official
``{coco,vg}_qa_*.json`` (``[image_id, correct, wrong]``), else the dataset's ``image_id``. Searched in ``<root>``,
``<root>/whatsup`` and ``<root>/data``. Pair and set accuracy on a dev/test part count complete pairs and sets only
(``metrics.group_accuracy``; docs/methods.md §12.8); under ``--scorer adaptvis`` the official formula, biased low on a
part, is reported beside them (``pair_official``, ``set_official``)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from visfocus.benchmarks import hub
from visfocus.benchmarks.base import Record, register_task
from visfocus.benchmarks.images import find_coco_image
from visfocus.benchmarks.scoring import OptionTask
from visfocus.errors import VisfocusError


@dataclass(frozen=True)
class Subset:
    """Where one subset's questions and images are, and its answer words."""

    prompt_file: str  # AdaptVis question file
    options: tuple[str, ...]  # canonical answer words
    image_list: str  # the official WhatsUp json whose row i is prompt id i
    image_folder: str  # controlled_images, controlled_clevr, val2017 or vg_images
    hub_config: str  # AdaptVis/all_datasets config
    index_file: str | None = None  # this project's derived id → image map (Controlled only)


SUBSETS: dict[str, Subset] = {
    "controlled_a": Subset("Controlled_Images_A_with_answer_four_options.jsonl", ("left", "right", "on", "under"),
                           "controlled_images_dataset.json", "controlled_images", "Controlled_A",
                           "Controlled_Images_A_index.jsonl"),
    "controlled_b": Subset("Controlled_Images_B_with_answer_four_options.jsonl", ("left", "right", "front", "behind"),
                           "controlled_clevr_dataset.json", "controlled_clevr", "Controlled_B",
                           "Controlled_Images_B_index.jsonl"),
    "coco_one": Subset("COCO_QA_one_obj_with_answer_four_options.jsonl", ("left", "right", "top", "bottom"),
                       "coco_qa_one_obj.json", "val2017", "COCO_one_obj"),
    "coco_two": Subset("COCO_QA_two_obj_with_answer_four_options.jsonl", ("left", "right", "above", "below"),
                       "coco_qa_two_obj.json", "val2017", "COCO_two_obj"),
    "vg_one": Subset("VG_QA_one_obj_with_answer_six_options.jsonl", ("left", "right", "front", "behind", "top",
                     "bottom"), "vg_qa_one_obj.json", "vg_images", "VG_one_obj"),
    "vg_two": Subset("VG_QA_two_obj_with_answer_six_options.jsonl", ("left", "right", "front", "behind", "above",
                     "below"), "vg_qa_two_obj.json", "vg_images", "VG_two_obj"),
}
PARTS = ("", "_dev", "_test")
PROMPT_FOLDERS = ("adaptvis_prompts", "prompts")
SEARCH_FOLDERS = (".", "whatsup", "data")
# Relation token in a Controlled file name (<subj>_<relation>_<obj>.jpeg) → canonical option, and option → its pair.
FILENAME_RELATION = {"left_of": "left", "right_of": "right", "on": "on", "under": "under", "in-front_of": "front",
                     "behind": "behind"}
PAIR_OF = {"left": "left_right", "right": "left_right", "on": "on_under", "under": "on_under",
           "front": "front_behind", "behind": "front_behind"}
B_BOXES_FILE = "controlled_B_bboxes_vlm_interp/bbox.jsonl"  # hand-labelled xyxy on 1280×960
A_YOLO_FILE = "controlled_A_dltmdwoOS/contA_with_yolo.jsonl"  # YOLO detections, not ground truth
DATA_ROOT_HINT = (f"--data_root should point at a folder with adaptvis_prompts/ (the AdaptVis question files) or a "
                  f"local copy of {hub.HUB_DATASET} and, for images, whatsup/ (the index files) or the official "
                  "WhatsUp JSONs")


def clean_question(text: str) -> tuple[str, str]:
    """The question without LLaVA markup (``<image>``, ``USER:``, ``ASSISTANT:``), whitespace collapsed and doubled
    periods fixed; text after the "Answer with …" line (a stray caption in 2 VG rows) is cut and returned second."""
    text = text.replace("<image>", "").strip()
    text = re.sub(r"^USER:", "", text)
    text = re.sub(r"ASSISTANT:$", "", text.rstrip())
    match = re.match(r"(.*?Answer with[^\n]*)(.*)", text, re.S)
    question, stray = match.groups() if match else (text, "")
    question = " ".join(question.split())
    return re.sub(r"\.{2,}", ".", question), " ".join(stray.split())


def dev_indices(n: int, seed: int = 1, fraction: float = 0.2) -> list[int]:
    """AdaptVis's validation sample (``seed_all(1)``; ``random.sample(range(n), int(0.2 * n))``), sorted."""
    return sorted(random.Random(seed).sample(range(n), int(fraction * n)))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _find(root: Path, name: str) -> Path | None:
    return next((root / folder / name for folder in SEARCH_FOLDERS if (root / folder / name).is_file()), None)


def _first_existing(candidates: list[Path]) -> Path:
    """The first candidate that is a file, else the first one (the runner reports missing images)."""
    return next((path for path in candidates if path.is_file()), candidates[0])


class WhatsUpTask(OptionTask):
    """One WhatsUp subset, whole or one part of its seeded 20/80 dev/test split."""

    def __init__(self, name: str, subset: str, part: str = "", seed: int = 1, fraction: float = 0.2, **kwargs: Any):
        super().__init__(name, **kwargs)
        self.subset, self.spec, self.part = subset, SUBSETS[subset], part.strip("_") or "full"
        self.seed, self.fraction = seed, fraction
        self.questions_from = self.spec.prompt_file  # named in errors about the rows; set by _question_rows

    def load_records(self) -> list[Record]:
        rows = self._question_rows()
        images = self._images(rows)
        records = [self._record(index, row, image) for index, (row, image) in enumerate(zip(rows, images, strict=True))]
        if self.part == "full":
            return records
        dev = set(dev_indices(len(records), self.seed, self.fraction))
        return [rec for index, rec in enumerate(records) if (index in dev) == (self.part == "dev")]

    def split_info(self) -> dict[str, Any]:
        if self.part == "full":
            return {}
        return {"part": self.part, "seed": self.seed, "fraction": self.fraction,
                "indices": [int(rec.meta["index"]) for rec in self.records]}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subset": self.subset, "part": self.part}

    # --- questions ------------------------------------------------------------------------------------------------
    def _question_rows(self) -> list[dict]:
        """The AdaptVis prompt file under the data root first (what AdaptVis's own code reads; a root without a
        dataset copy reads exactly as before), else a local copy of the HF dataset there; no data root: the Hub."""
        if self.data_root is None:
            self.questions_from = f"{hub.HUB_DATASET} {self.spec.hub_config}"
            return hub.read_hub(self.spec.hub_config, self.name, DATA_ROOT_HINT)
        prompt_files = [self.data_root / folder / self.spec.prompt_file for folder in PROMPT_FOLDERS]
        prompt_file = next((path for path in prompt_files if path.is_file()), None)
        copy = hub.find_local_copy(self.data_root)
        if prompt_file is not None:
            rows = _read_jsonl(prompt_file)
            return rows if copy is None else self._with_image_columns(rows, copy)
        if copy is None:
            raise VisfocusError(
                f"WhatsUp questions for {self.name} not found under {self.data_root}: looked for "
                f"{' and '.join(str(path) for path in prompt_files)}, and for a local copy of {hub.HUB_DATASET} (its "
                f"README.md card + {self.spec.hub_config}/test-*.parquet) in "
                f"{', '.join(str(self.data_root / name) for name in hub.LOCAL_COPY_FOLDERS)}; {DATA_ROOT_HINT}")
        self.questions_from = f"{copy} {self.spec.hub_config}"
        return hub.read_local_copy(copy, self.spec.hub_config)

    def _with_image_columns(self, rows: list[dict], copy: Path) -> list[dict]:
        """Prompt-file rows plus the image column (``image_id`` / ``image_path``) of a dataset copy beside them: the
        prompt files carry no image ids, the copy does; the official WhatsUp files still come first in ``_images``."""
        copy_rows = hub.read_local_copy(copy, self.spec.hub_config)
        if [row["id"] for row in copy_rows] != [row["id"] for row in rows]:
            raise VisfocusError(f"{copy} {self.spec.hub_config} does not pair id by id with {self.spec.prompt_file} "
                                f"({len(copy_rows)} vs {len(rows)} rows); they must be the matching files")
        image_columns = [column for column in ("image_id", "image_path") if column in copy_rows[0]]
        return [{**row, **{column: own[column] for column in image_columns}} for row, own in zip(rows, copy_rows)]

    def _record(self, index: int, row: dict, image: dict[str, Any]) -> Record:
        question, stray = clean_question(row["question"])
        gold = _answer_word(row)
        if gold not in self.spec.options:
            raise VisfocusError(f"{self.questions_from} row id {row['id']}: answer '{gold}' is not one of "
                                f"{', '.join(self.spec.options)}")
        meta = {"index": index, "subset": self.subset, **image.get("meta", {})}
        if stray:
            meta["removed_from_question"] = stray
        group = image.get("group") or (_group_from_question(question) if self.spec.index_file else None)
        return Record(id=str(row["id"]), question=question, gold=gold, image_path=image.get("path"),
                      options=self.spec.options, relation=gold, group=group,
                      pair=f"{group}:{PAIR_OF[gold]}" if group else None, boxes=image.get("boxes", ()), meta=meta)

    # --- images ---------------------------------------------------------------------------------------------------
    def _images(self, rows: list[dict]) -> list[dict[str, Any]]:
        """Per prompt row: ``path`` (str or None), ``group``, ``boxes`` and ``meta``."""
        root = self.data_root or Path.cwd()
        if self.spec.index_file:
            return self._controlled_images(root, rows)
        official = _find(root, self.spec.image_list)
        if official is None and rows and "image_id" in rows[0]:  # HF dataset rows carry their image id
            image_ids = [row["image_id"] for row in rows]
        elif official is not None:
            image_ids = [entry[0] for entry in json.loads(official.read_text())]
            if len(image_ids) < len(rows):
                raise VisfocusError(f"{official} has {len(image_ids)} rows but {self.questions_from} has "
                                    f"{len(rows)}; they pair row by row, so they must be the matching files")
        else:
            reason = (f"image ids are only in the official {self.spec.image_list} (not found in {root}, "
                      f"{root}/whatsup or {root}/data) or HF {hub.HUB_DATASET}")
            return [{"path": None, "meta": {"image_missing_reason": reason}} for _ in rows]
        return [{"path": str(self._natural_image(root, image_id)), "meta": {"image_id": image_id}}
                for image_id in image_ids[:len(rows)]]

    def _natural_image(self, root: Path, image_id: int | str) -> Path:
        if self.spec.image_folder == "val2017":
            return find_coco_image(root, f"{int(image_id):012d}.jpg", "val2017")
        return _first_existing([root / folder / "vg_images" / f"{image_id}.jpg" for folder in SEARCH_FOLDERS])

    def _controlled_images(self, root: Path, rows: list[dict]) -> list[dict[str, Any]]:
        index_file, official = _find(root, self.spec.index_file), _find(root, self.spec.image_list)
        if index_file is not None:
            by_id = {str(entry["id"]): entry for entry in _read_jsonl(index_file)}
            entries = [by_id.get(str(row["id"]), {}) for row in rows]
        elif official is not None:
            entries = json.loads(official.read_text())[:len(rows)]
        else:  # Hub rows carry the official image_path
            entries = [{"image_path": row["image_path"]} if row.get("image_path") else {} for row in rows]
        boxes = self._controlled_boxes(root)
        return [self._controlled_image(root, row, entry, boxes) for row, entry in zip(rows, entries, strict=True)]

    def _controlled_image(self, root: Path, row: dict, entry: dict, boxes: dict[str, tuple]) -> dict[str, Any]:
        if not entry.get("image_path"):
            return {"meta": {"image_missing_reason": f"no image listed for id {row['id']} in {self.spec.index_file} "
                                                     f"or {self.spec.image_list} under {root}"}}
        relative = Path(entry["image_path"])
        subj, *relation, obj = relative.stem.split("_")
        answer = _answer_word(row)
        if FILENAME_RELATION.get("_".join(relation)) != answer:
            raise VisfocusError(f"id {row['id']}: image {relative.name} does not show '{answer}'; the image list "
                                f"does not pair row by row with {self.questions_from}")
        candidates = [root / relative, root / "whatsup" / relative, root / self.spec.image_folder / relative.name,
                      root / "whatsup" / self.spec.image_folder / relative.name]
        own_boxes = _box_dicts(entry.get("bbox_xyxy_1280x960_vlm_interp")) or boxes.get(relative.stem, ())
        meta: dict[str, Any] = {"image_file": relative.name}
        if own_boxes:
            meta["boxes_source"] = "yolo" if self.subset == "controlled_a" else "ground_truth"
        ordered = tuple(sorted(own_boxes, key=lambda box: box["label"] != _object_name(subj)))  # subject first
        return {"path": str(_first_existing(candidates)), "group": f"{subj}|{obj}", "boxes": ordered, "meta": meta}

    def _controlled_boxes(self, root: Path) -> dict[str, tuple[dict, ...]]:
        """Boxes by image stem: hand-labelled ones for B, the top YOLO detection per object for A (often none)."""
        if self.subset == "controlled_b":
            path = _find(root, B_BOXES_FILE)
            return {entry["image"]: _box_dicts(entry["bbox"]) for entry in _read_jsonl(path)} if path else {}
        path = _find(root, A_YOLO_FILE)
        boxes: dict[str, tuple[dict, ...]] = {}
        for entry in _read_jsonl(path) if path else []:
            stem = Path(entry["image_path"]).stem
            names = (stem.split("_")[0], stem.split("_")[-1])
            best = {name: max(found, key=lambda box: box["conf"]) for name, found in
                    zip(names, (entry["yolo_a_boxes"], entry["yolo_b_boxes"]), strict=True) if found}
            boxes[stem] = _box_dicts({name: [box[k] for k in ("x1", "y1", "x2", "y2")] for name, box in best.items()})
        return boxes


def _answer_word(row: dict) -> str:
    """``["Left"]`` (the files and the Hub) or ``"Left"`` → ``left``."""
    answer = row["answer"][0] if isinstance(row["answer"], list | tuple) else row["answer"]
    return answer.strip().lower()


def _box_dicts(boxes_by_label: dict[str, list[float]] | None) -> tuple[dict, ...]:
    return tuple({"label": _object_name(label), "xyxy": tuple(xyxy), "normalized": False}
                 for label, xyxy in (boxes_by_label or {}).items())


def _object_name(file_name_token: str) -> str:
    """``beer-bottle`` (as in file names) → ``beer bottle`` (as in the question)."""
    return file_name_token.replace("-", " ")


def _group_from_question(question: str) -> str | None:
    """``beer-bottle|armchair`` from "Where is the beer bottle in relation to the armchair?" (as the file names)."""
    match = re.search(r"Where (?:is|are) the (.+?) in relation to the (.+?)\?", question)
    return "|".join(name.replace(" ", "-") for name in match.groups()) if match else None


for _subset in SUBSETS:
    for _part in PARTS:
        register_task(f"whatsup_{_subset}{_part}", partial(WhatsUpTask, subset=_subset, part=_part))
