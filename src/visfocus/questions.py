"""What makes a question (or a continuation) unaskable, as pure text checks with one-line reasons: not a non-empty
string, invalid Unicode (a lone surrogate), text the tokenizer reads as a special token (an image placeholder or a
chat marker, which would change the prompt's structure), or a prompt that does not fit the model's context.
``VLM.question_problems`` applies them with the model's own special tokens and context length."""

from __future__ import annotations

from collections.abc import Sequence


def cut(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut), for messages."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def unicode_problem(text: str, noun: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate: what ``str.encode("utf-8")`` refuses), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"the {noun} has invalid Unicode at position {err.start} (U+{ord(text[err.start]):04X}, a lone "
                f"surrogate); give valid text: {cut(text)!r}")
    return None


def first_token(text: str, tokens: Sequence[str]) -> str | None:
    """The token of ``tokens`` (longest first) that occurs earliest in ``text``, or None."""
    found, at = None, len(text)
    for token in tokens:
        index = text.find(token)
        if 0 <= index < at:
            found, at = token, index
    return found


def too_long(noun: str, text: str, length: int, new_tokens: int, limit: int, *, with_image: bool) -> str:
    """The message for a prompt of ``length`` tokens that with ``new_tokens`` more does not fit ``limit``."""
    what = "with its image's tokens" if with_image else "before its image's tokens are counted"
    plus = f" + {new_tokens} new tokens = {length + new_tokens}" if new_tokens else ""
    fixes = [f"shorten the {noun}", *(["give a smaller image"] if with_image else []),
             *(["ask for fewer max_new_tokens"] if new_tokens else [])]
    return (f"the prompt of the {noun} {cut(text)!r} is {length} tokens ({what}){plus}, over the model's context "
            f"of {limit} tokens (max_position_embeddings); {', or '.join(fixes)}")


def text_problem(text: object, noun: str, special_tokens: Sequence[str]) -> str | None:
    """Why ``text`` cannot be asked as a ``noun``, or None (the context length is checked apart)."""
    if not isinstance(text, str) or not text.strip():
        return f"a {noun} must be a non-empty string, got {text!r}"
    invalid = unicode_problem(text, noun)
    if invalid is not None:
        return invalid
    token = first_token(text, special_tokens)
    if token is not None:
        return (f"the {noun} contains {token!r}, which the tokenizer reads as a special token (an image "
                f"placeholder or chat marker); remove it from the {noun}: {cut(text)!r}")
    return None
