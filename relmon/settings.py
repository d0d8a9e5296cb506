"""The one frozen settings object of relmon, in sections that are the components' configurations.

Every setting is read from an environment variable (or a ``.env`` file in the working
directory). Its name is generated, never written by hand: ``RELMON_`` + the section's prefix +
the field's name, upper case (``AlertSettings.window_s`` is ``RELMON_ALERT_WINDOW_S``), unless
the field keeps an older name as its ``validation_alias`` (``SamplingRates.head`` is
``RELMON_RATE_HEAD``). :func:`env_names` lists them all; the README documents each one.

A section is the configuration of the component that uses it: the sampler takes
``settings.sampling`` (:class:`SamplingRates`), the planner ``settings.plans``
(:class:`PlannerConfig`), the budget controller ``settings.budget`` (:class:`BudgetConfig`), the
alert detectors ``settings.detector`` (:class:`DetectorConfig`), and so on, so a default is
written once, here. The defaults are the embedded local setup: a tansu broker and the local
ClickHouse store on 127.0.0.1. In production only the addresses change.

Overrides in code use the same flat names as the environment: ``load_settings(alert_window_s=10)``
and ``settings.with_overrides(rate_head=0.5)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from relmon.errors import ConfigError

__all__ = [
    "AlertSettings",
    "BudgetConfig",
    "BudgetMode",
    "Calibration",
    "ClickHouseSettings",
    "DetectorConfig",
    "IngestSettings",
    "KafkaSettings",
    "PlannerConfig",
    "Provider",
    "RoutingSettings",
    "SamplingRates",
    "ScorerSettings",
    "Section",
    "Settings",
    "SinkName",
    "TeacherSettings",
    "TopicSettings",
    "env_names",
    "get_settings",
    "load_settings",
    "password_file_of",
    "reference",
]

Provider = Literal["auto", "cuda", "cpu"]
# The scorer's calibration: none (raw scores), the model card's fitted one, or (alpha, beta).
Calibration = tuple[float, float] | Literal["card"] | None
BudgetMode = Literal["auto", "fixed", "off"]
SinkName = Literal["kafka", "clickhouse", "webhook"]
ENV_PREFIX = "RELMON_"


def _default_home() -> Path:
    return Path.cwd() / ".relmon"


class Section(BaseModel):
    """A group of settings; also the configuration object of the component that uses it.

    Field ``f`` of a section is read from ``RELMON_`` + :attr:`prefix` + ``f`` (upper case), or
    from ``RELMON_`` + its ``validation_alias`` when it keeps an older name. Built directly (in
    tests, simulations), a section reads no environment: only :class:`Settings` does.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )
    prefix: ClassVar[str] = ""

    @classmethod
    def stem(cls, name: str) -> str:
        """The flat name of field ``name``: its environment variable without ``RELMON_``."""
        alias = cls.model_fields[name].validation_alias
        return alias if isinstance(alias, str) else cls.prefix + name


