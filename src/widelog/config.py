"""Settings, validated once at startup. Every field is an env var: `WIDELOG_<NAME>`."""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from widelog.incidents.rules import Seconds

ENV_PREFIX: Final = "WIDELOG_"
# Read by their own loaders (sampling policy, incident rules, redaction policy), which reject
# unknown names there, and by scripts/services.sh (the local test services), not widelog itself.
OTHER_PREFIXES: Final = (
    "WIDELOG_SAMPLING_",
    "WIDELOG_INCIDENTS_",
    "WIDELOG_REDACTION_",
    "WIDELOG_SERVICES_",
)
# librdkafka properties widelog sets itself: its guarantees (idempotence, acks=all, commits only
# after the store) depend on them, so WIDELOG_KAFKA_CONFIG may not change them.
KAFKA_OWNED: Final = frozenset(
    {
        "bootstrap.servers",
        "metadata.broker.list",
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "enable.gapless.guarantee",
        "transactional.id",
        "message.send.max.retries",
        "retries",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "linger.ms",
        "queue.buffering.max.messages",
        "compression.type",
        "group.id",
        "client.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "session.timeout.ms",
        "max.poll.interval.ms",
        "error_cb",
        "logger",
        "on_commit",
        "on_delivery",
        "stats_cb",
        "throttle_cb",
        "oauth_cb",
    }
)


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each bad variable and what to do."""


class Settings(BaseSettings):
    """What the composition root needs to pick and configure adapters."""

    model_config = SettingsConfigDict(env_prefix="WIDELOG_", extra="forbid")

    # Adapters. Only the values implemented so far are accepted, so a typo or an unbuilt option
    # fails the start with the list of allowed values instead of failing later.
    transport: Literal["memory", "kafka", "redis", "stdout"] = "memory"  # stdout: development
    store: Literal["sqlite", "mongo"] = "sqlite"
    cache: Literal["memory", "redis"] = "memory"
    llm: Literal["fake", "openai"] = "fake"

    # Service endpoints (loopback defaults match scripts/services.sh).
    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_url: str = "mongodb://127.0.0.1:27017/widelog"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Message queues (topic/stream and group names are what operators look for).
    kafka_topic: str = "log-events"
    kafka_group: str = "log-consumer-group"
    kafka_partitions: int = Field(6, ge=1)
    kafka_acks: Literal["all", "1", "0"] = "all"
    kafka_idempotence: bool = True
    kafka_message_timeout_ms: int = Field(10_000, ge=1000)
    kafka_linger_ms: int = Field(50, ge=0)  # batching: see widelog.pipeline.kafka.publisher
    kafka_session_timeout_ms: int = Field(10_000, ge=1000)
    kafka_max_poll_interval_ms: int = Field(300_000, ge=1000)
    publish_retries: int = Field(3, ge=1)  # the idempotent producer requires at least 1
    # Extra librdkafka properties for every Kafka client (producer, consumer, admin), as a JSON
    # object: security settings mostly. The SASL password goes in its own variable, masked.
    kafka_config: dict[str, str | int | float | bool] = Field(default_factory=dict)
    kafka_sasl_password: SecretStr | None = None
    redis_stream: str = "log-events"
    redis_group: str = "log-consumer-group"
    redis_stream_maxlen: int = Field(1_000_000, ge=1000)
    # How long the publisher gathers events for one XADD round (Kafka's linger.ms, for Redis).
    redis_linger_ms: float = Field(20.0, ge=0, le=1000)
    redis_claim_idle_ms: int = Field(30_000, ge=100)

    # Durable fallback when the message queue cannot take events.
    spool_dir: Path = Path(".widelog/spool")
    spool_fsync: Literal["always", "interval", "never"] = "interval"
    spool_fsync_interval_s: float = Field(1.0, gt=0)
    # Past 90 % only errors are spooled, past 100 % nothing (each drop counted and logged).
    spool_max_bytes: int = Field(1 << 30, ge=1 << 20)
    replay_interval_s: float = Field(5.0, gt=0)
    # The in-flight journal's ring (widelog.pipeline.journal): what a SIGKILL must not lose; 0: off.
    journal_max_bytes: int = Field(32 << 20, ge=0)
    # Spooled events replayed per second by the API process (0: as fast as the broker takes them).
    replay_rate: float = Field(1000.0, ge=0)

    # MongoDB.
    mongo_timeout_ms: int = Field(2000, ge=100)
    retention_days: int = Field(30, ge=0)

    # Embedded pipeline.
    sqlite_path: Path = Path(".widelog/events.sqlite3")
    queue_max_events: int = Field(100_000, ge=1)
    batch_size: int = Field(100, ge=1, le=10_000)
    flush_interval_s: float = Field(1.0, gt=0)
    write_attempts: int = Field(3, ge=1)

    # Events.
    service_name: str = "unknown_service"  # OpenTelemetry's name for a service nobody named
    service_version: str = "0.1.0"
    env: str = "dev"
    instance: str = Field(default_factory=socket.gethostname)
    # Below Kafka's default message.max.bytes (1 MB): an event the broker refuses would be
    # spooled and replayed forever.
    max_event_bytes: int = Field(64 * 1024, ge=4096, le=900 * 1024)
    # App log records at or above this level are folded into the current event (docs/interop.md).
    log_bridge_level: Literal["OFF", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"
    log_bridge_max_records: int = Field(20, ge=1, le=1000)

    # Caches (docs/caches.md). The namespace prefixes every Redis key, so deployments (and tests)
    # can share one Redis; the timeout bounds each Redis operation on the request path.
    cache_namespace: str = Field("widelog", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    cache_timeout_ms: float = Field(50.0, ge=1, le=5000)
    cache_breaker_failures: int = Field(5, ge=1)
    cache_breaker_reset_s: float = Field(2.0, gt=0, le=600)
    session_ttl_s: float = Field(1800.0, gt=0)
    session_max_turns: int = Field(20, ge=2, le=1000)
    session_max_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    session_max_sessions: int = Field(10_000, ge=1)  # in-process cache and outage fallback
    semantic_cache_ttl_s: float = Field(3600.0, gt=0)
    semantic_cache_max_entries: int = Field(10_000, ge=1)  # in-process cache only

    # `widelog worker`'s /metrics, /healthz, /readyz on this loopback port (None: not served).
    worker_http_port: int | None = Field(None, ge=0, le=65535)
    worker_http_host: str = "127.0.0.1"

    # Admin routes (events, incidents, infra, metrics, dashboard): bearer token when set.
    admin_token: SecretStr | None = None
    # Where operators reach those routes (https://widelog.example.com): links in notifications.
    admin_base_url: str | None = None

    # Incident notifications (docs/incidents.md, "Notifications"): every consuming process
    # delivers the outbox's messages to this webhook. Named with the feature's prefix; the
    # incident-rules loader leaves these variables to Settings (`incident_settings()`).
    incidents_webhook_url: str | None = None
    incidents_webhook_secret: SecretStr | None = None  # HMAC-SHA256 key of the signature header
    incidents_webhook_format: Literal["alertmanager", "widelog"] = "alertmanager"
    incidents_webhook_timeout_s: float = Field(5.0, gt=0, le=60)
    incidents_webhook_backoff_s: float = Field(1.0, gt=0, le=3600)  # first retry, then doubling
    incidents_webhook_backoff_max_s: float = Field(300.0, gt=0, le=86_400)
    # An open incident is announced again ("update") this often; 0: never. As Alertmanager's.
    incidents_repeat_interval: Seconds = Field(4 * 3600, ge=0)
    # A message not delivered by this age is given up (an hours-late "open" misleads).
    incidents_notify_max_age: Seconds = Field(24 * 3600, ge=60)
    incidents_notify_poll_s: float = Field(2.0, gt=0, le=600)
    # The dashboard's charts: one sample of this process's counters every this many seconds,
    # an hour of them kept in memory.
    dashboard_sample_s: float = Field(10.0, ge=0.1, le=600)

    # Chat API. The body limit applies before parsing (413, error.code BODY_TOO_LARGE).
    max_message_chars: int = Field(8000, ge=1)
    max_body_bytes: int = Field(256 * 1024, ge=1024)

    # LLM.
    fake_llm_latency_ms: float = Field(20.0, ge=0)
    fake_llm_latency_sigma: float = Field(0.5, ge=0)
    fake_llm_error_rates: dict[str, float] = Field(default_factory=dict)
    openai_base_url: str = "http://127.0.0.1:8001/v1"
    openai_model: str = "gpt-4o-mini"
    openai_api_key: SecretStr | None = None
    openai_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _idempotence_needs_acks_all(self) -> Settings:
        """The producer would refuse this pair when created; refuse it at startup instead."""
        if self.kafka_idempotence and self.kafka_acks != "all":
            raise ValueError("kafka_acks must be 'all' while kafka_idempotence is true")
        return self

    @field_validator("journal_max_bytes")
    @classmethod
    def _journal_off_or_room_for_events(cls, size: int) -> int:
        if 0 < size < 1 << 20:
            raise ValueError("journal_max_bytes must be 0 (off) or at least 1 MiB (1048576)")
        return size

    @field_validator("kafka_config")
    @classmethod
    def _kafka_config_leaves_widelog_its_own(
        cls, config: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        """Refuse properties widelog owns, and secrets (this variable is shown unmasked)."""
        owned = sorted(KAFKA_OWNED.intersection(config))
        if owned:
            raise ValueError(
                f"sets {', '.join(owned)}, which widelog sets itself (use the WIDELOG_KAFKA_*"
                " and WIDELOG_PUBLISH_RETRIES settings where there is one)"
            )
        secret = sorted(k for k in config if "password" in k or "secret" in k)
        if secret:
            raise ValueError(
                f"holds {', '.join(secret)}: secrets do not go here (it is not masked); put"
                " the SASL password in WIDELOG_KAFKA_SASL_PASSWORD"
            )
        return config

    def kafka_client_config(self) -> dict[str, Any]:
        """What every Kafka client gets on top of its own settings, the password included."""
        config: dict[str, Any] = dict(self.kafka_config)
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return config

    @field_validator("log_bridge_level", mode="before")
    @classmethod
    def _level_any_case(cls, level: object) -> object:
        """`warning` and `off` are what people type; logging's names are upper case."""
        return level.upper() if isinstance(level, str) else level

    @field_validator("incidents_webhook_url", "admin_base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        """A wrong scheme would only fail at the first Redis call; say so at startup instead."""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


def incident_settings() -> frozenset[str]:
    """The `WIDELOG_INCIDENTS_*` variables that are settings, not incident-rule overrides."""
    names = (ENV_PREFIX + name.upper() for name in Settings.model_fields)
    return frozenset(name for name in names if name.startswith("WIDELOG_INCIDENTS_"))


def load_settings() -> Settings:
    """`Settings` from `WIDELOG_*` variables; `SettingsError` for an unknown name or a bad value.

    pydantic-settings ignores variables it has no field for, so a typo (`WIDELOG_TRANSPROT`)
    would silently keep the default: refuse it instead, naming the closest known setting.
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    problems = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"unknown setting {name}{hint}")
    if problems:
        raise SettingsError("; ".join(problems))
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
    except SourceError as exc:  # a value that is not JSON where JSON is expected
        raise SettingsError(f"{exc}: it must be JSON (e.g. an object for a dict)") from None


def describe(exc: ValidationError) -> str:
    """One line per bad setting, named as the variable a person sets, without pydantic's URLs."""
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        name = ENV_PREFIX + field.upper() if field else "settings"
        given = error.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {str(given)[:80]!r})"
        lines.append(f"{name}: {error['msg']}{shown}")
    return "; ".join(lines)
