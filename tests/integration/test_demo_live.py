"""`widelog demo` on the shared transports: the API in-process, `widelog worker`'s code beside it.

Each run has its own topic or stream, consumer group, database and cache namespace. The counts
the demo reports are checked against the store, read directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from redis import Redis

from tests.integration.test_cli import run
from tests.live import KAFKA, REDIS_URL, mongo_url, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
REQUESTS = 300


def demo_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {
        "WIDELOG_KAFKA_BOOTSTRAP": KAFKA,
        "WIDELOG_REDIS_URL": REDIS_URL,
        "WIDELOG_KAFKA_TOPIC": unique("demo-events"),
        "WIDELOG_KAFKA_GROUP": unique("demo-group"),
        "WIDELOG_REDIS_STREAM": unique("demo-events"),
        "WIDELOG_REDIS_GROUP": unique("demo-group"),
        "WIDELOG_CACHE_NAMESPACE": unique("demo"),
        "WIDELOG_SPOOL_DIR": str(tmp_path / "spool"),
        "WIDELOG_FLUSH_INTERVAL_S": "0.2",
        **settings,
    }


def run_demo(env: dict[str, str]) -> dict[str, Any]:
    result = run("demo", "--requests", str(REQUESTS), "--json", env=env)
    assert 0 == result.returncode, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def assert_every_kept_event_stored(report: dict[str, Any]) -> None:
    events, errors = report["events"], report["errors"]
    assert REQUESTS == report["requests"] == events["finalized"]
    assert events["kept"] == events["published"] == events["stored"] > 0
    assert (0, 0, 0) == (
        events["publish_failed"],
        events["finalize_failed"],
        events["dead_lettered"],
    )
    assert errors["total"] == errors["stored"] > 0
    assert report["pipeline"]["drained"]
    assert "worker task" == report["pipeline"]["consumer"]


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.redis
def test_the_demo_on_kafka_mongo_and_redis_caches_stores_every_kept_event(live_services, tmp_path):
    database = unique("widelog_demo").replace("-", "_")
    env = demo_env(
        tmp_path,
        WIDELOG_TRANSPORT="kafka",
        WIDELOG_STORE="mongo",
        WIDELOG_CACHE="redis",
        WIDELOG_MONGO_URL=mongo_url(database),
    )
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_url(database))
    with mongo:
        try:
            report = run_demo(env)
            stored = mongo[database]["events"].count_documents({})
        finally:
            mongo.drop_database(database)
    assert_every_kept_event_stored(report)
    assert ("kafka", "mongo") == (report["pipeline"]["transport"], report["pipeline"]["store"])
    assert "redis" == report["cache"]["backend"]
    assert report["events"]["stored"] == stored  # read back: the demo's database holds only them


@pytest.mark.redis
def test_the_demo_on_redis_streams_stores_every_kept_event(live_services, tmp_path):
    env = demo_env(tmp_path, WIDELOG_TRANSPORT="redis")
    try:
        report = run_demo(env)
        with Redis.from_url(REDIS_URL) as redis:
            entries = redis.xlen(env["WIDELOG_REDIS_STREAM"])
    finally:
        with Redis.from_url(REDIS_URL) as redis:
            redis.delete(env["WIDELOG_REDIS_STREAM"])
    assert_every_kept_event_stored(report)
    assert ("redis", "sqlite") == (report["pipeline"]["transport"], report["pipeline"]["store"])
    # Every kept event and every count record went through the stream.
    assert report["events"]["published"] + report["events"]["count_records"] == entries


def test_the_demo_exits_1_when_the_pipeline_loses_events():
    # A one-event queue and sampling that keeps everything: events are refused while it is full.
    env = {"WIDELOG_QUEUE_MAX_EVENTS": "1", "WIDELOG_SAMPLING_BASELINE_RATE": "1"}
    result = run("demo", "--requests", "200", "--json", env=env)
    assert 1 == result.returncode, result.stderr
    report = json.loads(result.stdout)
    lost = report["events"]["publish_failed"]
    assert lost > 0
    assert f"the pipeline lost {lost} events" in result.stderr