class KafkaSettings(Section):
    """The Kafka cluster and the workers' consumer group."""

    prefix: ClassVar[str] = ""

    bootstrap: str = Field(
        default="127.0.0.1:19092",
        description="Kafka bootstrap servers, comma separated host:port.",
        validation_alias="kafka_bootstrap",
    )
    broker_port: int = Field(
        default=19092,
        ge=0,
        le=65535,
        description="port of the embedded tansu broker (0 = pick a free one).",
    )
    consumer_group: str = Field(
        default="relmon-worker",
        description="Kafka consumer group (Faust app id) of the workers.",
    )
    session_timeout_s: float = Field(
        default=6.0,
        gt=0,
        description="consumer group session timeout in seconds.",
    )
    heartbeat_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="consumer heartbeat interval in seconds.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="how every relmon client talks to Kafka: PLAINTEXT, SSL (TLS), "
        "SASL_PLAINTEXT or SASL_SSL (SASL over TLS).",
        validation_alias="kafka_security_protocol",
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the certificate authorities that sign the brokers' "
        "certificates (SSL, SASL_SSL); unset = the system's trust store.",
        validation_alias="kafka_ssl_cafile",
    )
    ssl_certfile: Path | None = Field(
        default=None,
        description="PEM file of relmon's client certificate, for brokers that ask for one "
        "(mutual TLS; with RELMON_KAFKA_SSL_KEYFILE).",
        validation_alias="kafka_ssl_certfile",
    )
    ssl_keyfile: Path | None = Field(
        default=None,
        description="PEM file of the client certificate's private key.",
        validation_alias="kafka_ssl_keyfile",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN",
        description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL).",
        validation_alias="kafka_sasl_mechanism",
    )
    sasl_username: str = Field(
        default="",
        description="SASL user name.",
        validation_alias="kafka_sasl_username",
    )
    sasl_password: SecretStr = Field(
        default=SecretStr(""),
        description="SASL password (secret; masked when printed).",
        validation_alias="kafka_sasl_password",
    )

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(
                    f"{server!r} is not host:port; set RELMON_KAFKA_BOOTSTRAP like "
                    "'127.0.0.1:19092' or 'kafka1:9092,kafka2:9092'"
                )
        return value

    @model_validator(mode="after")
    def _check_intervals(self) -> KafkaSettings:
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                "RELMON_HEARTBEAT_INTERVAL_S must be smaller than RELMON_SESSION_TIMEOUT_S"
            )
        return self

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        files = {
            "RELMON_KAFKA_SSL_CAFILE": self.ssl_cafile,
            "RELMON_KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "RELMON_KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not self.uses_tls:
            raise ValueError(
                f"{', '.join(given)} set but RELMON_KAFKA_SECURITY_PROTOCOL is "
                f"{self.security_protocol}: set it to SSL or SASL_SSL, or unset the files"
            )
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}={path} is not a file")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(
                "RELMON_KAFKA_SSL_CERTFILE and RELMON_KAFKA_SSL_KEYFILE go together (mutual TLS)"
            )
        if self.uses_sasl and not (self.sasl_username and self.sasl_password.get_secret_value()):
            raise ValueError(
                f"RELMON_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                "RELMON_KAFKA_SASL_USERNAME and RELMON_KAFKA_SASL_PASSWORD"
            )
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether the clients talk TLS to the brokers."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """Whether the clients authenticate with SASL."""
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def servers(self) -> list[str]:
        """Bootstrap servers as a list."""
        return [s.strip() for s in self.bootstrap.split(",")]


class TopicSettings(Section):
    """The topics relmon reads and writes (``RELMON_TOPIC_*``)."""

    prefix: ClassVar[str] = "topic_"

    impressions: str = Field(
        default="relmon.impressions",
        description="input topic of search impressions.",
    )
    catalog: str = Field(
        default="relmon.catalog",
        description="compacted topic of product catalogue records.",
    )
    review: str = Field(
        default="relmon.teacher-review",
        description="topic of low-score cases for the teacher.",
    )
    dlq: str = Field(
        default="relmon.dlq",
        description="dead-letter topic for events relmon cannot process.",
    )
    labels: str = Field(
        default="relmon.teacher-labels",
        description="topic of teacher verdicts (one JSON record per judged review case).",
    )
    alerts: str = Field(
        default="relmon.alerts",
        description="topic of alert events (fired, resolved); the alert "
        "runners' leader election uses the single-partition topic <this>.leader.",
    )
    partitions: int = Field(
        default=4,
        ge=1,
        description="partitions of topics relmon creates.",
    )


class ClickHouseSettings(Section):
    """How every component reaches ClickHouse (``RELMON_CLICKHOUSE_*``)."""

    prefix: ClassVar[str] = "clickhouse_"

    host: str = Field(
        default="127.0.0.1",
        description="ClickHouse HTTP host (the local store by default).",
    )
    port: int = Field(
        default=18123,
        ge=0,
        le=65535,
        description="ClickHouse HTTP port.",
    )
    user: str = Field(default="default", description="ClickHouse user.")
    password: SecretStr = Field(
        default=SecretStr(""),
        description="ClickHouse password (empty = the local store's "
        "generated password, read from the file beside its data directory).",
    )
    database: str = Field(
        default="relmon",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="database holding relmon's tables.",
    )
    secure: bool = Field(default=False, description="use HTTPS to reach ClickHouse.")


class ScorerSettings(Section):
    """The served model and how it runs (:class:`scoring.Scorer`'s arguments)."""

    prefix: ClassVar[str] = ""

    model_dir: Path = Field(
        default=Path("models/relmon-minilm-ce"),
        description="directory of the built cross-encoder "
        "(model.onnx / model.int8.onnx, tokenizer, card.json).",
    )
    variant: Literal["auto", "int8", "fp32"] = Field(
        default="auto",
        description="ONNX variant of the cross-encoder (auto = fp32 on CUDA; on CPU int8, "
        "unless fp32 is at least 10% faster on this host, timed at start-up) and of the "
        "cosine and page tiers' embedder (auto = int8 on CPU, fp32 on CUDA).",
        validation_alias="model_variant",
    )
    tier: Literal["card", "cross-encoder", "cosine", "page"] = Field(
        default="card",
        description="which scorer of the model directory serves: card (the "
        "tier the model card serves, chosen by cross-validation on real labels), cross-encoder "
        "(the fine-tuned student), cosine (the base model's embeddings, cached per query and "
        "product text) or page (a result of a UBI result page judged against its page: the "
        "cosine, its agreement with the page's most query-like results, the page's share "
        "in its category and the page's size, the head of a title that names what the "
        "product is for, and whether the title names what the query asks to be without; "
        "results that arrive alone get its lone model: the same features that need no page, "
        "or the cosine tier with a card that has none).",
        validation_alias="scorer_tier",
    )
    provider: Provider = Field(
        default="auto",
        description="onnxruntime execution provider: auto (CUDA, else CPU), cuda or cpu.",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads for scoring (0 = cores given): on CPU, that many batches "
        "run at once, one onnxruntime thread each.",
        validation_alias="scorer_threads",
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="scoring batch size (rows; on CPU also at most 512 tokens a batch).",
    )
    max_length: int = Field(default=64, ge=8, le=512, description="max tokens per pair.")
    calibration: Calibration = Field(
        default="card",
        description="card (default: the Platt fit of P(good) on "
        'held-out real labels, from the model card), none (raw scores) or "alpha,beta": '
        "scores become sigmoid(alpha * (p - beta)).",
        validation_alias="score_calibration",
    )

    @field_validator("calibration", mode="before")
    @classmethod
    def _calibration(cls, value: object) -> object:
        return _parse_calibration(value) if isinstance(value, str) else value

    cache_size: int = Field(
        default=100_000,
        ge=0,
        description="entries of the LRU cache of scores keyed by "
        "(model version, query, product id, title); 0 = no cache.",
        validation_alias="score_cache_size",
    )
    shared_embeddings: bool = Field(
        default=True,
        description="keep the cosine and page tiers' text embeddings in "
        "ClickHouse (table text_embeddings), shared by every worker and kept across restarts, "
        "so each product text is embedded once; `relmon model embed` fills it from a catalogue "
        "ahead of traffic. false = each worker embeds on its own.",
    )


class RoutingSettings(Section):
    """What is a bad case and what goes to review, beside the model card's operating point."""

    prefix: ClassVar[str] = ""

    bad_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="a pair scoring below this is flagged as a bad case and sent for review "
        "(default: each tier's operating point in the model card, where a flag is truly bad at "
        "least 60% of the time on real labels, with 95% confidence).",
    )
    category_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="bad-case threshold per category, as JSON "
        '(e.g. {"Area Rugs": 0.4}); other categories use RELMON_BAD_THRESHOLD.',
    )

    @field_validator("category_thresholds", mode="before")
    @classmethod
    def _decode_thresholds(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError(
                f'{value!r} is not JSON: write an object such as {{"Area Rugs": 0.4}}'
            ) from None

    uncertain_band: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="rows scoring less than this above the "
        "threshold are sent for review as uncertain.",
        validation_alias="review_uncertain_band",
    )
    audit_share: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="share of confident rows sent for review as an "
        "audit sample (so the student's misses can be estimated).",
        validation_alias="review_audit_share",
    )


