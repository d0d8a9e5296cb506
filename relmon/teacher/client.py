"""A small OpenAI-compatible chat-completions client with the limits a paid judge needs.

``POST {base_url}/chat/completions`` (vLLM, Ollama, llama.cpp server, OpenAI). Every request waits
for the :class:`RateLimiter`, is counted against the :class:`DailyBudget` *before* it is sent
(with a :class:`SpendLedger`, in a ledger every teacher process counts, so a restart or a second
process never exceeds the day's budget), times out after ``timeout_s``, and on 429, 5xx,
timeouts and connection errors is tried again up to ``max_attempts`` times after an exponential
backoff with full jitter (a ``Retry-After`` header is honoured, capped at the longest backoff).
Other 4xx answers are the caller's mistake and are not retried.

A call that fails after every attempt opens a circuit breaker for ``breaker_s``: meanwhile every
call (on any thread, the other cases of the batch included) fails at once without spending a
request; then one call at a time probes the API with a single attempt, and its success closes
the breaker. So an API that hangs or fails spends about one request per ``breaker_s`` instead of
``max_attempts`` per case per batch retry, and does not eat the day's budget on the first cases
of a batch.

Error texts never carry the API key: a server that echoes the request (its ``Authorization``
header included) in an error body would otherwise have it printed by ``relmon teacher`` and
logged. :func:`redact` removes the key, any bearer token and ``api_key=``-style values.

Errors::

    ServiceError
    └── TeacherUnavailable       the API failed after every attempt (retry the batch later)
    ConfigError
    └── TeacherRejected          a 4xx other than 429: URL, model or key is wrong
    BudgetExhausted              today's request budget is spent (RelmonError)
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

import httpx

from relmon.errors import ConfigError, RelmonError, ServiceError

__all__ = [
    "BudgetExhausted",
    "ChatClient",
    "ChatResult",
    "DailyBudget",
    "RateLimiter",
    "SpendLedger",
    "TeacherRejected",
    "TeacherUnavailable",
    "backoff_delay",
    "redact",
]

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_BEARER_RE = re.compile(r"\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_KEY_VALUE_RE = re.compile(
    r"""(["']?\b(?:api[_-]?key|x-api-key|access[_-]?token|token|secret|password)["']?\s*[:=]\s*["']?)"""
    r"""[^\s"'&,;}]+""",
    re.IGNORECASE,
)
_USERINFO_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
REDACTED = "***"

log = logging.getLogger(__name__)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without ``secrets``, bearer/basic credentials, ``key=value`` secrets, URL users.

    Apply it to a whole text before shortening it: a cut could leave a key's prefix.
    """
    text = _BEARER_RE.sub(rf"\1\2{REDACTED}", text)
    text = _KEY_VALUE_RE.sub(rf"\1{REDACTED}", text)
    text = _USERINFO_RE.sub(rf"\1{REDACTED}@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class TeacherUnavailable(ServiceError):
    """The chat API did not answer usefully after every attempt."""


class TeacherRejected(ConfigError):
    """The chat API rejected the request (a 4xx other than 429): fix the configuration."""


class BudgetExhausted(RelmonError):
    """The daily request budget is spent."""


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: Callable[[], float] = random.random
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, base_s * 2**attempt)]."""
    return rng() * min(max_s, base_s * (2**attempt))


class RateLimiter:
    """A thread-safe token bucket: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._rate = rate
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take a token, waiting for one if needed; return the seconds waited."""
        if self._rate <= 0:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                wait = (1.0 - self._tokens) / self._rate
            self._sleep(wait)
            waited += wait


class SpendLedger(Protocol):
    """Where every process records the chat requests it sends (the store's ``teacher_requests``)."""

    def spent(self, day: date) -> int:
        """Requests granted on ``day`` by every process."""
        ...

    def reserve(self, day: date, request_id: str, tag: str, limit: int) -> bool:
        """Record one request before it is sent; False (and nothing counted) if over ``limit``.

        ``limit`` 0 means no limit. Raises if the record cannot be written (then nothing is sent).
        """
        ...


class DailyBudget:
    """Requests allowed per UTC day (``limit`` 0 = unlimited); thread-safe.

    With a ``ledger`` every request is reserved in it before it is sent and the day's count is
    the ledger's (every process's requests), not this process's memory. The first refusal of a
    day logs a WARNING.
    """

    def __init__(
        self,
        limit: int,
        spent_today: int = 0,
        today: Callable[[], date] | None = None,
        ledger: SpendLedger | None = None,
    ) -> None:
        self.limit = limit
        self._today = today or (lambda: datetime.now(UTC).date())
        self._day = self._today()
        self._ledger = ledger
        self._spent = max(spent_today, ledger.spent(self._day) if ledger is not None else 0)
        self._warned: date | None = None
        self._lock = threading.Lock()

    @property
    def spent(self) -> int:
        """Requests counted today (every process's, with a ledger)."""
        with self._lock:
            self._roll()
            if self._ledger is not None:
                self._spent = max(self._spent, self._ledger.spent(self._day))
            return self._spent

    @property
    def exhausted(self) -> bool:
        """True when no request is left today."""
        return self.limit > 0 and self.spent >= self.limit

    def take(self, tag: str = "") -> str:
        """Count one request and return its id; raise :class:`BudgetExhausted` when none is left.

        ``tag`` (the case's impression id) goes into the ledger with the request.
        """
        request_id = uuid.uuid4().hex
        with self._lock:
            self._roll()
            if self._ledger is not None:
                if self.limit <= 0 or self._spent < self.limit:
                    granted = self._ledger.reserve(self._day, request_id, tag, self.limit)
                else:
                    granted = False
                self._spent += int(granted)
                if self.limit > 0:  # the next request's check needs every process's count
                    self._spent = max(self._spent, self._ledger.spent(self._day))
            else:
                granted = self.limit <= 0 or self._spent < self.limit
                self._spent += int(granted)
            if granted:
                return request_id
            if self._warned != self._day:
                self._warned = self._day
                log.warning(
                    "daily teacher budget exhausted: %d of %d requests spent today (UTC); "
                    "review cases wait for people until the next UTC day "
                    "(RELMON_TEACHER_DAILY_BUDGET)",
                    self._spent,
                    self.limit,
                )
            raise BudgetExhausted(f"daily teacher budget of {self.limit} requests spent")

    def close(self) -> None:
        """Close the ledger's connection, if it has one."""
        closer = getattr(self._ledger, "close", None)
        if callable(closer):
            closer()

    def _roll(self) -> None:
        day = self._today()
        if day != self._day:
            self._day, self._spent = day, 0


