"""Settings, validated once at startup. Every field is an env var: `WIDELOG_<NAME>`."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What the composition root needs to pick and configure adapters."""

    model_config = SettingsConfigDict(env_prefix="WIDELOG_", extra="forbid")

    # Adapters. Only the values implemented so far are accepted, so a typo or an unbuilt option
    # fails the start with the list of allowed values instead of failing later.
    transport: Literal["memory"] = "memory"
    store: Literal["sqlite"] = "sqlite"
    cache: Literal["memory"] = "memory"
    llm: Literal["fake", "openai"] = "fake"

    # Service endpoints (loopback defaults match scripts/services.sh).
    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_url: str = "mongodb://127.0.0.1:27017/widelog"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Embedded pipeline.
    sqlite_path: Path = Path(".widelog/events.sqlite3")
    queue_max_events: int = Field(100_000, ge=1)
    batch_size: int = Field(100, ge=1, le=10_000)
    flush_interval_s: float = Field(1.0, gt=0)
    write_attempts: int = Field(3, ge=1)

    # Events.
    service_name: str = "chat-api"
    service_version: str = "0.1.0"
    env: str = "dev"
    instance: str = Field(default_factory=socket.gethostname)
    max_event_bytes: int = Field(64 * 1024, ge=4096)

    # Chat API.
    max_message_chars: int = Field(8000, ge=1)

    # LLM.
    fake_llm_latency_ms: float = Field(20.0, ge=0)
    fake_llm_latency_sigma: float = Field(0.5, ge=0)
    fake_llm_error_rates: dict[str, float] = Field(default_factory=dict)
    openai_base_url: str = "http://127.0.0.1:8001/v1"
    openai_model: str = "gpt-4o-mini"
    openai_api_key: SecretStr | None = None
    openai_timeout_s: float = Field(30.0, gt=0)