class SamplingRates(Section):
    """The base inclusion rates per stratum (the sampler's configuration)."""

    prefix: ClassVar[str] = ""

    mode: Literal["stratified", "uniform"] = Field(
        default="stratified",
        description="stratified (rates per query tier and position) "
        "or uniform (RELMON_SAMPLE_RATE for every impression).",
        validation_alias="sampling_mode",
    )
    sample_rate: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="share of result pages scored in uniform mode.",
    )
    head: float = Field(
        default=0.05,
        gt=0.0,
        le=1.0,
        description="sample rate of head queries.",
        validation_alias="rate_head",
    )
    torso: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="sample rate of torso queries.",
        validation_alias="rate_torso",
    )
    tail: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="sample rate of tail queries.",
        validation_alias="rate_tail",
    )
    top_positions: int = Field(
        default=3,
        ge=0,
        description="positions 1..k are the 'top' bucket, sampled at the full tier rate.",
    )
    rest_position_factor: float = Field(
        default=0.75,
        gt=0.0,
        le=1.0,
        description="rate multiplier for positions below the top.",
    )
    min_prob: float = Field(
        default=0.005,
        gt=0.0,
        le=1.0,
        description="floor of any impression's inclusion probability.",
        validation_alias="min_inclusion_prob",
    )

    @classmethod
    def uniform_at(cls, rate: float) -> SamplingRates:
        """Uniform sampling: every impression has probability ``rate``."""
        return cls(mode="uniform", sample_rate=rate)

    @property
    def uniform(self) -> float | None:
        """The probability of every impression in uniform mode, else None."""
        return self.sample_rate if self.mode == "uniform" else None

    def tier_rate(self, tier: str) -> float:
        """Base rate of a tier (head, torso or tail)."""
        return {"head": self.head, "torso": self.torso, "tail": self.tail}[tier]

    def position_bucket(self, position: int) -> str:
        """``top`` for positions 1..k, else ``rest``."""
        return "top" if position <= self.top_positions else "rest"

    def base_probability(self, tier: str, position: int) -> float:
        """Inclusion probability before the budget factor."""
        if self.mode == "uniform":
            return self.sample_rate
        p = self.tier_rate(tier)
        if position > self.top_positions:
            p *= self.rest_position_factor
        return min(1.0, p)


