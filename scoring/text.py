"""The product text the cross-encoder reads: the title, then brand, colour and category.

Training and serving build it with the same function, so a model never sees text shaped
differently from what it was trained on. Every part but the title is optional: many catalogues
send a title only, and the model is trained with the extra fields dropped at random so that it
does well either way (the model card reports both).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["category_leaf", "product_text", "title_head"]

_CATEGORY_LEVELS = 2  # the last levels of a category path: specific and short
_FOR = re.compile(r"\b(?:for|compatible with|fits)\b", re.IGNORECASE)


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


def title_head(title: str) -> str | None:
    """The title's words before its first "for", "compatible with" or "fits"; None without one.

    An accessory names what it is *for* after such a word ("Case for iPhone 12"), so a query
    for the thing itself is close to the whole title and far from its head. ``None`` when the
    title has no such word, or nothing before it.
    """
    head, *rest = _FOR.split(title, maxsplit=1)
    head = " ".join(head.split())
    return head if rest and head else None
