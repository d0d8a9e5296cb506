"""Who may detect and send: leader election for the alert runners.

Every runner (``relmon alerts``, or the thread inside a worker with
``RELMON_ALERTS_IN_WORKER``) joins the Kafka consumer group ``<consumer group>-alerts`` on the
single-partition topic ``<RELMON_TOPIC_ALERTS>.leader``. The group coordinator assigns that one
partition to exactly one member: the leader, the only runner that detects and sends. When it
dies or stalls past the session timeout the partition moves to another member, which warms up
from ClickHouse (the baseline windows, the open alerts and the ids already sent), so it neither
pages again for an alert that was sent nor forgets to resolve one. Nothing is ever written to
the leader topic. (A deposed leader that has not yet noticed can act for at most one more tick;
the table is idempotent per alert id and the webhook may then repeat one message.)

The runner sees only :class:`Leader`, so a single runner (tests, benches, ``relmon alerts
--once``) uses :class:`AlwaysLeader` and needs no broker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Protocol

from relmon.errors import ServiceError
from relmon.settings import Settings

__all__ = ["AlwaysLeader", "KafkaLeader", "Leader"]

log = logging.getLogger(__name__)


class Leader(Protocol):
    """What the runner asks of an election: am I the leader now, and let go."""

    def is_leader(self) -> bool:
        """True while this runner may detect and send."""
        ...

    def close(self) -> None:
        """Give up the leadership (another member takes over)."""
        ...


class AlwaysLeader:
    """Leadership for a single runner (tests, benches): always the leader."""

    def is_leader(self) -> bool:
        """Always True."""
        return True

    def close(self) -> None:
        """Nothing to release."""


class KafkaLeader:
    """Leader election through a Kafka consumer group on a single-partition topic."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        from relmon.kafka import kafka_connection

        self.topic = f"{settings.topics.alerts}.leader"
        connection = kafka_connection(settings)
        try:
            admin = KafkaAdminClient(**connection)
            try:
                if self.topic not in set(admin.list_topics()):
                    with contextlib.suppress(TopicAlreadyExistsError):
                        admin.create_topics([NewTopic(self.topic, 1, 1)])
            finally:
                admin.close()
            self._consumer = KafkaConsumer(
                **connection,
                group_id=f"{settings.kafka.consumer_group}-alerts",
                enable_auto_commit=False,
                session_timeout_ms=int(settings.kafka.session_timeout_s * 1000),
                heartbeat_interval_ms=int(settings.kafka.heartbeat_interval_s * 1000),
                max_poll_interval_ms=60_000,
            )
        except KafkaError as exc:
            raise ServiceError(f"cannot reach Kafka at {settings.kafka.bootstrap}: {exc}") from exc
        parts = self._consumer.partitions_for_topic(self.topic)
        if parts is not None and len(parts) != 1:
            self._consumer.close()
            raise ServiceError(
                f"leader topic {self.topic} has {len(parts)} partitions; it needs exactly 1 "
                "(delete it and let relmon create it)"
            )
        self._consumer.subscribe([self.topic])
        self._leading = False
        self._closed = threading.Event()
        # The group protocol needs a consumer that polls all the time: polled only once per
        # alert interval, kafka-python keeps re-joining the group and never settles (measured
        # against tansu with a 1 s gap). So one thread owns the consumer and polls it.
        self._thread = threading.Thread(
            target=self._poll_forever, name="relmon-alerts-leader", daemon=True
        )
        self._thread.start()

    def _poll_forever(self) -> None:
        try:
            while not self._closed.is_set():
                try:
                    self._consumer.poll(timeout_ms=100)
                    self._leading = bool(self._consumer.assignment())
                except Exception as exc:  # keep electing; a broker hiccup must not end it
                    self._leading = False
                    log.warning("leader election: %s", exc)
                    self._closed.wait(1.0)
        finally:
            self._leading = False
            self._consumer.close()

    def is_leader(self) -> bool:
        """True while this member holds the leader topic's partition."""
        return self._leading and self._thread.is_alive()

    def close(self) -> None:
        """Leave the group (another member takes over at once)."""
        self._closed.set()
        self._thread.join(timeout=30)
