"""A SIGKILLed API loses none of the events it answered (issue #10), its broker frozen meanwhile.

While Kafka is SIGSTOPped, librdkafka holds every event the API answers (the Redis publisher its
buffer and the XADD round waiting on a frozen Redis, for up to its 5 s socket timeout): before
the in-flight journal a SIGKILL lost them all. Here the API (`widelog serve`, its own process) is
killed under 16 concurrent clients after the broker was frozen for 4 s, a new one starts on the
same spool directory while the broker is still frozen, then the broker resumes; every answered
request must be stored exactly once, by request id.
"""

from __future__ import annotations

import asyncio
import collections
import signal

import httpx
import pytest

from tests.integration.test_hardening_live import wait_for_no_lag
from tests.integration.test_hung_live import Load
from tests.live import frozen
from tests.pipelines import ApiProcess, Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.mongo]
READY = {"kafka": "assigned partitions", "redis": "worker consuming"}


@pytest.mark.kafka
@pytest.mark.timeout(240)
async def test_a_sigkilled_api_with_kafka_frozen_loses_no_answered_request(kafka_pipeline):
    await sigkill_with_the_broker_frozen(kafka_pipeline, "kafka")


@pytest.mark.redis
@pytest.mark.timeout(240)
async def test_a_sigkilled_api_with_redis_frozen_loses_no_answered_request(redis_pipeline):
    await sigkill_with_the_broker_frozen(redis_pipeline, "redis")


async def sigkill_with_the_broker_frozen(pipeline: Pipeline, broker: str) -> None:
    pipeline.env["WIDELOG_SAMPLING_BASELINE_RATE"] = "1"  # every event kept, so all can be counted
    # librdkafka keeps the events through the freeze instead of failing them into the spool.
    pipeline.env["WIDELOG_KAFKA_MESSAGE_TIMEOUT_MS"] = "30000"
    pipeline.start_worker()
    await pipeline.wait_for_log(0, READY[broker])
    limits = httpx.Limits(max_connections=16)
    killed = ApiProcess(pipeline, name="api-killed")
    restarted: ApiProcess | None = None
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{killed.port}", limits=limits, timeout=30
        ) as client:
            await killed.ready(client)
            load = Load(client, "journal")
            traffic = asyncio.create_task(load.run())
            await asyncio.sleep(2)
            with frozen(broker):
                answered_before_freeze = len(load.answered)
                await asyncio.sleep(4)
                killed.process.send_signal(signal.SIGKILL)
                await asyncio.wait_for(traffic, 60)
                assert -signal.SIGKILL == await asyncio.to_thread(killed.process.wait, 30)
                answered_while_frozen = len(load.answered) - answered_before_freeze
                restarted = ApiProcess(pipeline, name="api-restarted")
                await restarted.ready(client)
                await asyncio.sleep(2)  # the journal taken over, its replay waiting on Kafka
        await pipeline.wait_until_stored(set(load.answered), timeout=120)
        if broker == "kafka":
            await wait_for_no_lag(pipeline)
        restarted.process.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(restarted.process.wait, 30)
        assert returncode in (0, -signal.SIGTERM), restarted.log.read_text()
    finally:
        killed.kill()
        if restarted is not None:
            restarted.kill()
    stored = await pipeline.stored_request_ids()
    ours = collections.Counter({r: n for r, n in stored.items() if r.startswith("journal-")})
    taken_over = next(
        line for line in restarted.log.read_text().splitlines() if "took over" in line
    )
    print(
        f"SIGKILL with {broker} frozen: {len(load.answered)} answered"
        f" ({answered_while_frozen} while frozen), {len(load.failed)} cut off,"
        f" {sum(ours.values())} stored ({len(ours)} request ids); {taken_over}"
    )
    assert answered_while_frozen > 100
    assert set(ours) <= load.attempted
    assert {} == {rid: n for rid, n in ours.items() if n > 1}
    assert set() == set(load.answered) - set(ours)
    journals = pipeline.settings().spool_dir / "journal"
    assert [] == list(journals.iterdir())  # the restarted API's own, deleted at its SIGTERM