class PlannerConfig(Section):
    """Query tiering, plan epochs and checkpoints (the :class:`streams.plans.Planner`'s config)."""

    prefix: ClassVar[str] = ""

    epoch_s: int = Field(
        default=60,
        ge=1,
        description="event-time length of a sampling plan (tiers and budget "
        "factor are fixed per partition and epoch, so replays decide the same).",
        validation_alias="plan_epoch_s",
    )
    head_share: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="a query with at least this share of recent traffic is head.",
    )
    torso_share: float = Field(
        default=0.0015,
        gt=0.0,
        lt=1.0,
        description="a query with at least this share (and below head) is torso.",
    )
    sketch_capacity: int = Field(
        default=5000,
        ge=10,
        description="counters of the query-frequency sketch per partition.",
    )
    sketch_decay: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="factor applied to the sketch's counts each plan epoch.",
    )
    checkpoint_interval_s: float = Field(
        default=5.0,
        ge=0.0,
        description="a partition's sketch is checkpointed at most this often (and "
        "whenever a new plan is made); 0 = at every batch.",
        validation_alias="plan_checkpoint_interval_s",
    )


class BudgetConfig(Section):
    """The scoring budget (the :class:`streams.budget.BudgetController`'s configuration)."""

    prefix: ClassVar[str] = "scoring_budget_"

    pps: str = Field(
        default="auto",
        description="pairs/s the scorer may take. 'auto' (default): "
        "the worker measures its scorer's capacity and its lag and lowers the inclusion "
        "probabilities (recorded in the plan and per row) when it cannot keep up; a number: a "
        "fixed cap on the pairs/s the base rates ask for; 0 = no budget.",
    )
    drain_s: float = Field(
        default=30.0,
        gt=0.0,
        description="the automatic budget plans to work the lag off within this many seconds.",
    )
    utilisation: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="share of the worker's time a lowered budget factor plans to use "
        "(the rest is headroom).",
    )
    smoothing_s: float = Field(
        default=20.0,
        gt=0.0,
        description="time constant of the budget's measurements (capacity, demand, arrival rate).",
    )
    min_factor: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="the lowest budget factor.",
    )
    recover_s: float = Field(
        default=10.0,
        ge=0.0,
        description="the budget factor rises by at most one step (a quarter octave) per "
        "this many seconds.",
    )

    @field_validator("pps", mode="before")
    @classmethod
    def _check_pps(cls, value: object) -> str:
        text = str(value).strip().lower()
        if text == "auto":
            return text
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        if not math.isfinite(number) or number < 0:
            raise ValueError(
                f"{value!r} is not a scoring budget: use 'auto' (measure and keep up), a number "
                "of pairs/s > 0 (a fixed cap) or 0 (no budget)"
            )
        return f"{number:.12g}"

    @property
    def mode(self) -> BudgetMode:
        """The mode: auto (measured capacity and lag), fixed (a pairs/s cap) or off."""
        if self.pps == "auto":
            return "auto"
        return "fixed" if float(self.pps) > 0 else "off"

    @property
    def pairs_per_s(self) -> float:
        """The fixed mode's cap (0 in the other modes)."""
        return float(self.pps) if self.mode == "fixed" else 0.0


