"""Answer parsing: whole-word option and yes/no matching, the synonym table, and the official AdaptVis scorer quirks."""

from __future__ import annotations

import pytest

from visfocus.parsing import (
    SYNONYMS,
    adaptvis_option_correct,
    adaptvis_vsr_correct,
    parse_binary,
    parse_option,
    synonyms_for,
)

CONTROLLED_A = ("left", "right", "on", "under")
CONTROLLED_B = ("left", "right", "front", "behind")
COCO_ONE = ("left", "right", "top", "bottom")
COCO_TWO = ("left", "right", "above", "below")
VG_ONE = ("left", "right", "front", "behind", "top", "bottom")
VG_TWO = ("left", "right", "front", "behind", "above", "below")
SYNTHETIC = ("left", "right", "above", "below")
OPTION_SETS = [CONTROLLED_A, CONTROLLED_B, COCO_ONE, COCO_TWO, VG_ONE, VG_TWO, SYNTHETIC]


def parse(text: str, options: tuple[str, ...]) -> str | None:
    return parse_option(text, options, synonyms_for(options))


def test_on_the_left_is_left_not_on():
    assert parse("The mug is on the left of the table.", CONTROLLED_A) == "left"


def test_in_front_is_front_in_controlled_b_and_nothing_in_controlled_a():
    assert parse("The ball is in front of the cube", CONTROLLED_B) == "front"
    assert parse("The ball is in front of the cube", CONTROLLED_A) is None  # "on" inside "front" never counts


def test_positioned_does_not_count_as_on():
    assert parse("The cup is positioned under the table", CONTROLLED_A) == "under"


@pytest.mark.parametrize("text", ["Left.", "LEFT", "left,", "(left)", "Answer: left!"])
def test_punctuation_and_case(text):
    assert parse(text, CONTROLLED_A) == "left"


def test_top_is_a_synonym_of_above_in_coco_two():
    assert parse("Top", COCO_TWO) == "above"
    assert parse("It is on top of the car", COCO_TWO) == "above"


def test_first_mention_wins():
    assert parse("left, not right", CONTROLLED_A) == "left"
    assert parse("Not left but right", CONTROLLED_A) == "left"  # first mention, even when negated
    assert parse("under the table, to the left", CONTROLLED_A) == "under"


def test_longest_phrase_wins_at_the_same_start():
    # "on top of", "on top" and "on" all start at the same place; in COCO one "on top" -> top and "on" is no option.
    assert parse("It is on top of the shelf", CONTROLLED_A) == "on"
    assert parse("It is on top of the shelf", COCO_ONE) == "top"


def test_synonyms_map_to_the_set_they_belong_to():
    assert parse("The dog is below the table", CONTROLLED_A) == "under"
    assert parse("The dog is below the table", COCO_ONE) == "bottom"
    assert parse("The dog is underneath the table", COCO_TWO) == "below"
    assert parse("It is in the back", VG_ONE) == "behind"
    assert parse("It is above the bed", CONTROLLED_A) == "on"


def test_no_option_gives_none():
    assert parse("I cannot tell from this image.", CONTROLLED_A) is None
    assert parse("", COCO_ONE) is None
    assert parse("leftover frontier", VG_TWO) is None  # option words only inside longer words


def test_options_keep_their_spelling():
    assert parse_option("it is on the LEFT", ("Left", "Right")) == "Left"


def test_parse_option_without_synonyms_uses_option_words_only():
    assert parse_option("The ball is below the box", COCO_ONE) is None
    assert parse_option("The ball is at the bottom", COCO_ONE) == "bottom"


@pytest.mark.parametrize("options", OPTION_SETS)
def test_every_synonym_maps_into_its_option_set(options):
    synonyms = synonyms_for(options)
    assert synonyms  # every set has left/right phrases at least
    assert set(synonyms.values()) <= set(options)
    assert not set(synonyms) & set(options)  # an option word never stands for another option


def test_synonym_sets_for_two_object_and_controlled():
    assert synonyms_for(COCO_TWO) == {
        "on the left": "left", "to the left": "left", "left of": "left", "left side": "left",
        "on the right": "right", "to the right": "right", "right of": "right", "right side": "right",
        "top": "above", "on top": "above", "over": "above",
        "under": "below", "beneath": "below", "underneath": "below", "bottom": "below",
    }
    controlled_a = synonyms_for(CONTROLLED_A)
    assert controlled_a["above"] == "on" and controlled_a["below"] == "under"
    assert "in front" not in controlled_a and "under" not in controlled_a


def test_a_phrase_that_would_name_two_options_is_dropped():
    synonyms = synonyms_for(("top", "on"))
    assert "above" not in synonyms and "on top" not in synonyms  # both stand for top and for on
    assert synonyms["upper"] == "top" and synonyms["atop"] == "on"


def test_table_has_only_known_options():
    assert set(SYNONYMS) == {"left", "right", "top", "bottom", "above", "below", "on", "under", "front", "behind"}


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes.", "yes"), ("No, it is not", "no"), ("True", "yes"), ("false", "no"), ("YES", "yes"),
    ("I don't know", None), ("yesterday", None), ("Nothing", None), ("", None),
    ("The answer is no.", "no"), ("Yes and no", "yes"),
])
def test_parse_binary(text, expected):
    assert parse_binary(text) == expected


def test_adaptvis_option_scorer_is_substring_matching():
    assert adaptvis_option_correct("The cup is positioned under the table", "on")  # "on" inside "positioned"
    assert not adaptvis_option_correct("The ball is in front of the cube", "on")  # the on/front exception
    assert not adaptvis_option_correct("It is on top, not in FRONT", "on")  # the exception ignores case
    assert adaptvis_option_correct("In front.", "front")
    assert adaptvis_option_correct("left, right, on or under", "under")  # naming every option counts
    assert adaptvis_option_correct("LEFT", "left")
    assert not adaptvis_option_correct("To the right.", "left")


def test_adaptvis_vsr_judge_is_case_sensitive():
    assert adaptvis_vsr_correct("Yes, it is.", "yes")
    assert not adaptvis_vsr_correct("yes", "yes")  # lowercase "yes" is not counted
    assert not adaptvis_vsr_correct("YES", "yes")
    assert adaptvis_vsr_correct("No", "no")
    assert adaptvis_vsr_correct("Nothing is there", "no")  # substring: "No" in "Nothing"
    assert not adaptvis_vsr_correct("no", "no")
    with pytest.raises(ValueError):
        adaptvis_vsr_correct("Yes", "maybe")
