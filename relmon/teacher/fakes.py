"""An in-process fake of an OpenAI-compatible chat-completions server, for tests and demos.

:class:`FakeChatServer` listens on 127.0.0.1 (a free port) in a thread and answers
``POST /v1/chat/completions`` in the OpenAI wire format. It grades the pair found in the last
user turn with ``grader`` (default: word overlap of query and title) and follows a script of
faults first, one per request: ``"429"`` (with ``Retry-After: 0``), ``"500"``, ``"hang"`` (no
answer until ``hang_s`` passes, so the client times out), ``"malformed"`` (an answer that is not
JSON), ``"bad_grade"`` (JSON with a grade outside ESCI), ``"garbage"`` (a 200 whose body is not
JSON), ``"think"`` (a reasoning preamble and a fenced JSON answer, which is valid),
``"slow[:s]"`` (a valid answer after ``s`` seconds, default 1: slower than usual, not a
timeout) and ``"echo_auth[:n]"`` (a 400 whose body echoes the request's headers,
``Authorization`` included, after a message padded by ``n`` characters).

:func:`esci_reference_grader` is a reference judge for such a server: it answers with the
people's grade of the bundled ESCI judgments, so a test of the teacher loop on real pairs knows
what every verdict must say.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from relmon.teacher.judge import normalise_query
from relmon.teacher.verdict import Grade
from scoring.data import Example
from scoring.esci import load_esci_judgments

__all__ = [
    "ESCI_GRADE_NAMES",
    "EsciReferenceGrader",
    "FakeChatServer",
    "esci_reference_grader",
    "overlap_grade",
]

_WORD = re.compile(r"[a-z0-9]+")
_QUERY = re.compile(r"^Query: (.*)$", re.MULTILINE)
_TITLE = re.compile(r"^Product title: (.*)$", re.MULTILINE)


def overlap_grade(query: str, title: str) -> Grade:
    """Exact if every query word is in the title, Irrelevant if none is, else Substitute."""
    q = set(_WORD.findall(query.lower()))
    t = set(_WORD.findall(title.lower()))
    if q and q <= t:
        return "Exact"
    if not q & t:
        return "Irrelevant"
    return "Substitute"


ESCI_GRADE_NAMES: dict[str, Grade] = {
    "E": "Exact",
    "S": "Substitute",
    "C": "Complement",
    "I": "Irrelevant",
}
"""ESCI's grade letters (as :func:`scoring.esci.load_esci_judgments` gives them) by name."""


class EsciReferenceGrader:
    """A grader that answers with the human grade of a judged (query, title) pair.

    Query and title are both matched after :func:`~relmon.teacher.judge.normalise_query` (NFKC,
    case-folded, single spaces), so the text the prompt carries (stripped by the review
    request's schema) finds its judgment. A pair that is not judged, or is *ambiguous* (one
    title judged with different grades for one query: the same title sold as several products;
    12 pairs of the bundled slice), raises :class:`KeyError`: a reference judge that guessed
    would let a test pass on invented labels. Inside :class:`FakeChatServer` that request then
    gets no answer (the connection is closed), so the teacher retries and finally gives up on
    the batch; ask only pairs :meth:`knows` says are known.
    """

    def __init__(self, examples: Iterable[Example]) -> None:
        grades: dict[tuple[str, str], set[Grade]] = {}
        for e in examples:
            name = ESCI_GRADE_NAMES[str(e.grade).strip().upper()]
            grades.setdefault(self.key(e.query, e.title), set()).add(name)
        self.grades: dict[tuple[str, str], Grade] = {
            k: next(iter(g)) for k, g in grades.items() if len(g) == 1
        }
        self.ambiguous: frozenset[tuple[str, str]] = frozenset(
            k for k, g in grades.items() if len(g) > 1
        )

    @staticmethod
    def key(query: str, title: str) -> tuple[str, str]:
        """The normalised (query, title) a pair is matched on."""
        return normalise_query(query), normalise_query(title)

    def knows(self, query: str, title: str) -> bool:
        """True when the pair has one human grade."""
        return self.key(query, title) in self.grades

    def __len__(self) -> int:
        return len(self.grades)

    def __call__(self, query: str, title: str) -> Grade:
        """The people's grade of the pair; :class:`KeyError` when unknown or ambiguous."""
        key = self.key(query, title)
        try:
            return self.grades[key]
        except KeyError:
            why = "judged with different grades" if key in self.ambiguous else "not judged"
            raise KeyError(f"no reference grade for {key!r}: {why}") from None


