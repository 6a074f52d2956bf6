"""The rendered WhatsUp-like scenes the organism is trained and reported on: split sizes and relation mixes, exact
geometry of every relation, determinism, and distinct splits."""

from collections import Counter

import pytest

import visfocus as vf
from visfocus.benchmarks.scenes import IMAGE_SIZE, RELATIONS, ScenesTask, place, split_scenes


def _boxes(record):
    by_label = {b["label"]: b["xyxy"] for b in record.boxes}
    return by_label[record.meta["subject"]], by_label[record.meta["reference"]]


def holds(relation, subject, reference):
    """The relation's definition, written independently of the placement code."""
    (sx0, sy0, sx1, sy1), (rx0, ry0, rx1, ry1) = subject, reference
    s_cx, s_cy, r_cy = (sx0 + sx1) / 2, (sy0 + sy1) / 2, (ry0 + ry1) / 2
    if relation == "left":
        return 8 <= rx0 - sx1 <= 60 and abs(s_cy - r_cy) <= 11
    if relation == "right":
        return 8 <= sx0 - rx1 <= 60 and abs(s_cy - r_cy) <= 11
    centred = rx0 <= s_cx <= rx1
    if relation == "on":
        return 0 <= ry0 - sy1 <= 2 and centred
    return 0 <= sy0 - ry1 <= 4 and centred  # under


@pytest.mark.parametrize("split, n, counts", [
    # the organism's training mix: on/under rare (0.5 % each, 60 scenes); v1's mix kept to rebuild organism-v1
    ("train", 12000, {"left": 5940, "right": 5940, "on": 60, "under": 60}),
    ("train_v1", 12000, {"left": 5520, "right": 5520, "on": 480, "under": 480}),
    ("dev", 400, {"left": 100, "right": 100, "on": 100, "under": 100}),
    ("test", 800, {"left": 200, "right": 200, "on": 200, "under": 200}),
])
def test_splits_have_their_size_and_relation_mix(split, n, counts):
    scenes = split_scenes(split, n, seed=0)
    assert len(scenes) == n
    assert Counter(s.relation for s in scenes) == counts


@pytest.mark.parametrize("name", ["scenes_dev", "scenes_test"])
def test_every_record_satisfies_its_relation_and_nothing_else(name):
    t = vf.task(name)
    for record in t.records:
        subject, reference = _boxes(record)
        assert [r for r in RELATIONS if holds(r, subject, reference)] == [record.gold], record.id
        assert all(0 <= v <= IMAGE_SIZE for box in (subject, reference) for v in box)
        assert record.image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert record.question == (f"Where is the {record.meta['subject']} in relation to the "
                                   f"{record.meta['reference']}? Answer with left, right, on or under.")
        assert record.options == RELATIONS and record.relation == record.gold


def test_objects_are_named_by_distinct_colours_and_distractors_stay_apart():
    scenes = split_scenes("dev", 400, seed=0)
    with_distractor = [s for s in scenes if s.distractor is not None]
    assert 80 <= len(with_distractor) <= 160  # about 30 %
    for s in scenes:
        colours = [o.colour for o in (s.subject, s.reference, s.distractor) if o is not None]
        assert len(set(colours)) == len(colours)
    for s in with_distractor:
        d = s.distractor.box
        for other in (s.subject.box, s.reference.box):
            assert d[2] <= other[0] or other[2] <= d[0] or d[3] <= other[1] or other[3] <= d[1]


def test_the_subject_colour_is_drawn_inside_its_box():
    record = vf.task("scenes_test").records[0]
    subject, _ = _boxes(record)
    from visfocus.benchmarks.scenes import COLOURS

    colour = COLOURS[record.meta["subject"].split()[0]]
    cx, cy = (subject[0] + subject[2]) // 2, (subject[1] + subject[3]) * 3 // 4 // 1  # low centre: inside triangles too
    cy = min(cy, subject[3] - 2)
    assert record.image.getpixel((cx, cy)) == colour


def test_scenes_are_deterministic_and_splits_differ():
    first, again = ScenesTask("a", "test").records[:20], ScenesTask("b", "test").records[:20]
    assert [(r.question, r.gold, r.image.tobytes()) for r in first] == \
        [(r.question, r.gold, r.image.tobytes()) for r in again]
    dev = {r.image.tobytes() for r in vf.task("scenes_dev").records}
    assert not dev & {r.image.tobytes() for r in vf.task("scenes_test").records}
    other_seed = ScenesTask("c", "test", n_records=20, seed=1).records
    assert [r.image.tobytes() for r in other_seed] != [r.image.tobytes() for r in first]


def test_the_v1_training_split_is_named_as_the_first_organism_saw_it():
    v1 = ScenesTask("v1", "train_v1", n_records=3).records
    assert [r.id for r in v1] == ["train-0", "train-1", "train-2"]
    assert ScenesTask("v2", "train", n_records=3).records[0].id == "train-0"


def test_place_refuses_what_cannot_fit():
    import random

    assert place(random.Random(0), "left", (100, 30), (100, 30)) is None
    assert place(random.Random(0), "on", (30, 100), (30, 100)) is None
