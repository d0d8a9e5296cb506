"""The local ClickHouse store: chdb behind ClickHouse's HTTP interface.

chdb runs the real ClickHouse engine in-process, but only one process may open a data
directory. :class:`StoreServer` owns the directory and serves the part of ClickHouse's
HTTP interface that clickhouse-connect uses, so every other component talks to it exactly
as it would to a production ClickHouse server. :func:`serve` runs it in the foreground.
"""

from relmon.store.server import StoreServer, serve

__all__ = ["StoreServer", "serve"]