def esci_reference_grader(examples: Iterable[Example] | None = None) -> EsciReferenceGrader:
    """A reference judge from human ESCI grades, for :class:`FakeChatServer`'s ``grader``.

    ``examples`` default to the bundled judgments (:func:`scoring.esci.load_esci_judgments`);
    see :class:`EsciReferenceGrader` for the matching and for unknown pairs (they raise).
    """
    return EsciReferenceGrader(load_esci_judgments() if examples is None else examples)


class FakeChatServer:
    """A chat-completions server in a thread; use as a context manager."""

    def __init__(
        self,
        grader: Callable[[str, str], str] = overlap_grade,
        faults: Iterable[str] = (),
        hang_s: float = 5.0,
        api_key: str | None = None,
    ) -> None:
        self.grader = grader
        self.faults: deque[str] = deque(faults)
        self.hang_s = hang_s
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.served: dict[str, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL to configure (``RELMON_TEACHER_BASE_URL``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def add_faults(self, *faults: str) -> None:
        """Queue more faults."""
        with self._lock:
            self.faults.extend(faults)

    def start(self) -> FakeChatServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (hanging requests are released)."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, body: dict[str, Any]) -> str:
        with self._lock:
            self.requests.append(body)
            fault = self.faults.popleft() if self.faults else "ok"
            self.served[fault] = self.served.get(fault, 0) + 1
            return fault

    def answer(self, body: dict[str, Any], fault: str) -> str:
        """The assistant's content for a request."""
        users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
        first = users[0] if users else ""
        q, t = _QUERY.search(first), _TITLE.search(first)
        query, title = (q.group(1) if q else ""), (t.group(1) if t else "")
        if fault == "malformed":
            return f"The product {title!r} looks fine to me."
        grade = "Very relevant" if fault == "bad_grade" else self.grader(query, title)
        answer = json.dumps(
            {
                "product": title,
                "intent": f"the shopper wants {query}",
                "constraints": "none beyond the product type",
                "match": "matches" if grade == "Exact" else "does not fully match",
                "grade": grade,
                "rationale": f"{grade}: title vs query '{query}'.",
            }
        )
        if fault == "think":
            return f"<think>Let me look at the product first.</think>\n```json\n{answer}\n```"
        return answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Stay quiet."""

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                """Answer a chat completion."""
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": "not found"}', {})
                    return
                if fake.api_key is not None and (
                    self.headers.get("Authorization") != f"Bearer {fake.api_key}"
                ):
                    self._send(401, b'{"error": {"message": "bad key"}}', {})
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, b'{"error": {"message": "bad json"}}', {})
                    return
                fault = fake._next(body)
                if fault == "429":
                    self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
                    return
                if fault == "500":
                    self._send(500, b'{"error": {"message": "boom"}}', {})
                    return
                if fault.startswith("echo_auth"):  # echoes the request's headers, as some do
                    padding = int(fault.partition(":")[2] or 0)
                    echoed = {
                        "error": {"message": "unknown model" + "." * padding},
                        "request_headers": dict(self.headers.items()),
                    }
                    self._send(400, json.dumps(echoed).encode(), {})
                    return
                if fault == "hang":
                    fake._release.wait(fake.hang_s)
                if fault.startswith("slow"):
                    fake._release.wait(float(fault.partition(":")[2] or 1.0))
                if fault == "garbage":
                    self._send(200, b"<html>gateway</html>", {"Content-Type": "text/html"})
                    return
                content = fake.answer(body, fault)
                reply = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": body.get("model", ""),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
                }
                try:
                    self._send(200, json.dumps(reply).encode(), {})
                except (BrokenPipeError, ConnectionResetError):
                    return

        return Handler
