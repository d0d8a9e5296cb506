"""Raw records in, dead letters out: the coordinates every stage keeps.

A :class:`RawRecord` is one consumed Kafka record as the processor sees it, whatever client read
it (Faust in the worker, kafka-python in the teacher consumer, lists in tests). Every record
relmon cannot process becomes a :func:`dead_letter` built here, so the worker and the teacher
consumer write the same letter: the original bytes (or a prefix with size and sha256 when too
large), the reason, and topic/partition/offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.models import DEAD_LETTER_MAX_BYTES, DeadLetter, DeadLetterKind


@dataclass(frozen=True)
class RawRecord:
    """One consumed Kafka record; ``handle`` is what the ports' ``ack`` needs (a Faust event)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    handle: Any = field(default=None, compare=False, repr=False)


def dead_letter(
    record: RawRecord,
    kind: DeadLetterKind,
    reason: str,
    max_bytes: int = DEAD_LETTER_MAX_BYTES,
) -> DeadLetter:
    """The dead letter of ``record``, keeping its original bytes (or a prefix) and coordinates."""
    return DeadLetter.of(
        kind=kind,
        reason=reason,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        value=record.value or b"",
        key=record.key,
        timestamp_ms=record.timestamp_ms,
        max_bytes=max_bytes,
    )
