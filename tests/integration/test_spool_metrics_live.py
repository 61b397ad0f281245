"""A full spool shows in `/metrics` and `/v1/infra`: drops by kind, and the errors-only state."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest

from tests.fakes import KEEP_ALL
from tests.integration.test_metrics import samples
from tests.live import KAFKA, unique
from widelog.admin.infra import infra_snapshot
from widelog.admin.metrics import PipelineCollector, registry_for
from widelog.bootstrap import build_pipeline
from widelog.config import Settings
from widelog.incidents.rules import IncidentRules

pytestmark = [pytest.mark.kafka]


async def test_dropped_events_are_counted_in_metrics_and_reported_by_infra(live_services, tmp_path):
    settings = Settings(
        transport="kafka",
        kafka_bootstrap=KAFKA,
        kafka_topic=unique("spool-metrics"),
        spool_dir=tmp_path / "spool",
        spool_max_bytes=1 << 20,
        sqlite_path=tmp_path / "e.sqlite3",
    )
    pipeline = build_pipeline(settings, sampling=KEEP_ALL, incident_rules=IncidentRules())
    assert pipeline.fallback is not None
    try:
        pad = "x" * 2000
        for i in range(600):  # 1.2 MB of ordinary events: the last ones find the spool full
            payload = json.dumps({"request_id": f"r{i}", "http": {"status": 200}, "pad": pad})
            pipeline.fallback.spill(f"r{i}", payload.encode(), "test")
        failed = json.dumps({"request_id": "e", "http": {"status": 502}, "pad": pad}).encode()
        pipeline.fallback.spill("e", failed, "test")
        values = samples(generate_latest(registry_for(PipelineCollector(pipeline))).decode())
        dropped = values[("widelog_spool_dropped_total", (("kind", "other"),))]
        assert dropped == 600 - pipeline.fallback.spooled + 1
        assert dropped > 0
        assert 0 == values[("widelog_spool_dropped_total", (("kind", "error"),))]
        assert 0 == values[("widelog_kafka_producers_replaced_total", ())]
        report = await infra_snapshot(pipeline)
        assert {"error": 0, "other": dropped} == report["spool"]["dropped"]
        assert any("only errors are spooled" in p for p in report["problems"])
    finally:
        await pipeline.aclose()
