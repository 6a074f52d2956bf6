"""VSR (Visual Spatial Reasoning, Liu et al. 2023): judge whether a caption about two objects' spatial relation is
true of a COCO image. Six tasks, ``vsr_{random,zeroshot}_{train,dev,test}``, read from the official split files."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from visfocus.benchmarks.base import Record, register_task, require_file
from visfocus.benchmarks.images import find_coco_image, first_existing_image, load_coco_boxes
from visfocus.benchmarks.scoring import BinaryTask
from visfocus.errors import VisfocusError

VARIANTS = ("random", "zeroshot")
PARTS = ("train", "dev", "test")
PROMPTS = {
    # The survey's prompt (docs/methods.md §9.2); its gold "True" is our "yes".
    "truefalse": ("Look at the image and decide whether the statement is True or False.\nStatement: {caption}\n"
                  "Answer with exactly one word: True or False."),
    # AdaptVis's VSR prompt (docs/methods.md §9.1), without its "User: <image>" / "Assistant:" markup.
    "yesno": ("Determine whether the description about the spatial relationship is correct or not. "
              "Answer with yes or no: {caption}"),
}
DATA_ROOT_HINT = "pass --data_root pointing at a folder with the official VSR `splits/` layout"


def split_file_candidates(data_root: Path, variant: str, part: str) -> list[Path]:
    """Where a split file may be: this project's data layout, the repo's ``data/`` folder, or the repo root."""
    relative = Path("splits") / variant / f"{part}.jsonl"
    return [data_root / "vsr" / relative, data_root / relative, data_root / "data" / relative]


def coco_split_of(image_link: str) -> str:
    """``http://images.cocodataset.org/train2017/x.jpg`` → ``train2017`` (the only place VSR says the split)."""
    return image_link.split("/")[3]


def vsr_question(caption: str, prompt_style: str) -> str:
    if prompt_style not in PROMPTS:
        raise VisfocusError(f"VSR has no prompt style '{prompt_style}'; choose one of {', '.join(PROMPTS)}")
    return PROMPTS[prompt_style].format(caption=caption)


def vsr_record(index: int, row: dict, prompt_style: str, image_path: Path, boxes: tuple[dict, ...]) -> Record:
    """One VSR row as a record; ``id`` is the row's line index in its split file (AdaptVis's ids are these)."""
    meta = {"caption": row["caption"], "image": row["image"], "coco_split": coco_split_of(row["image_link"])}
    meta.update({key: row[key] for key in ("subj", "obj") if key in row})
    return Record(id=str(index), question=vsr_question(row["caption"], prompt_style),
                  gold="yes" if int(row["label"]) == 1 else "no",
                  image_path=str(image_path), options=("yes", "no"),
                  relation=row["relation"], boxes=boxes, meta=meta)


class VSRTask(BinaryTask):
    """One VSR split. Images are used as they are (AdaptVis's 2300×4096 resize is a bug, docs/methods.md §11.5)."""

    prompt_styles = tuple(PROMPTS)

    def __init__(self, name: str, variant: str, part: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.variant, self.part = variant, part

    def target_text(self, record: Record) -> str:
        """The survey's True/False prompt wants "True"/"False"; the yes/no prompt "yes"/"no"."""
        if self.prompt_style == "truefalse":
            return "True" if record.gold == "yes" else "False"
        return record.gold

    def load_records(self) -> list[Record]:
        if self.data_root is None:
            return self._records_from_rows(_hub_rows(self.variant, self.part), image_roots=[Path.cwd()])
        candidates = split_file_candidates(self.data_root, self.variant, self.part)
        path = next((c for c in candidates if c.is_file()), candidates[0])
        also = ", ".join(str(c) for c in candidates[1:])
        what = f"VSR split file {self.variant}/{self.part}.jsonl"
        require_file(path, what, f"also looked at {also}; {DATA_ROOT_HINT}")
        with path.open() as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
        # The repo layouts keep images next to splits/ (data/images/); this project's layout under <root>/images.
        return self._records_from_rows(rows, image_roots=list(dict.fromkeys([self.data_root, path.parents[2]])))

    def _records_from_rows(self, rows: list[dict], image_roots: list[Path]) -> list[Record]:
        boxes = load_coco_boxes(self.data_root) or {}
        records = []
        for index, row in enumerate(rows):
            split = coco_split_of(row["image_link"])
            image = (first_existing_image((root, row["image"], split) for root in image_roots)
                     or find_coco_image(image_roots[0], row["image"], split))
            records.append(vsr_record(index, row, self.prompt_style, image, boxes.get(row["image"], ())))
        return records

    def split_info(self) -> dict:
        return {"variant": self.variant, "part": self.part}


# --- the Hugging Face Hub fallback (no data root given) ------------------------------------------------------------
def _hub_rows(variant: str, part: str) -> list[dict]:
    """Rows of ``cambridgeltl/vsr_<variant>`` from the Hub; needs the optional ``datasets`` package."""
    try:
        import datasets
    except ImportError:
        raise VisfocusError(f"VSR {variant}/{part} needs its annotation files: {DATA_ROOT_HINT} "
                            f"(or install `datasets` to read cambridgeltl/vsr_{variant} from the Hub)") from None
    try:
        dataset = datasets.load_dataset(f"cambridgeltl/vsr_{variant}", data_files={part: f"{part}.jsonl"})
    except Exception as error:  # datasets raises many kinds (offline, missing files); say which one
        reason = (str(error).strip().splitlines() or [""])[0]
        raise VisfocusError(f"could not read cambridgeltl/vsr_{variant} ({part}) from the Hub: "
                            f"{type(error).__name__}: {reason}; {DATA_ROOT_HINT}") from error
    return [dict(row) for row in dataset[part]]


for _variant in VARIANTS:
    for _part in PARTS:
        register_task(f"vsr_{_variant}_{_part}", partial(VSRTask, variant=_variant, part=_part))
