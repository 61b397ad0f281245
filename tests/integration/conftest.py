"""Fixtures: the embedded chat API with sampling off and a client; live Kafka/Redis pipelines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import KEEP_ALL
from tests.pipelines import Pipeline
from tests.toxiproxy import Toxiproxy
from widelog.chat.api import create_app
from widelog.chat.bootstrap import ChatContainer, build
from widelog.config import Settings


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[ChatContainer]:
    settings = Settings(
        sqlite_path=tmp_path / "events.sqlite3", fake_llm_latency_ms=1, flush_interval_s=0.05
    )
    container = build(settings, sampling=KEEP_ALL)
    await container.start()
    yield container
    await container.aclose()


@pytest.fixture
async def client(container: ChatContainer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


@pytest.fixture
async def kafka_pipeline(live_services, tmp_path) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(tmp_path, "kafka")
    yield pipeline
    await pipeline.aclose()


@pytest.fixture
async def redis_pipeline(live_services, tmp_path) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(tmp_path, "redis")
    yield pipeline
    await pipeline.aclose()


@pytest.fixture
def toxiproxy(live_services) -> Iterator[Toxiproxy]:
    """The Toxiproxy server of scripts/services.sh; the proxies a test made are deleted after it."""
    toxiproxy = Toxiproxy()
    yield toxiproxy
    toxiproxy.close()
