"""relmon's record contracts (Kafka JSON), UBI input decoding and ClickHouse migrations."""

from schemas.alert import AlertRecord
from schemas.models import (
    CatalogProduct,
    DeadLetter,
    Impression,
    ReviewRequest,
    ScoredImpression,
)
from schemas.ubi import InputRecord, UbiImpression, UbiOtherEvent, UbiQuery, decode_record

__all__ = [
    "AlertRecord",
    "CatalogProduct",
    "DeadLetter",
    "Impression",
    "InputRecord",
    "ReviewRequest",
    "ScoredImpression",
    "UbiImpression",
    "UbiOtherEvent",
    "UbiQuery",
    "decode_record",
]