class IngestSettings(Section):
    """How the worker takes, validates and retries its input."""

    prefix: ClassVar[str] = ""

    take_max: int = Field(default=4096, ge=1, description="max events the worker takes per batch.")
    take_within_s: float = Field(
        default=0.5,
        gt=0,
        description="longest a batch waits for more records, counted from when the previous "
        "batch was taken: a back phase longer than this adds no wait, and RELMON_TAKE_MAX records "
        "go at once.",
    )
    rollup_refresh_s: float = Field(
        default=5.0,
        ge=0,
        description="the hourly roll-ups of the hours a worker stored rows in are recomputed "
        "at most this often (0: after every batch); each recomputation reads all of its hours' "
        "rows, and a record's offset is committed only after it. Raw rows are readable at once.",
    )
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=30_000,
        description="longest the broker may hold the worker's fetch when no record is there "
        "(Faust's own is 1,500). Apache Kafka answers as soon as a record arrives; the local "
        "tansu broker answers only when this wait ends, so it bounds how late the worker sees a "
        "record.",
    )
    retry_backoff_max_s: float = Field(
        default=5.0,
        gt=0,
        description="longest wait between retries of a failed store "
        "write or Kafka send in the worker (the wait doubles from 0.2 s up to this), so a worker "
        "resumes within this long after an outage ends.",
    )
    unknown_product_retry_s: float = Field(
        default=10.0,
        ge=0,
        description="how long an impression of an unknown "
        "product waits for the catalogue before it is dead-lettered.",
    )
    catalog_file: Path | None = Field(
        default=None,
        description="JSON Lines catalogue loaded at worker start "
        "(product_id, title, category, brand, attributes).",
    )
    ubi_position_base: int = Field(
        default=0,
        ge=0,
        le=1,
        description="event_attributes.position.ordinal of the first "
        "result in UBI events: 0 (OpenSearch's UBI sample) or 1; relmon's position is "
        "ordinal - base + 1.",
    )
    dlq_max_bytes: int = Field(
        default=512 * 1024,
        ge=4096,
        description="largest dead letter; a letter that would be larger "
        "keeps only a prefix of the original bytes (with their size and sha256). Keep it under "
        "the broker's message limit (1 MB by default).",
    )
    max_event_age_s: float = Field(
        default=28 * 86400,
        gt=0,
        le=29 * 86400,
        description="oldest event time the worker accepts, in seconds "
        "before its clock (default 28 days); older impressions are dead-lettered as "
        "event_time_out_of_range. At most 29 days: raw rows expire after 30 days of event time, "
        "and an hour's roll-up is recomputed from all of its raw rows.",
    )
    max_event_future_s: float = Field(
        default=300.0,
        ge=0,
        description="latest event time the worker accepts, in seconds "
        "after its clock (clock skew); later impressions are dead-lettered as "
        "event_time_out_of_range.",
    )


class TeacherSettings(Section):
    """The LLM judge of ``relmon teacher`` (``RELMON_TEACHER_*``)."""

    prefix: ClassVar[str] = "teacher_"

    base_url: str = Field(
        default="",
        description="base URL of an OpenAI-compatible API, e.g. "
        "http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp server, OpenAI); empty = no LLM "
        "judge, `relmon teacher` only fills the review queue for people.",
    )
    model: str = Field(default="", description="model name sent to the chat API.")
    api_key: SecretStr = Field(
        default=SecretStr(""),
        description="bearer token of the chat API (empty = none).",
    )
    group: str = Field(
        default="relmon-teacher",
        description="Kafka consumer group of `relmon teacher`.",
    )
    concurrency: int = Field(default=4, ge=1, le=256, description="requests in flight.")
    rate_per_s: float = Field(
        default=2.0,
        ge=0.0,
        description="chat requests per second (0 = no limit).",
    )
    daily_budget: int = Field(
        default=10_000,
        ge=0,
        description="chat requests per UTC day (0 = no limit); "
        "over budget, cases stay in the review queue for people.",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="timeout of one chat request.")
    max_attempts: int = Field(
        default=5,
        ge=1,
        description="tries of one request on 429, 5xx, timeouts.",
    )
    parse_retries: int = Field(
        default=2,
        ge=0,
        description="re-asks when an answer is not the JSON asked.",
    )
    backoff_s: float = Field(
        default=0.5,
        gt=0,
        description="first backoff delay (doubles, full jitter).",
    )
    backoff_max_s: float = Field(default=30.0, gt=0, description="longest backoff delay.")
    max_tokens: int = Field(default=768, ge=16, description="max tokens of an answer.")
    json_mode: bool = Field(
        default=True,
        description='send response_format {"type": "json_object"}.',
    )
    cache_size: int = Field(
        default=50_000,
        ge=0,
        description="verdicts kept in memory, keyed by (query, "
        "product, prompt version); the store is asked on a miss.",
    )


