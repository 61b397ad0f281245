"""`/metrics` after a known sequence of requests: every value is the one the sequence implies."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import KEEP_ALL
from widelog.chat.api import create_app
from widelog.chat.bootstrap import build
from widelog.config import Settings


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


async def test_metrics_count_requests_sampling_storage_and_cache_outcomes(tmp_path):
    settings = Settings(
        sqlite_path=tmp_path / "e.sqlite3", fake_llm_latency_ms=0, flush_interval_s=0.05
    )
    container = build(settings, sampling=KEEP_ALL)
    await container.start()
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for i, message in enumerate(("one", "two", "one")):  # the second "one": from the cache
            body = {"session_id": f"s{i}", "message": message}
            assert 200 == (await client.post("/v1/chat", json=body)).status_code
        assert 422 == (await client.post("/v1/chat", json={"message": ""})).status_code
        assert container.pipeline.queue is not None
        container.pipeline.queue.queue.put_nowait(b"{not json")  # a poison message: a fault
        await container.drained()
        response = await client.get("/metrics")
    await container.aclose()

    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    expected = {
        ("widelog_events_finalized_total", ()): 4,
        ("widelog_events_errors_total", ()): 1,
        ("widelog_events_sampled_out_total", ()): 0,
        ("widelog_events_published_total", ()): 4,
        ("widelog_events_kept_total", (("reason", "baseline"),)): 3,
        ("widelog_events_kept_total", (("reason", "error"),)): 1,
        ("widelog_sampling_retention_ratio", (("reason", "all"),)): 1.0,
        ("widelog_sampling_retention_ratio", (("reason", "error"),)): 0.25,
        ("widelog_events_stored_total", ()): 4,
        ("widelog_events_duplicates_total", ()): 0,
        ("widelog_events_dead_lettered_total", ()): 1,
        ("widelog_queue_depth_events", ()): 0,
        ("widelog_cache_lookups_total", (("cache", "semantic"), ("result", "hit"))): 1,
        ("widelog_cache_lookups_total", (("cache", "semantic"), ("result", "miss"))): 2,
    }
    assert expected == {key: values.get(key) for key in expected}
    batches = values[("widelog_batches_total", ())]
    assert batches >= 1
    assert batches == values[("widelog_batch_size_events_count", ())]
    assert 5 == values[("widelog_batch_size_events_sum", ())]  # every message, in batches
    assert 4 == values[("widelog_request_duration_seconds_count", ())]
    assert 4 == values[("widelog_request_duration_seconds_bucket", (("le", "+Inf"),))]
    assert values[("widelog_batch_duration_seconds_sum", ())] > 0
    lookups = values[("widelog_cache_lookup_duration_seconds_count", (("cache", "semantic"),))]
    assert 3 == lookups  # one per answered chat (the invalid request never looked)
