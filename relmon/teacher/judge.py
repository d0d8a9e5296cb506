"""The LLM judge: review cases in, verdicts out, with a cache and bounded concurrency.

A case is looked up in the verdict cache by (normalised query, product id, prompt version; the
query normalised by :func:`normalise_query`, in Python on both sides of the lookup):
first in memory (LRU), then through ``lookup`` (the store's earlier verdicts, so restarts and
replays do not pay twice). Misses are judged concurrently (``concurrency`` threads; the
:class:`~relmon.teacher.client.ChatClient` adds the rate limit, budget, timeouts and backoff).
A malformed answer is asked again up to ``parse_retries`` times; if it stays malformed, or the
budget is spent, the case gets no teacher verdict and stays in the review queue for people.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from relmon.errors import DecodeError
from relmon.teacher.client import BudgetExhausted, ChatClient
from relmon.teacher.prompt import PROMPT_VERSION, build_messages, parse_answer, retry_message
from relmon.teacher.verdict import Grade, Verdict
from schemas.models import ReviewRequest

__all__ = ["CacheKey", "CachedGrade", "JudgeOutcome", "LlmJudge", "cache_key", "normalise_query"]

log = logging.getLogger(__name__)

CacheKey = tuple[str, str, str]


def normalise_query(query: str) -> str:
    """The query as the verdict cache compares it: NFKC, case-folded, single spaces.

    Full Unicode case folding ("CAFÉ" and "café", "STRASSE" and "straße" are one query), so it
    is done here and not in SQL, whose lower() folds ASCII letters only.
    """
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def cache_key(request: ReviewRequest, prompt_version: str = PROMPT_VERSION) -> CacheKey:
    """(normalised query, product id, prompt version)."""
    return (normalise_query(request.query), request.product_id, prompt_version)


@dataclass(frozen=True)
class CachedGrade:
    """What the cache keeps of a verdict."""

    grade: Grade
    rationale: str


@dataclass(frozen=True)
class JudgeOutcome:
    """The result for one case: a verdict, or why there is none."""

    request: ReviewRequest
    verdict: Verdict | None
    status: Literal["judged", "cached", "malformed", "over_budget"]
    error: str = ""
    calls: int = 0
    """chat requests spent on a case left without a verdict (a verdict carries its own)"""


@dataclass
class _Stats:
    counts: dict[str, int] = field(default_factory=dict)

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


class LlmJudge:
    """Judges review cases with a chat model; see the module docstring."""

    def __init__(
        self,
        client: ChatClient,
        *,
        concurrency: int = 4,
        parse_retries: int = 2,
        cache_size: int = 50_000,
        lookup: Callable[[Sequence[CacheKey]], dict[CacheKey, CachedGrade]] | None = None,
        prompt_version: str = PROMPT_VERSION,
    ) -> None:
        self.client = client
        self.prompt_version = prompt_version
        self._parse_retries = parse_retries
        self._cache: OrderedDict[CacheKey, CachedGrade] = OrderedDict()
        self._cache_size = cache_size
        self._lookup = lookup
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")
        self.stats = _Stats()

    @property
    def judge_id(self) -> str:
        """The model's name as recorded in verdicts."""
        return self.client.model

    def close(self) -> None:
        """Stop the worker threads and close the client."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def remember(self, key: CacheKey, value: CachedGrade) -> None:
        """Put a verdict in the memory cache."""
        if self._cache_size <= 0:
            return
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def judge(self, requests: Iterable[ReviewRequest]) -> list[JudgeOutcome]:
        """Verdicts for ``requests`` (in order); raises if the API stays unavailable."""
        reqs = list(requests)
        keys = [cache_key(r, self.prompt_version) for r in reqs]
        known: dict[CacheKey, CachedGrade] = {k: self._cache[k] for k in keys if k in self._cache}
        missing = sorted({k for k in keys if k not in known})
        if missing and self._lookup is not None:
            for k, v in self._lookup(missing).items():
                known[k] = v
                self.remember(k, v)
        # one call per distinct pair in the batch
        todo: dict[CacheKey, ReviewRequest] = {}
        for r, k in zip(reqs, keys, strict=True):
            if k not in known:
                todo.setdefault(k, r)
        fresh = dict(zip(todo, self._pool.map(self._judge_one, todo.values()), strict=True))
        out: list[JudgeOutcome] = []
        for r, k in zip(reqs, keys, strict=True):
            if k in known:
                hit = known[k]
                self.stats.inc("cached")
                out.append(
                    JudgeOutcome(
                        r,
                        Verdict.of(
                            r,
                            judge="teacher",
                            judge_id=self.judge_id,
                            grade=hit.grade,
                            rationale=hit.rationale,
                            prompt_version=self.prompt_version,
                            cached=True,
                        ),
                        "cached",
                    )
                )
                continue
            outcome = fresh[k]
            if outcome.request is not r and outcome.verdict is not None:
                # a second case of the same pair in this batch: the first one's verdict, cached
                self.stats.inc("cached")
                outcome = JudgeOutcome(
                    r,
                    Verdict.of(
                        r,
                        judge="teacher",
                        judge_id=self.judge_id,
                        grade=outcome.verdict.grade,
                        rationale=outcome.verdict.rationale,
                        prompt_version=self.prompt_version,
                        cached=True,
                    ),
                    "cached",
                )
            elif outcome.request is not r:
                outcome = JudgeOutcome(r, None, outcome.status, outcome.error)
            out.append(outcome)
        return out

    def _judge_one(self, request: ReviewRequest) -> JudgeOutcome:
        messages = build_messages(request)
        calls, latency = 0, 0.0
        error = ""
        for _ in range(self._parse_retries + 1):
            try:
                result = self.client.complete(messages, tag=request.impression_id)
            except BudgetExhausted as exc:
                self.stats.inc("over_budget")
                return JudgeOutcome(
                    request, None, "over_budget", self.client.redact(str(exc)), calls
                )
            calls += result.calls
            latency += result.latency_ms
            try:
                answer = parse_answer(result.content)
            except DecodeError as exc:
                error = self.client.redact(str(exc))
                self.stats.inc("malformed_answers")
                messages = [
                    *messages,
                    {"role": "assistant", "content": result.content[:2000]},
                    retry_message(error),
                ]
                continue
            self.stats.inc("judged")
            self.remember(
                cache_key(request, self.prompt_version),
                CachedGrade(answer.grade, answer.rationale),
            )
            verdict = Verdict.of(
                request,
                judge="teacher",
                judge_id=self.judge_id,
                grade=answer.grade,
                rationale=answer.rationale,
                prompt_version=self.prompt_version,
                calls=calls,
                latency_ms=latency,
            )
            return JudgeOutcome(request, verdict, "judged")
        self.stats.inc("malformed")
        log.warning("no valid answer for %s: %s", request.impression_id, error)
        return JudgeOutcome(request, None, "malformed", error, calls)
