"""relmon's exceptions.

Tree (every exception relmon defines; ``tests/unit/test_exception_tree.py`` keeps it so)::

    RelmonError                  base of everything relmon raises on purpose
    ├── ConfigError              a setting is missing or wrong: the message says what to fix
    │   ├── ModelNotFoundError   no built model where RELMON_MODEL_DIR points
    │   └── TeacherRejected      the chat API rejected the request (4xx): fix the configuration
    ├── DecodeError              an input record cannot be decoded or validated (caller's data)
    ├── ModelRejectedError       a new model is worse than the published one (``scoring.training``)
    ├── BudgetExhausted          the teacher's daily request budget is spent
    ├── StoreError               the local store refuses or fails a request, as ClickHouse
    │                            would answer it (``relmon.store.protocol``; server side)
    └── ServiceError             infrastructure: a broker, store or process failed
        ├── StartupTimeout       a service did not become ready in time
        ├── StoreUnavailable     ClickHouse (or the local store) failed a call
        ├── BrokerError          the Kafka broker failed a send
        │   └── MessageRefused   the broker refused the messages themselves (too large, invalid)
        └── TeacherUnavailable   the chat API did not answer usefully after every attempt

``TeacherRejected``, ``BudgetExhausted`` and ``TeacherUnavailable`` live in
``relmon.teacher.client``. Test fakes that mimic a third-party client's error by name (such as
``streams.testing.MessageSizeTooLargeError``) are the only exceptions outside the tree: they stand
for errors relmon does not define, and adapters translate them like the real ones.

The worker's error policy rests on this tree: a :class:`ServiceError` is retried with backoff
(the outage passes, nothing is lost), anything else is a bug and stops the worker. Adapters
translate their clients' transport errors into :class:`ServiceError` subclasses at their
boundary (:func:`broker_error` here, :func:`relmon.db.store_error` for ClickHouse).
"""

from __future__ import annotations


class RelmonError(Exception):
    """Base of all relmon errors."""


class ConfigError(RelmonError):
    """A configuration value is missing or invalid; the message says what to fix."""


class DecodeError(RelmonError):
    """An input record cannot be decoded (kind ``malformed``) or fails validation (``invalid``)."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class ModelNotFoundError(ConfigError):
    """No built model at the configured path."""


class ServiceError(RelmonError):
    """A service relmon depends on failed; trying again later may succeed."""


class StartupTimeout(ServiceError):
    """A service did not become ready within its deadline."""


class StoreUnavailable(ServiceError):
    """ClickHouse failed a call: connection, timeout, or an error answered by the server."""


class BrokerError(ServiceError):
    """The Kafka broker failed a send: connection, timeout, leader not available, ..."""


class MessageRefused(BrokerError):
    """The broker refused the messages themselves: sending the same messages can never succeed."""


# Names, not classes: aiokafka, kafka-python and confluent-kafka all name them so, and the
# test fakes mimic them, so one rule covers every client without importing any.
_REFUSED_FOR_GOOD = frozenset(
    {
        "MessageSizeTooLargeError",
        "RecordListTooLargeError",
        "RecordTooLargeError",
        "RecordBatchTooLargeError",
        "InvalidRecordError",
    }
)


def refused_for_good(exc: BaseException) -> bool:
    """Whether a send failed because of the messages themselves (too large, invalid record).

    Looks at the exception, its causes and contexts. Other errors (timeouts, connections, a
    broker or topic not available yet, authorisation) may pass once the cluster or its
    configuration is fixed.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if _REFUSED_FOR_GOOD.intersection(t.__name__ for t in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def broker_error(exc: BaseException, what: str = "send") -> BrokerError:
    """The :class:`BrokerError` (a :class:`MessageRefused` if refused for good) of a client error.

    Raise it ``from exc`` so the client's error stays visible in the traceback.
    """
    kind = MessageRefused if refused_for_good(exc) else BrokerError
    return kind(f"Kafka {what} failed: {type(exc).__name__}: {exc}")
