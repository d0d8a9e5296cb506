"""The teacher's prompt: LORE's chain of judgement, answered as strict JSON.

The chain follows LORE (product understanding, query intent, attribute constraints, match) and
ends in an ESCI grade. The answer must be one JSON object with the keys of
:data:`ANSWER_KEYS`; :func:`parse_answer` accepts nothing else (a reasoning model's
``<think>...</think>`` preamble and a single fenced code block around the object are tolerated).
Any change to the wording changes :data:`PROMPT_VERSION`, so cached verdicts of an older prompt
are never reused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from relmon.errors import DecodeError
from relmon.teacher.verdict import GRADES, Grade
from schemas.models import ReviewRequest

__all__ = ["ANSWER_KEYS", "PROMPT_VERSION", "Answer", "build_messages", "parse_answer"]

PROMPT_VERSION = "lore-esci-v1"
ANSWER_KEYS = ("product", "intent", "constraints", "match", "grade", "rationale")

SYSTEM = """You judge the relevance of e-commerce search results.
Think step by step, in this order:
1. product: what the product is (type, key attributes) from its title and category.
2. intent: what the shopper searching the query wants (product type, purpose).
3. constraints: the attributes the query requires (brand, colour, size, material, count, ...).
4. match: whether the product is the wanted type and meets each constraint.
Then grade the pair on the ESCI scale:
- Exact: the product is relevant for the query and meets all its constraints.
- Substitute: somewhat relevant: it fails some constraint but could stand in for the wanted item.
- Complement: it does not fit the query but could be used together with an exact item.
- Irrelevant: it is irrelevant for the query.
Answer with ONE JSON object and nothing else, with exactly these keys:
{"product": str, "intent": str, "constraints": str, "match": str,
 "grade": "Exact" | "Substitute" | "Complement" | "Irrelevant", "rationale": str}
Keep every string under 40 words; the rationale is one sentence."""

RETRY = (
    "Your answer was not valid: {error}. Reply again with ONE JSON object with exactly the keys "
    'product, intent, constraints, match, grade, rationale; grade is one of "Exact", '
    '"Substitute", "Complement", "Irrelevant". No other text.'
)

_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True)
class Answer:
    """A parsed answer: the grade, a short rationale and the chain's steps."""

    grade: Grade
    rationale: str
    steps: dict[str, str]


def user_message(request: ReviewRequest) -> str:
    """The user turn: the pair to judge (one field per line, parsed back by the test fake)."""
    lines = [f"Query: {request.query}", f"Product title: {request.title}"]
    if request.category:
        lines.append(f"Product category: {request.category}")
    lines.append(f"Locale: {request.locale}")
    return "\n".join(lines)


def build_messages(request: ReviewRequest) -> list[dict[str, str]]:
    """The chat messages for judging ``request``."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_message(request)},
    ]


def retry_message(error: str) -> dict[str, str]:
    """The user turn asking again after a malformed answer."""
    return {"role": "user", "content": RETRY.format(error=error[:200])}


def parse_answer(content: str) -> Answer:
    """Parse an answer strictly; raise :class:`DecodeError` (kind ``malformed``) otherwise."""
    text = _THINK.sub("", content or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not JSON ({exc.msg})", "malformed") from None
    if not isinstance(data, dict):
        raise DecodeError("not a JSON object", "malformed")
    missing = [k for k in ANSWER_KEYS if k not in data]
    if missing:
        raise DecodeError(f"missing keys {missing}", "malformed")
    extra = sorted(set(data) - set(ANSWER_KEYS))
    if extra:
        raise DecodeError(f"unexpected keys {extra}", "malformed")
    if not all(isinstance(data[k], str) for k in ANSWER_KEYS):
        raise DecodeError("every value must be a string", "malformed")
    grade = data["grade"].strip()
    if grade not in GRADES:
        raise DecodeError(f"grade {grade!r} is not one of {list(GRADES)}", "malformed")
    steps = {k: data[k].strip() for k in ANSWER_KEYS[:4]}
    return Answer(grade, data["rationale"].strip(), steps)
