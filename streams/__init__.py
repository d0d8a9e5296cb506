"""Stream processing: the worker's domain, stage by stage (see README, "Architecture").

records (raw record in, dead letter out) -> decode (``schemas``) -> enrich (event-time window,
query and product text) -> sample (plans, tiers, budget) -> score (the ``score`` port) -> route
(threshold, review, audit) -> store (the ports). :class:`ImpressionProcessor` conducts the stages
behind :class:`Ports`; ``streams.app`` is its Faust adapter and ``streams.testing`` its in-memory
one.
"""

from streams.catalog import Catalog, CatalogFollower
from streams.enrich import EventTimeWindow, impression_text
from streams.metrics import Metrics
from streams.plans import Planner
from streams.ports import Ports
from streams.processor import ImpressionProcessor
from streams.records import RawRecord, dead_letter
from streams.route import Routing, review_request
from streams.sampling import QuerySampler

__all__ = [
    "Catalog",
    "CatalogFollower",
    "EventTimeWindow",
    "ImpressionProcessor",
    "Metrics",
    "Planner",
    "Ports",
    "QuerySampler",
    "RawRecord",
    "Routing",
    "dead_letter",
    "impression_text",
    "review_request",
]
