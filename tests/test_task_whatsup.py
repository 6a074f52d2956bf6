"""WhatsUp tasks on the real AdaptVis question files and WhatsUp index files in /work/shared/data (skipped without
them): counts, images, groups, boxes, the seeded dev/test split, and the official-JSON layouts."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from visfocus.benchmarks.base import TASKS, task
from visfocus.benchmarks.whatsup import SUBSETS, clean_question, dev_indices
from visfocus.errors import VisfocusError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "adaptvis_prompts").is_dir(), reason=f"no benchmark data at {DATA}")

EXPECTED = {
    "controlled_a": (412, {"on": 103, "under": 103, "left": 103, "right": 103}),
    "controlled_b": (408, {"left": 102, "right": 102, "front": 102, "behind": 102}),
    "coco_one": (2247, {"bottom": 744, "left": 576, "right": 564, "top": 363}),
    "coco_two": (440, {"left": 150, "right": 129, "above": 86, "below": 75}),
    "vg_one": (1160, {"left": 392, "right": 376, "bottom": 198, "top": 192, "behind": 2}),
    "vg_two": (291, {"right": 137, "left": 127, "front": 19, "behind": 5, "above": 3}),
}


def load(name: str, data_root: Path = DATA):
    return task(name, data_root=data_root)


def test_eighteen_names_are_registered():
    names = {name for name in TASKS if name.startswith("whatsup_")}
    assert names == {f"whatsup_{subset}{part}" for subset in SUBSETS for part in ("", "_dev", "_test")}


@pytest.mark.parametrize("subset", list(EXPECTED))
def test_row_and_answer_counts(subset):
    records = load(f"whatsup_{subset}").records
    n, answers = EXPECTED[subset]
    assert len(records) == n
    assert Counter(rec.gold for rec in records) == answers
    assert [rec.id for rec in records] == [str(i) for i in range(n)]
    assert all(rec.relation == rec.gold and rec.gold in rec.options for rec in records)


@pytest.mark.parametrize("subset", list(EXPECTED))
def test_questions_have_no_llava_markup(subset):
    for rec in load(f"whatsup_{subset}").records:
        assert not any(mark in rec.question for mark in ("<image>", "USER:", "ASSISTANT:", "..", "\n", "  "))
        assert rec.question.startswith("Where ") and "Answer with" in rec.question and rec.question.endswith(".")


def test_question_cleaning_keeps_options_and_cuts_the_stray_caption():
    question, stray = clean_question("<image>\nUSER: Where is the man in relation to the woman?\nAnswer with left, "
                                     "right, front, behind, above or below.\nOption A photo of a man to the right of "
                                     "a woman.\nASSISTANT:")
    assert question == "Where is the man in relation to the woman? Answer with left, right, front, behind, above or " \
                       "below."
    assert stray == "Option A photo of a man to the right of a woman."
    vg_two = {rec.id: rec for rec in load("whatsup_vg_two")}
    assert "Option" not in vg_two["84"].question and vg_two["84"].meta["removed_from_question"] == stray
    assert clean_question("<image>\nUSER: Where is the x in the photo? Answer with top or bottom..\nASSISTANT:")[0] \
        == "Where is the x in the photo? Answer with top or bottom."


def test_controlled_a_has_103_sets_and_206_pairs():
    records = load("whatsup_controlled_a").records
    sets = Counter(rec.group for rec in records)
    pairs = Counter(rec.pair for rec in records)
    assert len(sets) == 103 and set(sets.values()) == {4}
    assert len(pairs) == 206 and set(pairs.values()) == {2}
    for pair in pairs:
        assert {rec.gold for rec in records if rec.pair == pair} in ({"left", "right"}, {"on", "under"})


def test_controlled_b_has_102_sets_and_204_pairs():
    records = load("whatsup_controlled_b").records
    assert set(Counter(rec.group for rec in records).values()) == {4} and len({rec.group for rec in records}) == 102
    assert len({rec.pair for rec in records}) == 204


@pytest.mark.parametrize("subset", ["controlled_a", "controlled_b"])
def test_controlled_images_are_the_official_files(subset):
    index_name = SUBSETS[subset].index_file
    official = {str(row["id"]): row["image_path"] for row in map(json.loads, (DATA / "whatsup" / index_name).open())}
    for rec in load(f"whatsup_{subset}"):
        assert rec.image_path.endswith(official[rec.id])
        assert rec.group == "{}|{}".format(*(Path(official[rec.id]).stem.split("_")[i] for i in (0, -1)))


def test_one_controlled_image_checked_by_hand():
    a, b = load("whatsup_controlled_a")[0], load("whatsup_controlled_b")[0]
    assert a.question.startswith("Where is the beer bottle in relation to the armchair?") and a.gold == "on"
    assert a.image_path.endswith("data/controlled_images/beer-bottle_on_armchair.jpeg")
    assert (a.group, a.pair) == ("beer-bottle|armchair", "beer-bottle|armchair:on_under")
    assert b.image_path.endswith("controlled_clevr/mug_right_of_knife.jpeg") and b.gold == "right"
    assert b.boxes[0] == {"label": "mug", "xyxy": (604, 364, 859, 622), "normalized": False}


def test_controlled_b_boxes_agree_with_the_relation():
    for rec in load("whatsup_controlled_b"):
        assert len(rec.boxes) == 2 and rec.meta["boxes_source"] == "ground_truth"
        (sx0, sy0, sx1, sy1), (ox0, oy0, ox1, oy1) = (box["xyxy"] for box in rec.boxes)
        if rec.gold in ("left", "right"):
            assert ((sx0 + sx1) / 2 < (ox0 + ox1) / 2) == (rec.gold == "left")
        else:  # the nearer object's bottom edge is lower in the picture
            assert (sy1 > oy1) == (rec.gold == "front")


def test_controlled_a_boxes_are_marked_yolo():
    records = load("whatsup_controlled_a").records
    assert all(rec.meta["boxes_source"] == "yolo" for rec in records if rec.boxes)
    assert sum(bool(rec.boxes) for rec in records) == 410


@pytest.mark.parametrize("subset", ["controlled_a", "coco_one", "vg_two"])
def test_dev_and_test_split_the_full_set(subset):
    full = load(f"whatsup_{subset}")
    dev, test = load(f"whatsup_{subset}_dev"), load(f"whatsup_{subset}_test")
    n = len(full)
    expected = sorted(random.Random(1).sample(range(n), int(0.2 * n)))
    assert len(dev) == int(0.2 * n) and len(dev) + len(test) == n
    assert [rec.id for rec in dev] == [str(i) for i in expected] == [str(i) for i in dev_indices(n)]
    assert {rec.id for rec in dev}.isdisjoint(rec.id for rec in test)
    assert {rec.id for rec in dev} | {rec.id for rec in test} == {rec.id for rec in full}
    assert dev.split_info() == {"part": "dev", "seed": 1, "fraction": 0.2, "indices": expected}
    assert load(f"whatsup_{subset}_dev").split_info() == dev.split_info() and full.split_info() == {}
    assert test.split_info()["indices"] == sorted(set(range(n)) - set(expected))


def test_pair_and_set_accuracy_count_complete_groups_only():
    dev = load("whatsup_controlled_a_dev")
    rows = [{"id": r.id, "gold": r.gold, "parsed": r.gold, "correct": True, "relation": r.relation,
             "group": r.group, "pair": r.pair} for r in dev]
    scores = dev.score(rows)
    complete_pairs = sum(n == 2 for n in Counter(r.pair for r in dev).values())
    assert scores["accuracy"] == 1.0 and scores["pair"]["accuracy"] == 1.0
    assert scores["pair"]["n_complete"] == complete_pairs


def test_parse_through_the_task():
    tsk = load("whatsup_controlled_a")
    assert tsk.parse("The cup is on the left of the table", tsk[0]) == "left"
    assert tsk.parse("It is under it.", tsk[0]) == "under"


@pytest.mark.parametrize("subset", ["coco_one", "coco_two", "vg_one", "vg_two"])
def test_coco_and_vg_without_official_json_have_no_image(subset):
    for rec in load(f"whatsup_{subset}"):
        assert rec.image_path is None and SUBSETS[subset].image_list in rec.meta["image_missing_reason"]
        assert rec.group is None and rec.pair is None


def test_missing_question_file_is_one_clear_error(tmp_path):
    with pytest.raises(VisfocusError, match=r"Controlled_Images_B_with_answer_four_options\.jsonl.*--data_root"):
        len(load("whatsup_controlled_b", tmp_path))


def _prompt_root(tmp_path: Path, subset: str, folder: str = "adaptvis_prompts") -> Path:
    (tmp_path / folder).mkdir()
    shutil.copy(DATA / "adaptvis_prompts" / SUBSETS[subset].prompt_file, tmp_path / folder)
    return tmp_path


def test_official_controlled_json_layout(tmp_path):
    root = _prompt_root(tmp_path, "controlled_b", "prompts")
    index = [json.loads(line) for line in (DATA / "whatsup" / "Controlled_Images_B_index.jsonl").open()]
    rows = [{"image_path": row["image_path"], "caption_options": ["a", "b", "c", "d"]} for row in index]
    (root / "controlled_clevr_dataset.json").write_text(json.dumps(rows))
    (root / "controlled_clevr").mkdir()
    (root / "controlled_clevr" / "mug_right_of_knife.jpeg").write_bytes(b"")
    records = load("whatsup_controlled_b", root).records
    assert records[0].image_path == str(root / "controlled_clevr" / "mug_right_of_knife.jpeg")
    assert records[1].image_path == str(root / index[1]["image_path"])  # missing: the first candidate
    assert len({rec.group for rec in records}) == 102 and all(not rec.boxes for rec in records)
    (root / "controlled_clevr_dataset.json").write_text(json.dumps(rows[1:] + rows[:1]))
    with pytest.raises(VisfocusError, match="does not pair row by row"):
        len(load("whatsup_controlled_b", root))


def test_official_coco_json_layout(tmp_path):
    root = _prompt_root(tmp_path, "coco_two")
    image_ids = [139 + i for i in range(440)]
    (root / "whatsup").mkdir()
    (root / "whatsup" / "coco_qa_two_obj.json").write_text(json.dumps([[i, "right", "wrong"] for i in image_ids]))
    (root / "val2017").mkdir()
    (root / "val2017" / "000000000139.jpg").write_bytes(b"")
    records = load("whatsup_coco_two", root).records
    assert records[0].image_path == str(root / "val2017" / "000000000139.jpg")
    assert records[1].image_path.endswith("000000000140.jpg") and records[1].meta["image_id"] == 140
    (root / "whatsup" / "coco_qa_two_obj.json").write_text(json.dumps([[1, "a", "b"]]))
    with pytest.raises(VisfocusError, match="pair row by row"):
        len(load("whatsup_coco_two", root))
