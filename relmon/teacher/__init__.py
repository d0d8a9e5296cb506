"""The teacher-review loop: an LLM judge and people grade the student's review cases.

``relmon teacher`` (:class:`TeacherConsumer`) turns review requests into verdicts with an
OpenAI-compatible chat model (:class:`LlmJudge`, :class:`ChatClient`); the dashboard's review
page records people's grades; :mod:`relmon.teacher.agreement` compares the student with both and
corrects its bad-case rate; :func:`export_distill` writes the labels for the next distillation.
"""

from __future__ import annotations

from relmon.teacher.client import ChatClient
from relmon.teacher.consumer import TeacherConsumer, build_judge
from relmon.teacher.distill import export_distill
from relmon.teacher.judge import LlmJudge
from relmon.teacher.prompt import PROMPT_VERSION
from relmon.teacher.verdict import Verdict

__all__ = [
    "PROMPT_VERSION",
    "ChatClient",
    "LlmJudge",
    "TeacherConsumer",
    "Verdict",
    "build_judge",
    "export_distill",
]
