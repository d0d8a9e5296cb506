"""Stream processing: the Faust worker that samples, scores, routes and stores impressions."""

from streams.catalog import Catalog, CatalogFollower
from streams.processor import ImpressionProcessor, RawRecord
from streams.sampling import QuerySampler

__all__ = ["Catalog", "CatalogFollower", "ImpressionProcessor", "QuerySampler", "RawRecord"]
