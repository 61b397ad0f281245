"""`/v1/infra` through a Kafka outage, from outside: spooling while it lasts, healthy after."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.live import service_down
from tests.pipelines import Pipeline, api, send

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.mongo,
    pytest.mark.faults,
    pytest.mark.timeout(240),
]


async def test_infra_says_spooling_while_kafka_is_down_then_healthy_with_lag_drained(
    live_services, tmp_path, monkeypatch
):
    pipeline = Pipeline(tmp_path, "kafka")
    monkeypatch.setenv("WIDELOG_SAMPLING_BASELINE_RATE", "1")  # the in-process API keeps all
    try:
        pipeline.start_worker()
        await pipeline.wait_for_log(0, "worker consuming")
        async with api(pipeline) as (client, _):
            before, _ = await send(client, "before", 50)
            await pipeline.wait_until_stored(before)
            assert "healthy" == (await client.get("/v1/infra")).json()["state"]

            with service_down("kafka"):
                during: set[str] = set()
                spool_sizes: list[int] = []
                deadline = time.monotonic() + 60
                state = "healthy"
                while state != "spooling" or len(spool_sizes) < 3:
                    assert time.monotonic() < deadline, "never reported spooling"
                    sent, _ = await send(client, f"during-{len(during)}", 20)
                    during |= sent
                    infra = (await client.get("/v1/infra")).json()
                    state = infra["state"]
                    if state == "spooling":
                        spool_sizes.append(infra["spool"]["bytes"])
                assert spool_sizes == sorted(spool_sizes)
                assert spool_sizes[-1] > spool_sizes[0]  # it grows while the outage lasts
                assert any("kafka unreachable" in p for p in infra["problems"])

            deadline = time.monotonic() + 120
            while True:
                infra = (await client.get("/v1/infra")).json()
                if infra["state"] == "healthy" and (infra["lag"] or {}).get("total") == 0:
                    break
                assert time.monotonic() < deadline, f"never recovered: {infra}"
                await asyncio.sleep(1)
            assert 0 == infra["spool"]["segments"]
        await pipeline.wait_until_stored(before | during)
    finally:
        await pipeline.aclose()
