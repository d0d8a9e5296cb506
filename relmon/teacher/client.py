"""A small OpenAI-compatible chat-completions client with the limits a paid judge needs.

``POST {base_url}/chat/completions`` (vLLM, Ollama, llama.cpp server, OpenAI). Every request waits
for the :class:`RateLimiter`, is counted against the :class:`DailyBudget`, times out after
``timeout_s``, and on 429, 5xx, timeouts and connection errors is tried again up to
``max_attempts`` times after an exponential backoff with full jitter (a ``Retry-After`` header
is honoured, capped at the longest backoff). Other 4xx answers are the caller's mistake and are
not retried.

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

import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import httpx

from relmon.errors import ConfigError, RelmonError, ServiceError

__all__ = [
    "BudgetExhausted",
    "ChatClient",
    "ChatResult",
    "DailyBudget",
    "RateLimiter",
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


class DailyBudget:
    """Requests allowed per UTC day (``limit`` 0 = unlimited); thread-safe."""

    def __init__(
        self, limit: int, spent_today: int = 0, today: Callable[[], date] | None = None
    ) -> None:
        self.limit = limit
        self._today = today or (lambda: datetime.now(UTC).date())
        self._day = self._today()
        self._spent = spent_today
        self._lock = threading.Lock()

    @property
    def spent(self) -> int:
        """Requests counted today."""
        with self._lock:
            self._roll()
            return self._spent

    @property
    def exhausted(self) -> bool:
        """True when no request is left today."""
        return self.limit > 0 and self.spent >= self.limit

    def take(self) -> None:
        """Count one request; raise :class:`BudgetExhausted` when none is left."""
        with self._lock:
            self._roll()
            if self.limit > 0 and self._spent >= self.limit:
                raise BudgetExhausted(f"daily teacher budget of {self.limit} requests spent")
            self._spent += 1

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

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

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

    def complete(self, messages: list[dict[str, str]]) -> ChatResult:
        """The assistant's answer to ``messages``; retries transient failures."""
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
        for attempt in range(self._max_attempts):
            self.budget.take()
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
                        elapsed = (time.monotonic() - started) * 1000
                        return ChatResult(content, calls, elapsed)
                    last_error = "200 without choices[0].message.content"
                elif response.status_code in _RETRY_STATUS:
                    last_error = f"HTTP {response.status_code}"
                    retry_after = _retry_after(response)
                else:
                    raise TeacherRejected(
                        f"chat API {self._shown_url} answered HTTP {response.status_code}: "
                        f"{self.redact(response.text)[:300]} (check RELMON_TEACHER_BASE_URL, "
                        "RELMON_TEACHER_MODEL, RELMON_TEACHER_API_KEY)"
                    )
            if attempt + 1 < self._max_attempts:
                self._count("retries")
                delay = backoff_delay(attempt, self._backoff_s, self._backoff_max_s)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self._backoff_max_s))
                self._sleep(delay)
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
