"""The product catalogue: id -> title, category, brand, attributes.

Loaded from a JSON Lines file at start and kept current from the compacted ``relmon.catalog``
topic, which every worker reads in full from the beginning (no consumer group) and then follows.
No "caught up" point is derived from end offsets (tansu misreports them): an impression whose
product is not known yet waits a bounded time for the catalogue, then goes to the dead-letter topic.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from relmon.errors import ConfigError
from schemas.models import CatalogProduct

log = logging.getLogger(__name__)

InvalidHandler = Callable[[str, int, int, bytes | None, bytes | None, str], None]


class Catalog:
    """A thread-safe in-memory product catalogue."""

    def __init__(self, products: Iterable[CatalogProduct] = ()) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, CatalogProduct] = {p.product_id: p for p in products}

    def get(self, product_id: str) -> CatalogProduct | None:
        """The product, or None if unknown."""
        with self._lock:
            return self._items.get(product_id)

    def has_all(self, product_ids: Iterable[str]) -> bool:
        """Whether every one of ``product_ids`` is in the catalogue."""
        with self._lock:
            return all(p in self._items for p in product_ids)

    def put(self, product: CatalogProduct) -> None:
        """Add or replace a product."""
        with self._lock:
            self._items[product.product_id] = product

    def delete(self, product_id: str) -> None:
        """Remove a product (a tombstone on the topic)."""
        with self._lock:
            self._items.pop(product_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def load_catalog_file(path: Path) -> list[CatalogProduct]:
    """Read a JSON Lines catalogue; a bad line stops start-up with its line number."""
    if not path.is_file():
        raise ConfigError(f"catalogue file {path} does not exist (RELMON_CATALOG_FILE)")
    products = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                products.append(CatalogProduct.model_validate_json(line))
            except ValidationError as exc:
                raise ConfigError(
                    f"{path}:{number}: not a catalogue product: {exc.errors()[0]['msg']}"
                ) from None
    return products


def write_catalog_file(path: Path, products: Iterable[CatalogProduct]) -> None:
    """Write products as JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for product in products:
            fh.write(json.dumps(product.model_dump(), sort_keys=True) + "\n")


class CatalogFollower(threading.Thread):
    """Reads the catalogue topic from the beginning into a :class:`Catalog`, then follows it."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        connection: Mapping[str, Any],
        topic: str,
        on_invalid: InvalidHandler,
        on_update: Callable[[], None] | None = None,
        poll_ms: int = 200,
    ) -> None:
        super().__init__(name="relmon-catalog", daemon=True)
        self.catalog = catalog
        self._connection = dict(connection)
        self._topic = topic
        self._on_invalid = on_invalid
        self._on_update = on_update
        self._poll_ms = poll_ms
        self._stop_event = threading.Event()
        self.records_read = 0

    def stop(self) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)

    def run(self) -> None:
        """Follow the topic until stopped, reconnecting after errors."""
        while not self._stop_event.is_set():
            try:
                self._follow()
            except KafkaError as exc:
                log.warning("catalogue follower: %s; retrying in 1 s", exc)
                self._stop_event.wait(1.0)

    def _assign(self, consumer: KafkaConsumer, known: set[int]) -> set[int]:
        parts = consumer.partitions_for_topic(self._topic) or set()
        if parts != known:
            new = parts - known
            consumer.assign([TopicPartition(self._topic, p) for p in sorted(parts)])
            consumer.seek_to_beginning(*[TopicPartition(self._topic, p) for p in sorted(new)])
        return set(parts)

    def _follow(self) -> None:
        consumer = KafkaConsumer(
            **self._connection,
            group_id=None,
            enable_auto_commit=False,
            client_id="relmon-catalog",
            metadata_max_age_ms=5000,
            # a catalogue fed in transactions (an exactly-once Connect source, a Flink job):
            # the records of aborted ones are not products
            isolation_level="read_committed",
        )
        try:
            known: set[int] = set()
            while not self._stop_event.is_set():
                known = self._assign(consumer, known)
                if not known:
                    self._stop_event.wait(0.5)
                    continue
                batch = consumer.poll(timeout_ms=self._poll_ms, max_records=5000)
                for records in batch.values():
                    for record in records:
                        self._apply(record)
                if batch and self._on_update is not None:
                    self._on_update()
        finally:
            consumer.close()

    def _apply(self, record: object) -> None:
        key: bytes | None = getattr(record, "key", None)
        value: bytes | None = getattr(record, "value", None)
        self.records_read += 1
        if value is None:
            if key:
                self.catalog.delete(key.decode(errors="replace"))
            return
        try:
            product = CatalogProduct.model_validate_json(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            self._on_invalid(
                self._topic,
                int(getattr(record, "partition", -1)),
                int(getattr(record, "offset", -1)),
                key,
                value,
                f"invalid catalogue record: {where}: {first['msg']}",
            )
            return
        self.catalog.put(product)
