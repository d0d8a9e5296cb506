"""The ClickHouse half of the processor's ports: rows, roll-ups, ledger, UBI queries, plans.

Every call runs :mod:`streams.repository` in one store thread, so ClickHouse round trips never
block the event loop and the worker's client is used from one thread only. The worker's ports
(:mod:`streams.app`) add Kafka and the scorer; tests pair it with in-memory sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from relmon import db
from schemas.models import ScoredImpression, hash_id
from schemas.ubi import UbiQuery
from streams import repository
from streams.plans import Checkpoint, PlanKey, StoredPlan

T = TypeVar("T")


class ClickHouseStorePorts:
    """Store-side ports of :class:`streams.processor.Ports` over a ClickHouse client."""

    def __init__(self, client: Callable[[], Client]) -> None:
        self._client = client
        self._io = ThreadPoolExecutor(1, thread_name_prefix="relmon-store")

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(client, *args)`` in the store thread; a store failure becomes StoreUnavailable.

        The processor retries :class:`~relmon.errors.ServiceError` and lets every other error
        stop the worker, so only the store's own failures are translated (see
        :func:`relmon.db.is_store_failure`).
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._io, lambda: fn(self._client(), *args))
        except Exception as exc:
            if db.is_store_failure(exc):
                raise db.store_error(exc, fn.__name__) from exc
            raise

    async def write(self, rows: list[ScoredImpression], queries: list[UbiQuery]) -> None:
        """Store UBI query texts, then scored rows (their roll-ups: :meth:`refresh_rollups`)."""
        await self._io_call(self._write_sync, rows, queries)

    @staticmethod
    def _write_sync(client: Client, rows: list[ScoredImpression], queries: list[UbiQuery]) -> None:
        repository.insert_ubi_queries(client, queries, hash_id)
        if rows:
            repository.insert_rows(client, rows)

    async def refresh_rollups(self, event_times: list[datetime]) -> None:
        """Recompute the roll-ups of the windows holding ``event_times``."""
        await self._io_call(repository.refresh_rollups, event_times)

    async def stored(self, impression_ids: list[str]) -> tuple[set[str], list[ScoredImpression]]:
        """Ids the ledger records as done, and the stored rows of the others."""
        return await self._io_call(repository.stored_rows, impression_ids)

    async def mark_done(self, rows: list[ScoredImpression]) -> None:
        """Record impressions as done in the ledger."""
        await self._io_call(repository.mark_done, rows)

    async def lookup_queries(self, query_ids: list[str]) -> dict[str, str]:
        """Stored query texts of UBI query ids."""
        return await self._io_call(repository.lookup_ubi_queries, query_ids)

    async def load_plans(self, keys: list[PlanKey]) -> dict[PlanKey, StoredPlan]:
        """Stored sampling plans."""
        return await self._io_call(repository.load_plans, keys)

    async def save_plans(self, plans: list[StoredPlan]) -> None:
        """Store sampling plans."""
        await self._io_call(repository.save_plans, plans)

    async def latest_checkpoint(self, topic: str, partition: int) -> Checkpoint | None:
        """A partition's newest sketch checkpoint."""
        return await self._io_call(repository.latest_checkpoint, topic, partition)

    async def save_checkpoints(self, checkpoints: list[Checkpoint]) -> None:
        """Store sketch checkpoints."""
        await self._io_call(repository.save_checkpoints, checkpoints)

    def close(self) -> None:
        """Stop the store thread (pending calls are cancelled)."""
        self._io.shutdown(wait=False, cancel_futures=True)
