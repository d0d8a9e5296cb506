"""The one frozen settings object of relmon.

Every field is read from an environment variable named ``RELMON_<FIELD>`` (upper case), or from
a ``.env`` file in the working directory. The defaults are the embedded local setup: a tansu
broker and the local ClickHouse store on 127.0.0.1. In production only the addresses change.
"""

from __future__ import annotations

import contextlib
import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relmon.errors import ConfigError

Provider = Literal["auto", "cuda", "cpu"]
# The scorer's calibration: none (raw scores), the model card's fitted one, or (alpha, beta).
Calibration = tuple[float, float] | Literal["card"] | None


def _default_home() -> Path:
    return Path.cwd() / ".relmon"


class Settings(BaseSettings):
    """relmon configuration; each field's environment variable is ``RELMON_`` + its name."""

    model_config = SettingsConfigDict(
        env_prefix="RELMON_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- Local runtime -------------------------------------------------------------------
    home: Path = Field(
        default_factory=_default_home,
        description="RELMON_HOME: directory for local state (store data, logs, run files).",
    )

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        default="127.0.0.1:19092",
        description="RELMON_KAFKA_BOOTSTRAP: Kafka bootstrap servers, comma separated host:port.",
    )
    broker_port: int = Field(
        default=19092,
        ge=0,
        le=65535,
        description="RELMON_BROKER_PORT: port of the embedded tansu broker (0 = pick a free one).",
    )
    topic_impressions: str = Field(
        default="relmon.impressions",
        description="RELMON_TOPIC_IMPRESSIONS: input topic of search impressions.",
    )
    topic_catalog: str = Field(
        default="relmon.catalog",
        description="RELMON_TOPIC_CATALOG: compacted topic of product catalogue records.",
    )
    topic_review: str = Field(
        default="relmon.teacher-review",
        description="RELMON_TOPIC_REVIEW: topic of low-score cases for the teacher.",
    )
    topic_dlq: str = Field(
        default="relmon.dlq",
        description="RELMON_TOPIC_DLQ: dead-letter topic for events relmon cannot process.",
    )
    topic_labels: str = Field(
        default="relmon.teacher-labels",
        description="RELMON_TOPIC_LABELS: topic of teacher verdicts (one JSON record per judged "
        "review case).",
    )
    topic_partitions: int = Field(
        default=4,
        ge=1,
        description="RELMON_TOPIC_PARTITIONS: partitions of topics relmon creates.",
    )
    consumer_group: str = Field(
        default="relmon-worker",
        description="RELMON_CONSUMER_GROUP: Kafka consumer group (Faust app id) of the workers.",
    )
    session_timeout_s: float = Field(
        default=6.0,
        gt=0,
        description="RELMON_SESSION_TIMEOUT_S: consumer group session timeout in seconds.",
    )
    heartbeat_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="RELMON_HEARTBEAT_INTERVAL_S: consumer heartbeat interval in seconds.",
    )

    # --- ClickHouse ------------------------------------------------------------------------
    clickhouse_host: str = Field(
        default="127.0.0.1",
        description="RELMON_CLICKHOUSE_HOST: ClickHouse HTTP host (the local store by default).",
    )
    clickhouse_port: int = Field(
        default=18123,
        ge=0,
        le=65535,
        description="RELMON_CLICKHOUSE_PORT: ClickHouse HTTP port.",
    )
    clickhouse_user: str = Field(
        default="default", description="RELMON_CLICKHOUSE_USER: ClickHouse user."
    )
    clickhouse_password: SecretStr = Field(
        default=SecretStr(""),
        description="RELMON_CLICKHOUSE_PASSWORD: ClickHouse password (empty = the local store's "
        "generated password, read from the file beside its data directory).",
    )
    clickhouse_database: str = Field(
        default="relmon",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="RELMON_CLICKHOUSE_DATABASE: database holding relmon's tables.",
    )
    clickhouse_secure: bool = Field(
        default=False, description="RELMON_CLICKHOUSE_SECURE: use HTTPS to reach ClickHouse."
    )
    store_dir: Path | None = Field(
        default=None,
        description="RELMON_STORE_DIR: chdb data directory of the local store "
        "(default: $RELMON_HOME/store).",
    )

    # --- Model and scoring -----------------------------------------------------------------
    model_dir: Path = Field(
        default=Path("models/relmon-minilm-ce"),
        description="RELMON_MODEL_DIR: directory of the built cross-encoder "
        "(model.onnx / model.int8.onnx, tokenizer, card.json).",
    )
    model_variant: Literal["auto", "int8", "fp32"] = Field(
        default="auto",
        description="RELMON_MODEL_VARIANT: ONNX variant to serve "
        "(auto = int8 on CPU, fp32 on CUDA).",
    )
    scorer_tier: Literal["card", "cross-encoder", "cosine", "page"] = Field(
        default="card",
        description="RELMON_SCORER_TIER: which scorer of the model directory serves: card (the "
        "tier the model card serves, chosen by cross-validation on real labels), cross-encoder "
        "(the fine-tuned student), cosine (the base model's embeddings, cached per query and "
        "product text) or page (a result of a UBI result page judged against its page: the "
        "cosine, its agreement with the page's most query-like results and the page's share "
        "in its category; results that arrive alone get the cosine tier).",
    )
    provider: Provider = Field(
        default="auto",
        description="RELMON_PROVIDER: onnxruntime execution provider: auto (CUDA, else CPU), "
        "cuda or cpu.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="RELMON_INTRA_OP_THREADS: onnxruntime intra-op threads (0 = cores given).",
    )
    batch_size: int = Field(
        default=32, ge=1, le=4096, description="RELMON_BATCH_SIZE: scoring batch size."
    )
    max_length: int = Field(
        default=64, ge=8, le=512, description="RELMON_MAX_LENGTH: max tokens per pair."
    )
    bad_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="RELMON_BAD_THRESHOLD: a pair scoring below this is a bad case (default: "
        "the model card's operating point, where the share flagged on held-out real labels "
        "equals their true bad share).",
    )
    category_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="RELMON_CATEGORY_THRESHOLDS: bad-case threshold per category, as JSON "
        '(e.g. {"Area Rugs": 0.4}); other categories use RELMON_BAD_THRESHOLD.',
    )
    score_calibration: str = Field(
        default="card",
        description="RELMON_SCORE_CALIBRATION: card (default: the Platt fit of P(good) on "
        'held-out real labels, from the model card), none (raw scores) or "alpha,beta": '
        "scores become sigmoid(alpha * (p - beta)).",
    )
    score_cache_size: int = Field(
        default=100_000,
        ge=0,
        description="RELMON_SCORE_CACHE_SIZE: entries of the LRU cache of scores keyed by "
        "(model version, query, product id, title); 0 = no cache.",
    )

    review_uncertain_band: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="RELMON_REVIEW_UNCERTAIN_BAND: rows scoring less than this above the "
        "threshold are sent for review as uncertain.",
    )
    review_audit_share: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="RELMON_REVIEW_AUDIT_SHARE: share of confident rows sent for review as an "
        "audit sample (so the student's misses can be estimated).",
    )

    # --- Stream processing -----------------------------------------------------------------
    sampling_mode: Literal["stratified", "uniform"] = Field(
        default="stratified",
        description="RELMON_SAMPLING_MODE: stratified (rates per query tier and position) "
        "or uniform (RELMON_SAMPLE_RATE for every impression).",
    )
    sample_rate: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="RELMON_SAMPLE_RATE: share of result pages scored in uniform mode.",
    )
    rate_head: float = Field(
        default=0.05, gt=0.0, le=1.0, description="RELMON_RATE_HEAD: sample rate of head queries."
    )
    rate_torso: float = Field(
        default=0.25, gt=0.0, le=1.0, description="RELMON_RATE_TORSO: sample rate of torso queries."
    )
    rate_tail: float = Field(
        default=1.0, gt=0.0, le=1.0, description="RELMON_RATE_TAIL: sample rate of tail queries."
    )
    top_positions: int = Field(
        default=3,
        ge=0,
        description="RELMON_TOP_POSITIONS: positions 1..k are the 'top' bucket, sampled at the "
        "full tier rate.",
    )
    rest_position_factor: float = Field(
        default=0.75,
        gt=0.0,
        le=1.0,
        description="RELMON_REST_POSITION_FACTOR: rate multiplier for positions below the top.",
    )
    head_share: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="RELMON_HEAD_SHARE: a query with at least this share of recent traffic "
        "is head.",
    )
    torso_share: float = Field(
        default=0.0015,
        gt=0.0,
        lt=1.0,
        description="RELMON_TORSO_SHARE: a query with at least this share (and below head) "
        "is torso.",
    )
    sketch_capacity: int = Field(
        default=5000,
        ge=10,
        description="RELMON_SKETCH_CAPACITY: counters of the query-frequency sketch per partition.",
    )
    sketch_decay: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="RELMON_SKETCH_DECAY: factor applied to the sketch's counts each plan epoch.",
    )
    plan_epoch_s: int = Field(
        default=60,
        ge=1,
        description="RELMON_PLAN_EPOCH_S: event-time length of a sampling plan (tiers and budget "
        "factor are fixed per partition and epoch, so replays decide the same).",
    )
    scoring_budget_pps: str = Field(
        default="auto",
        description="RELMON_SCORING_BUDGET_PPS: pairs/s the scorer may take. 'auto' (default): "
        "the worker measures its scorer's capacity and its lag and lowers the inclusion "
        "probabilities (recorded in the plan and per row) when it cannot keep up; a number: a "
        "fixed cap on the pairs/s the base rates ask for; 0 = no budget.",
    )
    scoring_budget_drain_s: float = Field(
        default=30.0,
        gt=0.0,
        description="RELMON_SCORING_BUDGET_DRAIN_S: the automatic budget plans to work the lag "
        "off within this many seconds.",
    )
    min_inclusion_prob: float = Field(
        default=0.005,
        gt=0.0,
        le=1.0,
        description="RELMON_MIN_INCLUSION_PROB: floor of any impression's inclusion probability.",
    )
    min_window_sample: int = Field(
        default=30,
        ge=1,
        description="RELMON_MIN_WINDOW_SAMPLE: windows with a smaller effective sample are shown "
        "as too thin to judge.",
    )
    take_max: int = Field(
        default=256, ge=1, description="RELMON_TAKE_MAX: max events the worker takes per batch."
    )
    take_within_s: float = Field(
        default=0.5,
        gt=0,
        description="RELMON_TAKE_WITHIN_S: max seconds the worker waits to fill a batch.",
    )
    retry_backoff_max_s: float = Field(
        default=5.0,
        gt=0,
        description="RELMON_RETRY_BACKOFF_MAX_S: longest wait between retries of a failed store "
        "write or Kafka send in the worker (the wait doubles from 0.2 s up to this), so a worker "
        "resumes within this long after an outage ends.",
    )
    unknown_product_retry_s: float = Field(
        default=10.0,
        ge=0,
        description="RELMON_UNKNOWN_PRODUCT_RETRY_S: how long an impression of an unknown "
        "product waits for the catalogue before it is dead-lettered.",
    )
    catalog_file: Path | None = Field(
        default=None,
        description="RELMON_CATALOG_FILE: JSON Lines catalogue loaded at worker start "
        "(product_id, title, category, brand, attributes).",
    )
    ubi_position_base: int = Field(
        default=0,
        ge=0,
        le=1,
        description="RELMON_UBI_POSITION_BASE: event_attributes.position.ordinal of the first "
        "result in UBI events: 0 (OpenSearch's UBI sample) or 1; relmon's position is "
        "ordinal - base + 1.",
    )
    dlq_max_bytes: int = Field(
        default=512 * 1024,
        ge=4096,
        description="RELMON_DLQ_MAX_BYTES: largest dead letter; a letter that would be larger "
        "keeps only a prefix of the original bytes (with their size and sha256). Keep it under "
        "the broker's message limit (1 MB by default).",
    )
    max_event_age_s: float = Field(
        default=28 * 86400,
        gt=0,
        le=29 * 86400,
        description="RELMON_MAX_EVENT_AGE_S: oldest event time the worker accepts, in seconds "
        "before its clock (default 28 days); older impressions are dead-lettered as "
        "event_time_out_of_range. At most 29 days: raw rows expire after 30 days of event time, "
        "and an hour's roll-up is recomputed from all of its raw rows.",
    )
    max_event_future_s: float = Field(
        default=300.0,
        ge=0,
        description="RELMON_MAX_EVENT_FUTURE_S: latest event time the worker accepts, in seconds "
        "after its clock (clock skew); later impressions are dead-lettered as "
        "event_time_out_of_range.",
    )

    # --- Teacher (LLM judge over an OpenAI-compatible chat-completions API) ----------------
    teacher_base_url: str = Field(
        default="",
        description="RELMON_TEACHER_BASE_URL: base URL of an OpenAI-compatible API, e.g. "
        "http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp server, OpenAI); empty = no LLM "
        "judge, `relmon teacher` only fills the review queue for people.",
    )
    teacher_model: str = Field(
        default="", description="RELMON_TEACHER_MODEL: model name sent to the chat API."
    )
    teacher_api_key: SecretStr = Field(
        default=SecretStr(""),
        description="RELMON_TEACHER_API_KEY: bearer token of the chat API (empty = none).",
    )
    teacher_group: str = Field(
        default="relmon-teacher",
        description="RELMON_TEACHER_GROUP: Kafka consumer group of `relmon teacher`.",
    )
    teacher_concurrency: int = Field(
        default=4, ge=1, le=256, description="RELMON_TEACHER_CONCURRENCY: requests in flight."
    )
    teacher_rate_per_s: float = Field(
        default=2.0,
        ge=0.0,
        description="RELMON_TEACHER_RATE_PER_S: chat requests per second (0 = no limit).",
    )
    teacher_daily_budget: int = Field(
        default=10_000,
        ge=0,
        description="RELMON_TEACHER_DAILY_BUDGET: chat requests per UTC day (0 = no limit); "
        "over budget, cases stay in the review queue for people.",
    )
    teacher_timeout_s: float = Field(
        default=60.0, gt=0, description="RELMON_TEACHER_TIMEOUT_S: timeout of one chat request."
    )
    teacher_max_attempts: int = Field(
        default=5,
        ge=1,
        description="RELMON_TEACHER_MAX_ATTEMPTS: tries of one request on 429, 5xx, timeouts.",
    )
    teacher_parse_retries: int = Field(
        default=2,
        ge=0,
        description="RELMON_TEACHER_PARSE_RETRIES: re-asks when an answer is not the JSON asked.",
    )
    teacher_backoff_s: float = Field(
        default=0.5,
        gt=0,
        description="RELMON_TEACHER_BACKOFF_S: first backoff delay (doubles, full jitter).",
    )
    teacher_backoff_max_s: float = Field(
        default=30.0, gt=0, description="RELMON_TEACHER_BACKOFF_MAX_S: longest backoff delay."
    )
    teacher_max_tokens: int = Field(
        default=768, ge=16, description="RELMON_TEACHER_MAX_TOKENS: max tokens of an answer."
    )
    teacher_json_mode: bool = Field(
        default=True,
        description='RELMON_TEACHER_JSON_MODE: send response_format {"type": "json_object"}.',
    )
    teacher_cache_size: int = Field(
        default=50_000,
        ge=0,
        description="RELMON_TEACHER_CACHE_SIZE: verdicts kept in memory, keyed by (query, "
        "product, prompt version); the store is asked on a miss.",
    )

    # --- Dashboard -------------------------------------------------------------------------
    dashboard_port: int = Field(
        default=8501, ge=1, le=65535, description="RELMON_DASHBOARD_PORT: Streamlit port."
    )
    bind_host: str = Field(
        default="127.0.0.1",
        description="RELMON_BIND_HOST: address local services listen on.",
    )

    # --- Alerts (relmon/alerts) -------------------------------------------------------------
    topic_alerts: str = Field(
        default="relmon.alerts",
        description="RELMON_TOPIC_ALERTS: topic of alert events (fired, resolved); the alert "
        "runners' leader election uses the single-partition topic <this>.leader.",
    )
    alert_sinks: str = Field(
        default="kafka,clickhouse,webhook",
        description="RELMON_ALERT_SINKS: comma separated sinks of alert events: kafka, "
        "clickhouse, webhook (the webhook only when RELMON_ALERT_WEBHOOK_URL is set).",
    )
    alert_webhook_url: SecretStr = Field(
        default=SecretStr(""),
        description="RELMON_ALERT_WEBHOOK_URL: Slack-compatible incoming webhook for alerts "
        "(secret; masked when printed); empty = no webhook.",
    )
    alert_webhook_retries: int = Field(
        default=4,
        ge=0,
        description="RELMON_ALERT_WEBHOOK_RETRIES: retries of a failed webhook call.",
    )
    alert_webhook_backoff_s: float = Field(
        default=1.0,
        ge=0.0,
        description="RELMON_ALERT_WEBHOOK_BACKOFF_S: first retry delay, doubled at each retry.",
    )
    alert_window_s: int = Field(
        default=300,
        ge=10,
        description="RELMON_ALERT_WINDOW_S: length of the windows the alert detectors judge.",
    )
    alert_lateness_s: float = Field(
        default=60.0,
        ge=0.0,
        description="RELMON_ALERT_LATENESS_S: a window is judged once its end is this old "
        "(room for late events and scoring).",
    )
    alert_interval_s: float = Field(
        default=15.0,
        gt=0.0,
        description="RELMON_ALERT_INTERVAL_S: how often the alert runner looks for closed windows.",
    )
    alert_baseline_windows: int = Field(
        default=48,
        ge=2,
        description="RELMON_ALERT_BASELINE_WINDOWS: windows in a segment's rolling baseline.",
    )
    alert_baseline_gap: int = Field(
        default=3,
        ge=0,
        description="RELMON_ALERT_BASELINE_GAP: newest windows left out of the baseline, so a "
        "spike's first windows do not raise their own baseline.",
    )
    alert_min_baseline_windows: int = Field(
        default=6,
        ge=1,
        description="RELMON_ALERT_MIN_BASELINE_WINDOWS: windows of baseline needed before a "
        "segment is tested.",
    )
    alert_min_sample: float = Field(
        default=30.0,
        gt=0.0,
        description="RELMON_ALERT_MIN_SAMPLE: effective sample a window needs to be tested.",
    )
    alert_min_baseline_sample: float = Field(
        default=200.0,
        gt=0.0,
        description="RELMON_ALERT_MIN_BASELINE_SAMPLE: effective sample a baseline needs.",
    )
    alert_min_bad: int = Field(
        default=3,
        ge=0,
        description="RELMON_ALERT_MIN_BAD: bad rows a window needs before it can alert.",
    )
    alert_min_lift: float = Field(
        default=1.25,
        ge=1.0,
        description="RELMON_ALERT_MIN_LIFT: a window alerts only at this multiple of its "
        "baseline rate or more.",
    )
    alert_fdr: float = Field(
        default=1e-6,
        gt=0.0,
        lt=1.0,
        description="RELMON_ALERT_FDR: Benjamini-Hochberg false discovery rate of the per-window "
        "z-tests across segments.",
    )
    alert_scan_windows: int = Field(
        default=3,
        ge=1,
        description="RELMON_ALERT_SCAN_WINDOWS: the z-test also judges the sums of the last 2 .. "
        "this many windows (at most RELMON_ALERT_BASELINE_GAP + 1), so a spike too small to "
        "show in one window of a small segment shows in two or three.",
    )
    alert_ewma_lambda: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="RELMON_ALERT_EWMA_LAMBDA: smoothing of the EWMA detector.",
    )
    alert_ewma_limit: float = Field(
        default=5.0,
        gt=0.0,
        description="RELMON_ALERT_EWMA_LIMIT: EWMA control limit in standard deviations.",
    )
    alert_cusum_k: float = Field(
        default=1.0,
        ge=0.0,
        description="RELMON_ALERT_CUSUM_K: CUSUM allowance (half the shift to detect, in sd).",
    )
    alert_cusum_h: float = Field(
        default=8.0,
        gt=0.0,
        description="RELMON_ALERT_CUSUM_H: CUSUM decision threshold.",
    )
    alert_resolve_windows: int = Field(
        default=2,
        ge=1,
        description="RELMON_ALERT_RESOLVE_WINDOWS: windows in a row back at baseline that "
        "resolve an alert.",
    )
    alert_cooldown_windows: int = Field(
        default=6,
        ge=0,
        description="RELMON_ALERT_COOLDOWN_WINDOWS: a segment re-alarming this soon after its "
        "alert resolved reopens that alert instead of paging again.",
    )
    alerts_in_worker: bool = Field(
        default=False,
        description="RELMON_ALERTS_IN_WORKER: also run the alert runner inside each worker "
        "(only the elected leader acts).",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="RELMON_METRICS_PORT: Prometheus metrics port of the worker on "
        "RELMON_BIND_HOST; 0 = no endpoint.",
    )

    @field_validator("alert_sinks")
    @classmethod
    def _check_sinks(cls, value: str) -> str:
        names = {n.strip() for n in value.split(",") if n.strip()}
        unknown = names - {"kafka", "clickhouse", "webhook"}
        if unknown:
            raise ValueError(
                f"unknown alert sinks {sorted(unknown)}: use kafka, clickhouse, webhook"
            )
        return value

    @field_validator("scoring_budget_pps", mode="before")
    @classmethod
    def _check_budget(cls, value: object) -> str:
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
    def scoring_budget(self) -> tuple[Literal["auto", "fixed", "off"], float]:
        """The scoring budget's mode and, when fixed, its pairs/s."""
        if self.scoring_budget_pps == "auto":
            return "auto", 0.0
        pps = float(self.scoring_budget_pps)
        return ("fixed", pps) if pps > 0 else ("off", 0.0)

    @field_validator("score_calibration")
    @classmethod
    def _check_calibration(cls, value: str) -> str:
        _parse_calibration(value)
        return value

    @property
    def calibration(self) -> Calibration:
        """RELMON_SCORE_CALIBRATION as the scorer takes it (``Scorer(calibration=...)``)."""
        return _parse_calibration(self.score_calibration)

    @field_validator("kafka_bootstrap")
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
    def _check_intervals(self) -> Settings:
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                "RELMON_HEARTBEAT_INTERVAL_S must be smaller than RELMON_SESSION_TIMEOUT_S"
            )
        if self.alert_scan_windows > self.alert_baseline_gap + 1:
            raise ValueError(
                f"RELMON_ALERT_SCAN_WINDOWS={self.alert_scan_windows} must be at most "
                f"RELMON_ALERT_BASELINE_GAP + 1 = {self.alert_baseline_gap + 1} (a scanned window "
                "must not be in the baseline): lower it or raise the gap"
            )
        return self

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
        explicit = self.clickhouse_password.get_secret_value()
        if explicit:
            return explicit
        try:
            return self.store_password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    @property
    def kafka_servers(self) -> list[str]:
        """Bootstrap servers as a list."""
        return [s.strip() for s in self.kafka_bootstrap.split(",")]

    def with_overrides(self, **changes: object) -> Settings:
        """Return a copy with some fields changed and validated again."""
        data = self.model_dump()
        data.update(changes)
        return load_settings(**data)


def _parse_calibration(value: str) -> Calibration:
    """RELMON_SCORE_CALIBRATION's value: ``none``, ``card`` or ``alpha,beta``.

    The field's validator and :attr:`Settings.calibration` share it, so a value that passed
    validation always parses.
    """
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


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into ``ConfigError``."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"RELMON_{field.upper()}" if field != "settings" else "RELMON_* settings"
            lines.append(f"  {env}: {err['msg']}")
        raise ConfigError("invalid relmon configuration:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return load_settings()
