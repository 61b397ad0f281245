from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.llm_stub import stub_server  # noqa: F401 - a fixture shared by LLM tests
from widelog.pipeline.sqlite_store import SQLiteEventStore


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    yield store
    await store.close()


@pytest.fixture(scope="session")
def live_services() -> None:
    """Redis, Kafka and FerretDB on loopback, started once per test run (reused if running)."""
    from tests.live import services

    services("up")