@dataclass(frozen=True)
class ChatResult:
    """The answer's text, the HTTP requests it took and the time spent."""

    content: str
    calls: int
    latency_ms: float


class ChatClient:
    """Chat completions over HTTP (httpx), with rate limit, budget, timeouts and backoff."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        timeout_s: float = 60.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_tokens: int = 768,
        json_mode: bool = True,
        limiter: RateLimiter | None = None,
        budget: DailyBudget | None = None,
        max_connections: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        breaker_s: float | None = None,
    ) -> None:
        if not base_url:
            raise ConfigError("RELMON_TEACHER_BASE_URL is empty: no chat API to call")
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._secrets = (api_key,) if api_key else ()
        self._shown_url = self.redact(self._url)
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections),
        )
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._max_tokens = max_tokens
        self._json_mode = json_mode
        self._limiter = limiter or RateLimiter(0)
        self.budget = budget or DailyBudget(0)
        self._sleep = sleep
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "timeouts": 0}
        self._stats_lock = threading.Lock()
        self._breaker_s = backoff_max_s if breaker_s is None else breaker_s
        self._open_until: float | None = None  # monotonic time; None = closed
        self._probing = False

    def close(self) -> None:
        """Close the HTTP connections (and the budget's ledger)."""
        self._http.close()
        self.budget.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def redact(self, text: str) -> str:
        """``text`` without this client's API key or any other credential (:func:`redact`)."""
        return redact(text, self._secrets)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def _admit(self, first: bool) -> bool:
        """Whether an attempt may go out; True if it is the half-open breaker's probe."""
        with self._stats_lock:
            if self._open_until is None:
                return False
            if first and not self._probing and time.monotonic() >= self._open_until:
                self._probing = True
                return True
        self._count("refused_open")
        raise TeacherUnavailable(
            f"chat API {self._shown_url} is failing; not calling it for up to "
            f"{self._breaker_s:.0f} s (circuit open)"
        )

    def _close_breaker(self) -> None:
        with self._stats_lock:
            self._open_until, self._probing = None, False

    def _open_breaker(self) -> None:
        with self._stats_lock:
            self._open_until, self._probing = time.monotonic() + self._breaker_s, False

    def complete(self, messages: list[dict[str, str]], tag: str = "") -> ChatResult:
        """The assistant's answer to ``messages``; retries transient failures.

        ``tag`` (the case's impression id) is recorded with each request in the spend ledger.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": self._max_tokens,
        }
        if self._json_mode:
            body["response_format"] = {"type": "json_object"}
        started = time.monotonic()
        calls = 0
        last_error = "no attempt"
        probe = False
        try:
            for attempt in range(self._max_attempts):
                probe = self._admit(first=attempt == 0) or probe
                self.budget.take(tag)
                self._limiter.acquire()
                calls += 1
                self._count("requests")
                retry_after: float | None = None
                try:
                    response = self._http.post(self._url, json=body)
                except httpx.TimeoutException as exc:
                    self._count("timeouts")
                    last_error = f"timeout ({type(exc).__name__})"
                except httpx.TransportError as exc:
                    last_error = self.redact(f"transport error: {exc}")
                else:
                    if response.status_code == 200:
                        content = _content(response)
                        if content is not None:
                            self._close_breaker()
                            elapsed = (time.monotonic() - started) * 1000
                            return ChatResult(content, calls, elapsed)
                        last_error = "200 without choices[0].message.content"
                    elif response.status_code in _RETRY_STATUS:
                        last_error = f"HTTP {response.status_code}"
                        retry_after = _retry_after(response)
                    else:
                        self._close_breaker()  # it answered: the API is up, the request wrong
                        raise TeacherRejected(
                            f"chat API {self._shown_url} answered HTTP {response.status_code}: "
                            f"{self.redact(response.text)[:300]} (check RELMON_TEACHER_BASE_URL, "
                            "RELMON_TEACHER_MODEL, RELMON_TEACHER_API_KEY)"
                        )
                if probe:
                    break  # a failed probe is not retried: the breaker opens again
                if attempt + 1 < self._max_attempts:
                    self._count("retries")
                    delay = backoff_delay(attempt, self._backoff_s, self._backoff_max_s)
                    if retry_after is not None:
                        delay = max(delay, min(retry_after, self._backoff_max_s))
                    self._sleep(delay)
        except BaseException:
            if probe:  # the probe ended without an answer: let the next call probe
                with self._stats_lock:
                    self._probing = False
            raise
        if calls:
            self._open_breaker()
        raise TeacherUnavailable(
            f"chat API {self._shown_url} failed {calls} times; last: {last_error}"
        )


def _content(response: httpx.Response) -> str | None:
    try:
        data = response.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
