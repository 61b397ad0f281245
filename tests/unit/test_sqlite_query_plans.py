"""Every event search on SQLite is served by an index: a query that scans is a bug at scale."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from widelog.pipeline.ports import EventQuery
from widelog.pipeline.sqlite_store import SQLiteEventStore, search_sql

FILTERS: dict[str, Any] = {
    "request_id": "r",
    "route": "/v1/chat",
    "status": 500,
    "error_code": "E",
    "session_id": "s",
    "model": "m",
}


@pytest.fixture
async def database(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    await store.ping()  # creates the schema
    await store.close()
    with sqlite3.connect(tmp_path / "events.sqlite3") as db:
        yield db


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_each_search_filter_uses_an_index(database, name):
    sql, params = search_sql(EventQuery(**{name: FILTERS[name]}))
    plan = " | ".join(row[3] for row in database.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "USING INDEX" in plan, plan
    assert not plan.startswith("SCAN events "), plan
