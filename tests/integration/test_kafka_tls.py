"""Every Kafka client of relmon over TLS (RELMON_KAFKA_SECURITY_PROTOCOL=SSL), against a real
tansu broker behind a TLS-terminating proxy: kafka-python (admin, producer, reader, the lag
reader), librdkafka (confluent-kafka) and aiokafka with the worker's Faust credentials.

tansu 0.6's own TLS listener does not complete a handshake with these clients, so the broker
listens in plain TCP on a port only the proxy uses and advertises the proxy's address: every
connection a client makes, the bootstrap one and those to the advertised broker, is TLS. The
certificates under ``tls/`` are test-only (self-signed for 127.0.0.1, valid to 2126).
SASL is not tested here: the embedded broker keeps no users in memory storage.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from relmon.errors import ServiceError
from relmon.kafka import (
    ensure_topics,
    kafka_connection,
    librdkafka_config,
    producer,
    read_topic,
    tansu_binary,
)
from relmon.lag import consumer_lag
from relmon.runtime import ManagedProcess, free_port, port_open, wait_until
from relmon.settings import Settings
from streams.app import broker_credentials

pytestmark = pytest.mark.integration
TLS = Path(__file__).parent / "tls"
HOST = "127.0.0.1"
N = 50


class TlsProxy:
    """A TLS server on ``port`` that passes each connection's bytes to ``target`` and back."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(TLS / "broker.pem", TLS / "broker.key")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, HOST, self.port, ssl=self._context), self._loop
        ).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def tls_settings(base_settings: Settings) -> Iterator[Settings]:
    """Settings whose every Kafka client talks TLS to a broker that takes nothing else."""
    plain, secure = free_port(HOST), free_port(HOST)
    broker = ManagedProcess(
        "broker-tls",
        [
            str(tansu_binary(base_settings.home / "bin")),
            "broker",
            "--listener-url",
            f"tcp://{HOST}:{plain}",
            "--advertised-listener-url",
            f"tcp://{HOST}:{secure}",
            "--storage-engine",
            "memory://tansu/",
        ],
        log_path=base_settings.home / "logs" / "broker-tls.log",
        ready=lambda: port_open(HOST, plain),
        ready_timeout=30.0,
        stop_timeout=10.0,
    )
    settings = base_settings.with_overrides(
        kafka_bootstrap=f"{HOST}:{secure}",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(TLS / "broker.pem"),
    )
    with TlsProxy(secure, plain), broker:

        def topics_created() -> bool:
            try:
                ensure_topics(settings)
            except ServiceError:
                return False
            return True

        wait_until(topics_created, timeout=30, what="the TLS broker to answer", alive=broker.alive)
        yield settings


def test_every_kafka_client_of_relmon_speaks_tls(tls_settings: Settings) -> None:
    s = tls_settings
    topic = s.topics.impressions
    sent = {f"k{i}".encode(): f'{{"n": {i}}}'.encode() for i in range(N)}
    prod = producer(s)  # kafka-python, as the replayer and the teacher produce
    for key, value in sent.items():
        prod.send(topic, key=key, value=value)
    prod.flush(30)
    prod.close()
    more = {f"c{i}".encode(): f'{{"c": {i}}}'.encode() for i in range(N)}
    rd = Producer(librdkafka_config(s))  # librdkafka, as other systems' clients produce
    for key, value in more.items():
        rd.produce(topic, key=key, value=value)
    assert rd.flush(30) == 0
    sent |= more

    # kafka-python reads it all back (the catalogue follower, the teacher and tools read so)
    assert dict(read_topic(s, topic, expect=len(sent), timeout_s=60)) == sent

    # aiokafka with the worker's Faust credentials, as Faust hands them to its consumer
    auth = credentials_to_aiokafka_auth(broker_credentials(s))
    assert auth["security_protocol"] == "SSL"

    async def worker_reads() -> dict[bytes, bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=s.kafka.servers,
            group_id=f"tls-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **auth,
        )
        await consumer.start()
        out: dict[bytes, bytes] = {}
        try:
            while len(out) < len(sent):
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for records in batch.values():
                    out.update((r.key or b"", r.value or b"") for r in records)
            await consumer.commit()
        finally:
            await consumer.stop()
        return out

    assert asyncio.run(worker_reads()) == sent
    # the lag reader (dashboard, /metrics) over TLS: a group that committed nothing lags by all
    lags = consumer_lag(kafka_connection(s), topic, f"none-{uuid.uuid4().hex[:8]}", read_s=1.0)
    assert sum(p.end for p in lags) == len(sent)


def test_a_client_that_does_not_trust_the_broker_or_speaks_plain_tcp_gets_nothing(
    tls_settings: Settings,
) -> None:
    untrusting = tls_settings.with_overrides(kafka_ssl_cafile=str(TLS / "other-ca.pem"))
    with pytest.raises(ServiceError, match="cannot reach Kafka"):
        producer(untrusting, bootstrap_timeout_ms=3000)
    plain = tls_settings.with_overrides(kafka_security_protocol="PLAINTEXT", kafka_ssl_cafile=None)
    with pytest.raises(ServiceError, match="cannot reach Kafka"):
        producer(plain, bootstrap_timeout_ms=3000)
