"""The verdict record: one grade of one review case, by the LLM teacher or by a person.

The ``relmon.teacher-labels`` topic's record, a contract like the others in :mod:`schemas` (its
JSON Schema is shipped beside theirs); the teacher imports it as :mod:`relmon.teacher.verdict`.

Grades are the ESCI scale (Exact, Substitute, Complement, Irrelevant). A verdict calls the pair
*bad* when the grade is Complement or Irrelevant, the same cut :data:`scoring.data.GRADE_TARGETS`
makes (a target below 0.5 is the hard label 0), so the student's flag, the teacher and people
are compared on one definition of a bad case.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import ReviewRequest

__all__ = ["BAD_GRADES", "GRADES", "Grade", "Judge", "Verdict", "grade_target"]

Grade = Literal["Exact", "Substitute", "Complement", "Irrelevant"]
Judge = Literal["teacher", "human"]
GRADES: tuple[Grade, ...] = ("Exact", "Substitute", "Complement", "Irrelevant")
BAD_GRADES: frozenset[str] = frozenset({"Complement", "Irrelevant"})
_TARGETS = {"Exact": 1.0, "Substitute": 0.6, "Complement": 0.3, "Irrelevant": 0.0}


def grade_target(grade: str) -> float:
    """The soft training target of a grade (as :data:`scoring.data.GRADE_TARGETS` for ESCI)."""
    return _TARGETS[grade]


class Verdict(BaseModel):
    """A graded review case: one row of ``verdicts``, one record of the labels topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    impression_id: str
    judge: Judge
    judge_id: str = Field(description="the teacher model's name, or the reviewer's name")
    prompt_version: str = Field(default="", description="empty for people")
    query: str
    product_id: str
    title: str
    category: str = ""
    tier: str = "tail"
    locale: str = "en-US"
    position: int = 1
    reason: str
    score: float
    threshold: float
    student_bad: bool
    model_version: str
    sample_weight: float
    review_weight: float
    event_time: datetime
    grade: Grade
    is_bad: bool
    rationale: str = ""
    cached: bool = False
    calls: int = 0
    latency_ms: float = 0.0
    judged_at: datetime

    @classmethod
    def of(
        cls,
        request: ReviewRequest,
        *,
        judge: Judge,
        judge_id: str,
        grade: Grade,
        rationale: str = "",
        prompt_version: str = "",
        cached: bool = False,
        calls: int = 0,
        latency_ms: float = 0.0,
        judged_at: datetime | None = None,
    ) -> Verdict:
        """The verdict on ``request``."""
        return cls(
            impression_id=request.impression_id,
            judge=judge,
            judge_id=judge_id,
            prompt_version=prompt_version,
            query=request.query,
            product_id=request.product_id,
            title=request.title,
            category=request.category,
            tier=request.tier,
            locale=request.locale,
            position=request.position,
            reason=request.reason,
            score=request.score,
            threshold=request.threshold,
            student_bad=request.score < request.threshold,
            model_version=request.model_version,
            sample_weight=request.sample_weight,
            review_weight=request.review_weight,
            event_time=request.event_time,
            grade=grade,
            is_bad=grade in BAD_GRADES,
            rationale=rationale[:4000],
            cached=cached,
            calls=calls,
            latency_ms=latency_ms,
            judged_at=judged_at or datetime.now(UTC),
        )

    def to_bytes(self) -> bytes:
        """Serialise as compact JSON."""
        return self.model_dump_json().encode()
