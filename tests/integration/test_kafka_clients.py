"""Other Kafka clients against the embedded broker (tansu, started by relmon's ``broker`` fixture):
confluent-kafka (librdkafka) produces and reads back, and reads what kafka-python produced; batches
it compresses with each of Kafka's codecs are read by both client libraries relmon consumes with.

Debian's kcat 1.7.1 (librdkafka 2.0.2) is not tested: no setting makes it produce or consume
against tansu 0.6 (README, "Other Kafka clients").
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer, KafkaError, Message, Producer

from relmon.kafka import librdkafka_config, producer, read_topic
from relmon.runtime import ManagedProcess
from relmon.settings import Settings

pytestmark = pytest.mark.integration

N = 200


def consume(settings: Settings, topic: str, expect: int, timeout_s: float = 60.0) -> list[Message]:
    """``expect`` records of ``topic`` read by a confluent-kafka group consumer from the start."""
    consumer = Consumer(
        librdkafka_config(
            settings, group=f"ck-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False}
        )
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    continue
                out.append(msg)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return out


def test_confluent_kafka_produces_and_reads_back(
    base_settings: Settings, broker: ManagedProcess
) -> None:
    topic = f"ck{uuid.uuid4().hex[:10]}"
    delivered: list[tuple[int, int]] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.offset()))

    prod = Producer(librdkafka_config(base_settings, **{"acks": "all", "enable.idempotence": True}))
    sent = {f"k{i}".encode(): f"value {i}".encode() for i in range(N)}
    for key, value in sent.items():
        prod.produce(topic, key=key, value=value, on_delivery=on_delivery)
        prod.poll(0)
    assert prod.flush(30) == 0
    assert len(delivered) == N and len(set(delivered)) == N

    # kafka-python (what relmon uses) reads back every record
    assert dict(read_topic(base_settings, topic, expect=N, timeout_s=60)) == sent
    # and so does confluent-kafka's group consumer
    got = consume(base_settings, topic, N)
    assert {m.key(): m.value() for m in got} == sent
    assert len(got) == N


def test_confluent_kafka_reads_what_kafka_python_produced(
    base_settings: Settings, broker: ManagedProcess
) -> None:
    topic = f"kp{uuid.uuid4().hex[:10]}"
    prod = producer(base_settings)
    sent = {f"k{i}".encode(): f"value {i}".encode() for i in range(N)}
    for key, value in sent.items():
        prod.send(topic, key=key, value=value)
    prod.flush(30)
    prod.close()
    got = consume(base_settings, topic, N)
    assert {m.key(): m.value() for m in got} == sent
    assert len(got) == N


async def read_with_aiokafka(settings: Settings, topic: str, expect: int) -> dict[bytes, bytes]:
    """``expect`` records of ``topic`` read by aiokafka, the client under the worker's Faust
    consumer (``streams.fetches.BatchConsumer``), from the start."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: dict[bytes, bytes] = {}
    try:
        deadline = time.monotonic() + 60
        while len(out) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.update((r.key or b"", r.value or b"") for r in records)
    finally:
        await consumer.stop()
    return out


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_batches_a_librdkafka_producer_compressed_are_read_by_relmon(
    base_settings: Settings, broker: ManagedProcess, codec: str
) -> None:
    """Producers in production often compress (Java's ``compression.type``, librdkafka's
    ``compression.codec``): the worker reads impressions with aiokafka, and the catalogue
    follower, the teacher and the tools with kafka-python. Each needs the codec's library
    (cramjam for aiokafka; python-snappy, lz4 and zstandard for kafka-python), without which a
    compressed batch stops the consumer with UnsupportedCodecError."""
    topic = f"cz{codec}{uuid.uuid4().hex[:8]}"
    prod = Producer(
        librdkafka_config(base_settings, **{"compression.codec": codec, "linger.ms": 20})
    )
    # repetitive values, so that every codec really compresses the batch
    sent = {f"k{i}".encode(): f'{{"query": "sofa {i % 7}"}}'.encode() * 20 for i in range(N)}
    for key, value in sent.items():
        prod.produce(topic, key=key, value=value)
    assert prod.flush(30) == 0

    assert dict(read_topic(base_settings, topic, expect=N, timeout_s=60)) == sent
    assert asyncio.run(read_with_aiokafka(base_settings, topic, N)) == sent