class AlertSettings(Section):
    """Alert windows, the runner's cadence and the sinks alerts go to."""

    prefix: ClassVar[str] = "alert_"

    sinks: frozenset[SinkName] = Field(
        default=frozenset({"kafka", "clickhouse", "webhook"}),
        description="comma separated sinks of alert events: kafka, "
        "clickhouse, webhook (the webhook only when RELMON_ALERT_WEBHOOK_URL is set).",
    )
    webhook_url: SecretStr = Field(
        default=SecretStr(""),
        description="Slack-compatible incoming webhook for alerts "
        "(secret; masked when printed); empty = no webhook.",
    )
    webhook_retries: int = Field(
        default=4,
        ge=0,
        description="retries of a failed webhook call.",
    )
    webhook_backoff_s: float = Field(
        default=1.0,
        ge=0.0,
        description="first retry delay, doubled at each retry.",
    )
    window_s: int = Field(
        default=300,
        ge=10,
        description="length of the windows the alert detectors judge.",
    )
    lateness_s: float = Field(
        default=60.0,
        ge=0.0,
        description="a window is judged once its end is this old "
        "(room for late events and scoring).",
    )
    interval_s: float = Field(
        default=15.0,
        gt=0.0,
        description="how often the alert runner looks for closed windows.",
    )
    cooldown_windows: int = Field(
        default=6,
        ge=0,
        description="a segment re-alarming this soon after its "
        "alert resolved reopens that alert instead of paging again.",
    )
    in_worker: bool = Field(
        default=False,
        description="also run the alert runner inside each worker (only the elected leader acts).",
        validation_alias="alerts_in_worker",
    )

    @field_validator("sinks", mode="before")
    @classmethod
    def _split_sinks(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        names = {n.strip() for n in value.split(",") if n.strip()}
        unknown = names - {"kafka", "clickhouse", "webhook"}
        if unknown:
            raise ValueError(
                f"unknown alert sinks {sorted(unknown)}: use kafka, clickhouse, webhook"
            )
        return frozenset(names)


class DetectorConfig(Section):
    """Sensitivity of the alert detectors (:mod:`relmon.alerts.detect`)."""

    prefix: ClassVar[str] = "alert_"

    baseline_windows: int = Field(
        default=48,
        ge=2,
        description="windows in a segment's rolling baseline.",
    )
    baseline_gap: int = Field(
        default=3,
        ge=0,
        description="newest windows left out of the baseline, so a "
        "spike's first windows do not raise their own baseline.",
    )
    min_baseline_windows: int = Field(
        default=6,
        ge=1,
        description="windows of baseline needed before a segment is tested.",
    )
    min_sample: float = Field(
        default=30.0,
        gt=0.0,
        description="effective sample a window needs to be tested.",
    )
    min_baseline_sample: float = Field(
        default=200.0,
        gt=0.0,
        description="effective sample a baseline needs.",
    )
    min_bad: int = Field(
        default=3,
        ge=0,
        description="bad rows a window needs before it can alert.",
    )
    min_lift: float = Field(
        default=1.25,
        ge=1.0,
        description="a window alerts only at this multiple of its baseline rate or more.",
    )
    fdr: float = Field(
        default=1e-6,
        gt=0.0,
        lt=1.0,
        description="Benjamini-Hochberg false discovery rate of the per-window "
        "z-tests across segments.",
    )
    scan_windows: int = Field(
        default=3,
        ge=1,
        description="the z-test also judges the sums of the last 2 .. "
        "this many windows (at most RELMON_ALERT_BASELINE_GAP + 1), so a spike too small to "
        "show in one window of a small segment shows in two or three.",
    )
    ewma_lambda: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="smoothing of the EWMA detector.",
    )
    ewma_limit: float = Field(
        default=5.0,
        gt=0.0,
        description="EWMA control limit in standard deviations.",
    )
    cusum_k: float = Field(
        default=1.0,
        ge=0.0,
        description="CUSUM allowance (half the shift to detect, in sd).",
    )
    cusum_h: float = Field(
        default=8.0,
        gt=0.0,
        description="CUSUM decision threshold.",
    )
    resolve_windows: int = Field(
        default=2,
        ge=1,
        description="windows in a row back at baseline that resolve an alert.",
    )
    resolve_p: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="a window is back at baseline when its one-sided p-value is at least this.",
    )
    dispersion_prior: int = Field(
        default=4,
        ge=0,
        description="pseudo-windows at dispersion 1 added to a segment's estimated "
        "overdispersion (so a short baseline does not call every window an outlier).",
    )

    @model_validator(mode="after")
    def _check_scan(self) -> DetectorConfig:
        if self.scan_windows > self.baseline_gap + 1:
            raise ValueError(
                f"RELMON_ALERT_SCAN_WINDOWS={self.scan_windows} must be at most "
                f"RELMON_ALERT_BASELINE_GAP + 1 = {self.baseline_gap + 1} (a scanned window "
                "must not be in the baseline): lower it or raise the gap"
            )
        return self


SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaSettings,
    "topics": TopicSettings,
    "clickhouse": ClickHouseSettings,
    "scorer": ScorerSettings,
    "routing": RoutingSettings,
    "sampling": SamplingRates,
    "plans": PlannerConfig,
    "budget": BudgetConfig,
    "ingest": IngestSettings,
    "teacher": TeacherSettings,
    "alerts": AlertSettings,
    "detector": DetectorConfig,
}
""":class:`Settings`' sections by attribute name."""


