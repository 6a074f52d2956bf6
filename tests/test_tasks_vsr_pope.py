"""VSR and POPE loaders on the real annotation files in ../shared/data: row counts, label balance, staged images,
boxes, prompt styles and the errors for a bad data root. Skipped when that folder is absent."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from visfocus.benchmarks import pope, vsr
from visfocus.benchmarks.base import task, tasks
from visfocus.benchmarks.images import find_coco_image
from visfocus.errors import VisfocusError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not DATA.is_dir():
    pytest.skip(f"reference data not found at {DATA}", allow_module_level=True)

# split: (rows, label 1, label 0, rows whose staged image exists) — docs/benchmarks.md §1
VSR_COUNTS = {
    ("random", "train"): (7680, 3876, 3804, 24), ("random", "dev"): (1097, 564, 533, 1),
    ("random", "test"): (2195, 1181, 1014, 3), ("zeroshot", "train"): (3489, 1799, 1690, 16),
    ("zeroshot", "dev"): (340, 167, 173, 0), ("zeroshot", "test"): (1222, 629, 593, 1),
}
CAPTION = "The cat is under the backpack."


def _present(records) -> set[tuple[str, str]]:
    return {(r.id, r.image_path) for r in records if Path(r.image_path).is_file()}


def _staged(file_name: str, key: str, value: str, id_key: str) -> set[tuple[str, str]]:
    rows = [json.loads(line) for line in (DATA / file_name).read_text().splitlines() if line.strip()]
    return {(str(r[id_key]), str(DATA / r["local_path"])) for r in rows if r[key] == value}


def test_all_fifteen_names_are_registered():
    names = set(tasks())
    assert {f"vsr_{v}_{p}" for v in vsr.VARIANTS for p in vsr.PARTS} <= names
    assert {f"pope_{s}_{k}" for s in pope.SOURCES for k in pope.SAMPLINGS} <= names


@pytest.mark.parametrize(("variant", "part"), list(VSR_COUNTS))
def test_vsr_counts_balance_and_staged_images(variant, part):
    rows, yes, no, present = VSR_COUNTS[(variant, part)]
    records = task(f"vsr_{variant}_{part}", data_root=DATA).records
    assert len(records) == rows
    assert Counter(r.gold for r in records) == {"yes": yes, "no": no}
    assert [r.id for r in records[:3]] == ["0", "1", "2"]
    assert _present(records) == _staged("vsr/vsr_rows_with_staged_images.jsonl", "split", f"{variant}/{part}",
                                        "line_index")
    assert len(_present(records)) == present


def test_vsr_record_fields_and_boxes():
    record = task("vsr_zeroshot_test", data_root=DATA)[1]  # line 1 of zeroshot/test.jsonl
    assert (record.id, record.gold, record.relation) == ("1", "no", "under")
    assert record.meta == {"caption": CAPTION, "image": "000000199940.jpg", "coco_split": "train2017",
                           "subj": "cat", "obj": "backpack"}
    assert record.options == ("yes", "no")
    assert {"cat", "backpack"} <= {box["label"] for box in record.boxes}
    for box in record.boxes:
        x0, y0, x1, y1 = box["xyxy"]
        assert box["normalized"] and 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1


def test_vsr_prompt_styles():
    default = task("vsr_zeroshot_test", data_root=DATA)[1].question
    assert default == ("Look at the image and decide whether the statement is True or False.\n"
                       f"Statement: {CAPTION}\nAnswer with exactly one word: True or False.")
    yesno = task("vsr_zeroshot_test", data_root=DATA, prompt_style="yesno")[1].question
    assert yesno == ("Determine whether the description about the spatial relationship is correct or not. "
                     f"Answer with yes or no: {CAPTION}")
    assert "<image>" not in default + yesno and "User:" not in yesno
    with pytest.raises(VisfocusError, match="no prompt style 'chat'"):
        task("vsr_random_dev", data_root=DATA, prompt_style="chat")


def test_vsr_reads_the_official_repo_layout(tmp_path):
    (tmp_path / "data" / "splits" / "random").mkdir(parents=True)
    shutil.copy(DATA / "vsr" / "splits" / "random" / "dev.jsonl", tmp_path / "data" / "splits" / "random")
    image = tmp_path / "data" / "images" / "000000239417.jpg"  # the repo keeps images next to splits/
    image.parent.mkdir()
    image.write_bytes(b"")
    records = task("vsr_random_dev", data_root=tmp_path).records
    assert len(records) == 1097 and records[0].image_path == str(image)
    assert records[1].image_path == str(tmp_path / "images" / "000000224670.jpg")  # missing: the default place
    assert records[0].boxes == ()  # no box file under this root


def test_missing_files_raise_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(VisfocusError, match=r"VSR split file random/dev\.jsonl not found at .*--data_root"):
        len(task("vsr_random_dev", data_root=tmp_path))
    with pytest.raises(VisfocusError, match=r"POPE file coco_pope_random\.json not found at .*--data_root"):
        len(task("pope_coco_random", data_root=tmp_path))
    monkeypatch.delenv("VISFOCUS_DATA_ROOT", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(VisfocusError, match="--data_root"):
        len(task("vsr_zeroshot_test"))


@pytest.mark.parametrize("source", pope.SOURCES)
@pytest.mark.parametrize("sampling", pope.SAMPLINGS)
def test_pope_counts_and_balance(source, sampling):
    records = task(f"pope_{source}_{sampling}", data_root=DATA).records
    assert len(records) == 3000 and len({r.id for r in records}) == 3000
    assert Counter(r.gold for r in records) == {"yes": 1500, "no": 1500}
    assert all(r.relation is None and r.meta["object"] for r in records)


def test_pope_coco_staged_images_match_the_index():
    present = set()
    for sampling in pope.SAMPLINGS:
        records = task(f"pope_coco_{sampling}", data_root=DATA).records
        file_name = pope.pope_file_name("coco", sampling)
        found = _present(records)
        assert found == _staged("pope/pope_rows_with_staged_images.jsonl", "file", file_name, "question_id")
        present |= {(file_name, *row) for row in found}
    assert len(present) == 54


def test_pope_record_and_prompt_styles():
    record = task("pope_coco_random", data_root=DATA)[0]
    assert (record.id, record.question, record.gold) == ("1", "Is there a snowboard in the image?", "yes")
    assert record.meta == {"image": "COCO_val2014_000000310196.jpg", "object": "snowboard"}
    assert record.boxes and all(box["normalized"] for box in record.boxes)
    oneword = task("pope_coco_random", data_root=DATA, prompt_style="oneword")[0].question
    assert oneword == "Is there a snowboard in the image? Answer the question using a single word or phrase."
    gqa = task("pope_gqa_random", data_root=DATA)[0]
    assert gqa.image_path == str(DATA / "gqa" / "images" / "2405722.jpg") and gqa.boxes == ()


def test_pope_parsers():
    assert pope.parse_pope_rows('[{"a": 1}]\n') == [{"a": 1}]
    assert pope.parse_pope_rows('{"a": 1}\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    assert pope.asked_object("Is there an orange in the image?") == "orange"
    assert pope.asked_object("What is this?") is None


def test_find_coco_image_candidates(tmp_path):
    nested = tmp_path / "images" / "some_mirror" / "val2017" / "000000000001.jpg"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"")
    assert find_coco_image(tmp_path, "000000000001.jpg", "val2017") == nested
    assert find_coco_image(tmp_path, "000000000002.jpg", "val2017") == tmp_path / "images" / "000000000002.jpg"
    flat = tmp_path / "val2017" / "000000000003.jpg"
    flat.parent.mkdir()
    flat.write_bytes(b"")
    assert find_coco_image(tmp_path, "000000000003.jpg", "val2017") == flat
    assert find_coco_image(tmp_path, "000000000003.jpg", None) == tmp_path / "images" / "000000000003.jpg"


def test_vsr_training_targets_follow_the_prompt_style():
    if not DATA.is_dir():
        pytest.skip("../shared/data is absent")
    for style, expected in (("truefalse", {"True", "False"}), ("yesno", {"yes", "no"})):
        t = vsr.VSRTask("vsr_zeroshot_dev", variant="zeroshot", part="dev", data_root=DATA, prompt_style=style)
        assert {t.target_text(r) for r in t.records[:20]} == expected
        assert all(t.parse(t.target_text(r), r) == r.gold for r in t.records[:20])


def test_vsr_from_the_hub_offline_is_one_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'cambridgeltl/vsr_zeroshot' on the Hub (OfflineModeIsEnabled)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("VISFOCUS_DATA_ROOT", raising=False)
    with pytest.raises(VisfocusError) as err:
        len(task("vsr_zeroshot_test"))
    assert str(err.value).startswith("could not read cambridgeltl/vsr_zeroshot (test) from the Hub: ConnectionError: "
                                     "Couldn't reach 'cambridgeltl/vsr_zeroshot' on the Hub (OfflineModeIsEnabled); "
                                     "pass --data_root")
