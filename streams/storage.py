"""The ClickHouse half of the processor's ports: rows, roll-ups, ledger, UBI queries, plans.

Every call runs :mod:`streams.repository` in a store thread, so ClickHouse round trips never
block the event loop; each of the (at most two) store threads has a client of its own. The
worker's ports (:mod:`streams.app`) add Kafka and the scorer; tests pair it with in-memory sends.
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

    def __init__(
        self, client: Callable[[], Client], side_client: Callable[[], Client] | None = None
    ) -> None:
        """Ports over ``client``, used from the store thread.

        ``side_client``: a second client, used from a second thread for the calls that may run
        beside the first thread's (the stored-row lookup beside the ledger's, the UBI queries'
        insert beside the rows'); without it those calls queue in the one store thread.
        """
        self._client = client
        self._io = ThreadPoolExecutor(1, thread_name_prefix="relmon-store")
        self._side_client = side_client or client
        self._side = (
            ThreadPoolExecutor(1, thread_name_prefix="relmon-store-side")
            if side_client is not None
            else self._io
        )

    async def _io_call(self, fn: Callable[..., T], *args: Any, side: bool = False) -> T:
        """``fn(client, *args)`` in a store thread; a store failure becomes StoreUnavailable.

        ``side``: in the second thread, with its client. The processor retries
        :class:`~relmon.errors.ServiceError` and lets every other error stop the worker, so only
        the store's own failures are translated (see :func:`relmon.db.is_store_failure`).
        """
        loop = asyncio.get_running_loop()
        pool, client = (self._side, self._side_client) if side else (self._io, self._client)
        try:
            return await loop.run_in_executor(pool, lambda: fn(client(), *args))
        except Exception as exc:
            if db.is_store_failure(exc):
                raise db.store_error(exc, fn.__name__) from exc
            raise

    async def write(self, rows: list[ScoredImpression], queries: list[UbiQuery]) -> None:
        """Store UBI query texts and, beside them, scored rows and the roll-ups of their windows.

        Both are done when it returns; a failure of either fails the call (a retry writes both
        again: each is idempotent).
        """
        calls = []
        if queries:
            calls.append(self._io_call(repository.insert_ubi_queries, queries, hash_id, side=True))
        if rows:
            calls.append(self._io_call(repository.insert_scored, rows))
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):  # both finished: no write left running
                raise outcome

    async def refresh_rollups(self, event_times: list[datetime]) -> None:
        """Recompute the roll-ups of the windows holding ``event_times``."""
        await self._io_call(repository.refresh_rollups, event_times)

    async def done(self, impression_ids: list[str]) -> set[str]:
        """Ids the ledger records as done."""
        return await self._io_call(repository.done_impressions, impression_ids)

    async def stored(self, impression_ids: list[str]) -> list[ScoredImpression]:
        """Stored rows of these impressions."""
        return await self._io_call(repository.stored_rows, impression_ids, side=True)

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
        """Stop the store threads (pending calls are cancelled)."""
        self._io.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
