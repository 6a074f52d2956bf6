"""Turn a model's free-text answer into a canonical answer word: option words (WhatsUp, synthetic) and yes/no (VSR,
POPE), by whole-word matching — plus the official AdaptVis substring scorers, kept only to reproduce its numbers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Phrases a model may use instead of an option word, keyed by the option they stand for. ``synonyms_for`` keeps only
# the entries whose option is in the prompt's option set, and never a phrase that is itself an option of that set.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "to the left", "left of", "left side"),
    "right": ("on the right", "to the right", "right of", "right side"),
    "top": ("above", "on top", "over", "upper"),  # COCO/VG one-object
    "bottom": ("below", "under", "beneath", "underneath", "lower"),  # COCO/VG one-object
    "above": ("top", "on top", "over"),  # COCO/VG two-object, synthetic
    "below": ("under", "beneath", "underneath", "bottom"),  # COCO/VG two-object, synthetic
    "on": ("on top", "atop", "above", "on top of"),  # Controlled A
    "under": ("below", "beneath", "underneath"),  # Controlled A
    "front": ("in front", "in front of"),  # Controlled B, VG
    "behind": ("in back", "back", "in back of"),  # Controlled B, VG
}

_BINARY_WORDS = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_BINARY_PATTERN = re.compile(r"(?<![^\W_])(yes|no|true|false)(?![^\W_])", re.IGNORECASE)


def synonyms_for(options: Sequence[str]) -> dict[str, str]:
    """Synonym phrase (lowercase) -> the option (as spelled in ``options``) it stands for, for this option set.

    Only options in the set are targets; a phrase that is itself one of the options is left out (it stands for
    itself), and so is a phrase that would stand for two options of the set (ambiguous)."""
    canonical = {option.lower(): option for option in options}
    targets: dict[str, set[str]] = {}
    for option_lower, option in canonical.items():
        for phrase in SYNONYMS.get(option_lower, ()):
            if phrase not in canonical:
                targets.setdefault(phrase, set()).add(option)
    return {phrase: next(iter(found)) for phrase, found in targets.items() if len(found) == 1}


def _whole_phrase_pattern(phrase: str) -> re.Pattern[str]:
    """A case-insensitive pattern for ``phrase`` as whole words: no letter or digit touches either end, and the
    words inside may be separated by any run of spaces or hyphens."""
    words = (re.escape(word) for word in phrase.split())
    return re.compile(r"(?<![^\W_])" + r"[\s\-]+".join(words) + r"(?![^\W_])", re.IGNORECASE)


def parse_option(text: str, options: Sequence[str], synonyms: Mapping[str, str] | None = None) -> str | None:
    """The option mentioned first in ``text``, or None when no option or synonym occurs.

    Candidates are the options themselves and the ``synonyms`` phrases (phrase -> option), matched as whole words or
    phrases, case-insensitively, so "front" never counts as "on" and "positioned" never counts as "on". Among all
    matches the earliest start wins; on a tie the longest phrase wins ("on the left" -> left, not on)."""
    candidates = {option.lower(): option for option in options}
    for phrase, option in (synonyms or {}).items():
        candidates.setdefault(phrase.lower(), option)
    best: tuple[int, int, str] | None = None  # (start, -length, option): smaller is better
    for phrase, option in candidates.items():
        if not phrase.strip():
            continue
        match = _whole_phrase_pattern(phrase).search(text)
        if match is not None:
            key = (match.start(), -(match.end() - match.start()), option)
            if best is None or key[:2] < best[:2]:
                best = key
    return best[2] if best is not None else None


def parse_binary(text: str) -> str | None:
    """"yes" or "no": the first whole word among yes/no/true/false (true -> yes, false -> no), case-insensitive;
    None when none occurs ("yesterday" and "I don't know" give None)."""
    match = _BINARY_PATTERN.search(text)
    return _BINARY_WORDS[match.group(1).lower()] if match else None


def adaptvis_option_correct(text: str, gold: str) -> bool:
    """The official AdaptVis WhatsUp scorer (``get_out_scores_wh_batched``), for reproducing its numbers only.

    Correct iff the capitalised gold word ("On") is a substring of ``text`` or the lowercase gold is a substring of
    the lowercased text — except that gold "on" is wrong whenever "front" appears (case-insensitively). This is
    lenient substring containment, not exact match: "on" also matches "positioned" or "on the left", and an answer
    naming every option counts as correct."""
    gold_word = gold.strip()
    if gold_word.lower() == "on" and "front" in text.strip().lower():
        return False
    return gold_word.capitalize() in text or gold_word.lower() in text.lower()


def adaptvis_vsr_correct(text: str, gold: str) -> bool:
    """The official AdaptVis VSR judge (``get_judge_scores_vsr_batched``), for reproducing its numbers only: gold
    "yes" is correct iff "Yes" is a substring of ``text``, gold "no" iff "No" is — case-sensitive, so a lowercase
    "yes" never counts."""
    expected = {"yes": "Yes", "no": "No"}.get(gold.strip().lower())
    if expected is None:
        raise ValueError(f"the AdaptVis VSR judge needs gold 'yes' or 'no', got {gold!r}")
    return expected in text