def _section_values(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names (``alert_window_s``) to section values (``{"alerts": {"window_s": ...}}``).

    Keys that are no section field's flat name are kept as they are (top-level fields). A flat
    name beside its whole section (``alerts=...`` and ``alert_window_s=...``) is refused: one of
    the two would be dropped.
    """
    out: dict[str, Any] = {}
    lookup = {cls.stem(f): (attr, f) for attr, cls in SECTIONS.items() for f in cls.model_fields}
    flat_of: dict[str, list[str]] = {}
    for key, value in flat.items():
        if key in lookup:
            attr, name = lookup[key]
            out.setdefault(attr, {})[name] = value
            flat_of.setdefault(attr, []).append(key)
    for key, value in flat.items():
        if key in lookup:
            continue
        if key in flat_of:
            raise ConfigError(
                f"settings: {key}= is given whole and {', '.join(sorted(flat_of[key]))} beside "
                f"it; set those fields inside {key}= (or leave {key}= out)"
            )
        out[key] = value
    return out


RENAMED = {"intra_op_threads": "scorer_threads"}
"""flat names that changed (old: new); setting an old one stops start-up, not ignored"""


def _from_variables(variables: Mapping[str, str | None]) -> dict[str, Any]:
    """The section values found in environment-like ``variables`` (names case-insensitive).

    Raises:
        ConfigError: a variable has a name this version no longer reads (:data:`RENAMED`).

    """
    lowered = {k.lower(): v for k, v in variables.items() if v is not None}
    for old, new in RENAMED.items():
        if (ENV_PREFIX + old).lower() in lowered:
            raise ConfigError(
                f"{ENV_PREFIX}{old.upper()} was renamed {ENV_PREFIX}{new.upper()}: "
                f"set that instead (same value)"
            )
    flat = {}
    for cls in SECTIONS.values():
        for name in cls.model_fields:
            stem = cls.stem(name)
            if (ENV_PREFIX + stem).lower() in lowered:
                flat[stem] = lowered[(ENV_PREFIX + stem).lower()]
    return _section_values(flat)


class _Values(PydanticBaseSettingsSource):
    """A settings source of ready values (the sections' fields, found by their flat names)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._values


class Settings(BaseSettings):
    """relmon configuration: process-wide fields and one section per concept.

    Each top-level field's environment variable is ``RELMON_`` + its name; each section field's
    is given by its section (:meth:`Section.stem`). See :func:`env_names`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    home: Path = Field(
        default_factory=_default_home,
        description="directory for local state (store data, logs, run files).",
    )
    store_dir: Path | None = Field(
        default=None,
        description="chdb data directory of the local store (default: $RELMON_HOME/store).",
    )
    min_window_sample: int = Field(
        default=30,
        ge=1,
        description="windows with a smaller effective sample are shown as too thin to judge.",
    )
    dashboard_port: int = Field(default=8501, ge=1, le=65535, description="Streamlit port.")
    bind_host: str = Field(
        default="127.0.0.1",
        description="address local services listen on.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Prometheus metrics port of the worker on RELMON_BIND_HOST; 0 = no endpoint.",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    scorer: ScorerSettings = Field(default_factory=ScorerSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    sampling: SamplingRates = Field(default_factory=SamplingRates)
    plans: PlannerConfig = Field(default_factory=PlannerConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Code overrides, then the environment, then ``.env``; section fields by flat name."""
        init = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        env_file = Path(str(cls.model_config.get("env_file") or ".env"))
        dotenv = dotenv_values(env_file, encoding="utf-8") if env_file.is_file() else {}
        return (
            _Values(settings_cls, _section_values(init)),
            env_settings,
            _Values(settings_cls, _from_variables(os.environ)),
            dotenv_settings,
            _Values(settings_cls, _from_variables(dotenv)),
            file_secret_settings,
        )

    @property
    def store_path(self) -> Path:
        """The chdb data directory of the local store."""
        return (self.store_dir or self.home / "store").resolve()

    @property
    def store_password_file(self) -> Path:
        """The file holding the local store's generated password (see :func:`password_file_of`)."""
        return password_file_of(self.store_path)

    def clickhouse_password_value(self) -> str:
        """The ClickHouse password to send.

        RELMON_CLICKHOUSE_PASSWORD if set, else the local store's generated password (read at
        each call, so a component started before the store finds it; empty if there is none).
        """
        explicit = self.clickhouse.password.get_secret_value()
        if explicit:
            return explicit
        try:
            return self.store_password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (its environment variable without ``RELMON_``)."""
        out: dict[str, Any] = {
            name: getattr(self, name) for name in type(self).model_fields if name not in SECTIONS
        }
        for attr, cls in SECTIONS.items():
            section = getattr(self, attr)
            out.update({cls.stem(name): getattr(section, name) for name in cls.model_fields})
        return out

    def to_env(self) -> dict[str, str]:
        """The environment that gives a child process these settings (secrets in clear)."""
        env = {}
        for stem, value in self.flat().items():
            # None is a calibration's own value ("none"); for any other setting, unset
            text = "none" if value is None and stem == "score_calibration" else _env_text(value)
            if text is not None:
                env[ENV_PREFIX + stem.upper()] = text
        return env

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some settings changed (by flat name: ``alert_window_s``), validated again."""
        data = self.flat()
        unknown = sorted(set(changes) - set(data))
        if unknown:
            raise ConfigError(f"no such settings: {', '.join(unknown)}")
        data.update(changes)
        return load_settings(**data)


def _env_text(value: object) -> str | None:
    """A setting's value as its environment variable writes it (None: leave it unset)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):  # a calibration (alpha, beta)
        return ",".join(repr(float(v)) for v in value)
    if isinstance(value, frozenset | set):
        return ",".join(sorted(map(str, value)))
    if isinstance(value, dict):
        return json.dumps(value)
    return None if value is None else str(value)


def env_names() -> Iterator[tuple[str, FieldInfo]]:
    """Every environment variable relmon reads, with its field (type, default, description)."""
    for name, info in Settings.model_fields.items():
        if name not in SECTIONS:
            yield ENV_PREFIX + name.upper(), info
    for cls in SECTIONS.values():
        for name, info in cls.model_fields.items():
            yield ENV_PREFIX + cls.stem(name).upper(), info


def reference() -> str:
    """The Markdown reference of every setting: a table per section (``relmon settings``)."""
    groups: list[tuple[str, str, type[BaseModel]]] = [
        ("Process", "where local state lives and what local services listen on", Settings)
    ]
    groups += [(cls.__name__, _first_line(cls.__doc__), cls) for cls in SECTIONS.values()]
    out = []
    for title, about, cls in groups:
        out += (
            [f"**{title}** (`settings.{_attr_of(cls)}`): {about}", ""]
            if cls is not Settings
            else [
                f"**{title}**: {about}",
                "",
            ]
        )
        out += ["| variable | default | meaning |", "|---|---|---|"]
        for name, info in cls.model_fields.items():
            if name in SECTIONS and cls is Settings:
                continue
            stem = cls.stem(name) if issubclass(cls, Section) else name
            meaning = " ".join((info.description or "").split()).rstrip(".")
            out.append(f"| `{ENV_PREFIX}{stem.upper()}` | {_default_text(info)} | {meaning} |")
        out.append("")
    return "\n".join(out)


def _first_line(doc: str | None) -> str:
    """A docstring's first line in Markdown (``x`` and :class:`x` become `x`)."""
    line = (doc or "").strip().splitlines()[0] if doc else ""
    line = re.sub(r":\w+:`([^`]+)`", r"`\1`", line).replace("``", "`")
    return line.rstrip(".")


def _attr_of(cls: type[BaseModel]) -> str:
    return next(attr for attr, section in SECTIONS.items() if section is cls)


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is _default_home:
        return "`./.relmon`"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    text = _env_text(value)
    return f"`{text}`" if text else "empty"


def _parse_calibration(value: str) -> Calibration:
    """RELMON_SCORE_CALIBRATION's value: ``none``, ``card`` or ``alpha,beta``."""
    if value == "none":
        return None
    if value == "card":
        return "card"
    alpha, beta = math.nan, math.nan
    parts = value.split(",")
    if len(parts) == 2:
        with contextlib.suppress(ValueError):
            alpha, beta = float(parts[0]), float(parts[1])
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(
            f"{value!r} is not a calibration: use card (the model card's fit), none (raw scores) "
            "or two numbers alpha,beta such as 5.2,0.42 (score = sigmoid(alpha * (p - beta)))"
        )
    return alpha, beta


def password_file_of(store_dir: Path) -> Path:
    """Where the local store on ``store_dir`` keeps its generated password.

    Beside the data directory (``$RELMON_HOME/store.password`` by default), mode 0600.
    """
    return store_dir.parent / f"{store_dir.name}.password"


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable a validation error's location points at."""
    if not loc:
        return "RELMON_* settings"
    head = str(loc[0])
    cls = SECTIONS.get(head)
    if cls is None:
        return ENV_PREFIX + head.upper()
    if len(loc) == 1:
        return f"RELMON_* settings ({cls.__name__})"
    name = str(loc[1])
    stem = cls.stem(name) if name in cls.model_fields else name
    return ENV_PREFIX + stem.upper()


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into ``ConfigError``.

    ``overrides`` take flat names, as the environment does without ``RELMON_``.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [f"  {_variable(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid relmon configuration:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return load_settings()
