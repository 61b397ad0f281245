"""`widelog worker` with `WIDELOG_WORKER_HTTP_PORT`: metrics and probes, read from outside."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.live import free_port, service_down
from tests.pipelines import Pipeline, api, send

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.mongo,
    pytest.mark.faults,
    pytest.mark.timeout(240),
]


@pytest.fixture
async def pipeline(live_services, tmp_path, monkeypatch) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(tmp_path, "kafka")
    pipeline.env["WIDELOG_WORKER_HTTP_PORT"] = str(free_port())
    monkeypatch.setenv("WIDELOG_SAMPLING_BASELINE_RATE", "1")  # the in-process API keeps all
    yield pipeline
    await pipeline.aclose()


async def scrape(probes: httpx.AsyncClient) -> dict[str, float]:
    text = (await probes.get("/metrics")).text
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def lag(values: dict[str, float]) -> float:
    return sum(v for k, v in values.items() if k.startswith("widelog_consumer_lag_messages"))


async def until(check, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.5)


async def test_the_worker_reports_what_it_stored_its_lag_and_its_readiness(pipeline):
    pipeline.start_worker()
    base = f"http://127.0.0.1:{pipeline.env['WIDELOG_WORKER_HTTP_PORT']}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as probes:

        async def answering() -> bool:
            try:
                return (await probes.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await until(answering)
        async with api(pipeline) as (client, _):
            sent, _ = await send(client, "probe", 200)
        await pipeline.wait_until_stored(sent)

        async def drained() -> bool:
            values = await scrape(probes)
            return values.get("widelog_events_stored_total") == 200 and lag(values) == 0

        await until(drained)
        values = await scrape(probes)
        assert 0 == values["widelog_events_dead_lettered_total"]
        assert values["widelog_batches_total"] >= 1
        ready = await probes.get("/readyz")
        assert (200, {"store": "ok", "source": "ok"}) == (ready.status_code, ready.json()["checks"])

        with service_down("ferretdb"):
            down = await probes.get("/readyz")
            assert 503 == down.status_code
            assert down.json()["checks"]["store"].startswith("error:")
            assert 200 == (await probes.get("/healthz")).status_code  # alive, just not ready

        async def ready_again() -> bool:
            return (await probes.get("/readyz")).status_code == 200

        await until(ready_again)
        await pipeline.wait_until_stored(sent)  # and nothing was lost or doubled meanwhile
