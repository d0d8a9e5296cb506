"""The product text the cross-encoder reads: the title, then brand, colour and category.

Training and serving build it with the same function, so a model never sees text shaped
differently from what it was trained on. Every part but the title is optional: many catalogues
send a title only, and the model is trained with the extra fields dropped at random so that it
does well either way (the model card reports both).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "category_leaf",
    "names_any",
    "product_text",
    "title_head",
    "title_of",
    "without_words",
]

_CATEGORY_LEVELS = 2  # the last levels of a category path: specific and short
_FIELD = re.compile(r" \| (?:brand|colour|category) ")
_FOR = re.compile(r"\b(?:for|compatible with|fits)\b", re.IGNORECASE)
_WITHOUT = re.compile(r"\b(?:without|w/o|not)\s+(.+)$", re.IGNORECASE)
_SCOPE_END = re.compile(r"\b(?:with|and|but)\b|,", re.IGNORECASE)
_FUNCTION_WORDS = frozenset(
    {"a", "an", "the", "and", "or", "with", "for", "of", "in", "on", "to", "any", "my", "your"}
    | {"included", "include"}
)
_NEGATED_BEFORE = re.compile(r"\b(?:without|w/o|no|non|not)\b", re.IGNORECASE)
_NEGATED_AFTER = re.compile(r"[\s-]*(?:free|less)\b", re.IGNORECASE)
_NEGATION_REACH = 25  # characters before a word in which a "no" or "without" negates it


def category_leaf(category: str | Sequence[str] | None) -> str | None:
    """The last two levels of a category path (``"A > B > C"`` or a list), or ``None``."""
    if category is None:
        return None
    levels = (
        [c.strip() for c in category.split(">")]
        if isinstance(category, str)
        else [str(c).strip() for c in category]
    )
    levels = [c for c in levels if c]
    return " > ".join(levels[-_CATEGORY_LEVELS:]) or None


def product_text(
    title: str,
    brand: str | None = None,
    color: str | None = None,
    category: str | Sequence[str] | None = None,
) -> str:
    """``"title | brand X | colour Y | category Z"`` with the missing parts left out."""
    parts = [" ".join(title.split())]
    leaf = category_leaf(category)
    for name, value in (("brand", brand), ("colour", color), ("category", leaf)):
        if value and value.strip():
            parts.append(f"{name} {' '.join(value.split())}")
    return " | ".join(parts)


def title_of(text: str) -> str:
    """The title of a :func:`product_text`: the text up to its first brand, colour or category.

    A title that holds " | " itself keeps it ("Mug | 2 Pack | brand X" gives "Mug | 2 Pack").
    """
    return _FIELD.split(text, maxsplit=1)[0]


def title_head(title: str) -> str | None:
    """The title's words before its first "for", "compatible with" or "fits"; None without one.

    An accessory names what it is *for* after such a word ("Case for iPhone 12"), so a query
    for the thing itself is close to the whole title and far from its head. ``None`` when the
    title has no such word, or nothing before it.
    """
    head, *rest = _FOR.split(title, maxsplit=1)
    head = " ".join(head.split())
    return head if rest and head else None


def without_words(query: str) -> tuple[str, ...]:
    """The words a query asks its results to be without, in order; empty when it asks none.

    ``("chicken",)`` of "cat treats without chicken", ``("wiring",)`` of "lights without wiring
    with switch": the words after the query's first "without", "w/o" or "not", up to a "with",
    "and", "but" or comma, less function words and single letters.
    """
    found = _WITHOUT.search(query)
    if found is None:
        return ()
    scope = _SCOPE_END.split(found.group(1), maxsplit=1)[0]
    words = re.findall(r"[a-z0-9]+", scope.lower())
    return tuple(dict.fromkeys(w for w in words if w not in _FUNCTION_WORDS and len(w) > 1))


def names_any(title: str, words: Sequence[str]) -> bool:
    """Whether ``title`` names one of ``words`` (a plural too) where the title does not negate it.

    A title negates a word it names after a "no", "non", "not", "without" or "w/o" close before
    it ("Belt, No Buckle") or with "free" or "less" after it ("Gelatin-Free"), which is what the
    query asked for; any other mention names it.
    """
    text = title.lower()
    for word in words:
        stem = word[:-1] if word.endswith("s") and len(word) > 3 else word
        for hit in re.finditer(rf"\b{re.escape(stem)}(?:s|es)?\b", text):
            before = text[max(0, hit.start() - _NEGATION_REACH) : hit.start()]
            if _NEGATED_BEFORE.search(before) or _NEGATED_AFTER.match(text, hit.end()):
                continue
            return True
    return False
