"""The verdict record, under the name the teacher imports it by; it lives in :mod:`schemas.verdict`.

It is a contract (the ``relmon.teacher-labels`` topic's record, with a JSON Schema), so it sits
with the other records; this name stays so the teacher's imports keep working.
"""

from schemas.verdict import BAD_GRADES, GRADES, Grade, Judge, Verdict, grade_target

__all__ = ["BAD_GRADES", "GRADES", "Grade", "Judge", "Verdict", "grade_target"]
