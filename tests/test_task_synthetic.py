"""The generated spatial task: deterministic, balanced, boxes that agree with the gold relation, parsed and scored
like any option task, and no data root needed."""

from __future__ import annotations

from collections import Counter

import pytest

from visfocus.benchmarks import synthetic
from visfocus.benchmarks.base import task
from visfocus.benchmarks.synthetic import RELATIONS, SyntheticSpatialTask, relation_holds


def _centre(box):
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2


@pytest.fixture(scope="module")
def records():
    return task("synthetic_spatial").records


def test_needs_no_data_and_has_64_balanced_records(records, monkeypatch):
    monkeypatch.delenv("VISFOCUS_DATA_ROOT", raising=False)
    assert len(task("synthetic_spatial")) == 64
    assert Counter(r.gold for r in records) == {relation: 16 for relation in RELATIONS}
    assert len({r.id for r in records}) == 64


def test_same_seed_same_images_and_golds(records):
    again = SyntheticSpatialTask("synthetic_spatial").records
    assert [r.gold for r in again] == [r.gold for r in records]
    assert [r.question for r in again] == [r.question for r in records]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(again, records))
    other = SyntheticSpatialTask("synthetic_spatial", seed=1).records
    assert [r.question for r in other] != [r.question for r in records]


def test_record_fields(records):
    record = records[0]
    subject, reference = record.meta["subject"], record.meta["reference"]
    assert subject != reference
    assert record.question == (f"Where is the {subject} in relation to the {reference}? "
                               "Answer with left, right, above or below.")
    assert record.options == RELATIONS and record.relation == record.gold
    assert record.image_path is None and record.image.size == synthetic.IMAGE_SIZE
    assert [box["label"] for box in record.boxes] == [subject, reference]


def test_boxes_agree_with_the_gold_relation(records):
    width, height = synthetic.IMAGE_SIZE
    for record in records:
        subject, reference = (box["xyxy"] for box in record.boxes)
        assert all(not box["normalized"] for box in record.boxes)
        assert all(0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height for x0, y0, x1, y1 in (subject, reference))
        (sx, sy), (rx, ry) = _centre(subject), _centre(reference)
        expected = {"left": sx < rx, "right": sx > rx, "above": sy < ry, "below": sy > ry}
        assert expected[record.gold]
        assert relation_holds(record.gold, subject, reference)
        assert not any(relation_holds(other, subject, reference) for other in RELATIONS if other != record.gold)


def test_shapes_are_drawn_inside_their_boxes(records):
    record = records[0]
    for box in record.boxes:
        x0, y0, x1, y1 = box["xyxy"]
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        assert record.image.getpixel(centre) != synthetic.BACKGROUND
    assert record.image.getpixel((0, 0)) == synthetic.BACKGROUND


def test_parse_and_score_through_option_task(records):
    synthetic_task = task("synthetic_spatial")
    record = next(r for r in records if r.gold == "left")
    assert synthetic_task.parse("It is on the left.", record) == "left"
    assert synthetic_task.parse("Below.", record) == "below"
    rows = [{"id": r.id, "gold": r.gold, "parsed": r.gold, "correct": True, "relation": r.relation} for r in records]
    scores = synthetic_task.score(rows)
    assert scores["n"] == 64 and scores["accuracy"] == 1.0
