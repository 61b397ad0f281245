"""Item 2, transport cost: CPU the instrumented process spends per event, per transport.

An in-process generator calls `LoggingService.finalize()` with a realistic 20-field event, on a
pipeline built by `widelog.bootstrap.build_pipeline` exactly as the API builds it: Kafka, Redis
Streams, or embedded (whose consumer, writing to FerretDB, runs in this process and is counted).
A null publisher (`none`: sample + encode, then nothing) is the baseline the transports are
compared with, which takes the generator's own loop cost out. Each at the default sampling
policy and keeping everything (`WIDELOG_SAMPLING_BASELINE_RATE=1`):

- burst: N events as fast as the loop can, then until everything left the process;
- steady: R events/s for S seconds, one event per loop iteration, then until delivered.

CPU is the whole process's (`time.process_time()`: every thread, librdkafka's too); the idle CPU
of the same pipeline over the same time is measured first and subtracted for the net per-event
cost, and the steady run's CPU is split by thread (/proc/self/task) to show where it goes.
Only this process is measured, never the broker.

    python bench/transport_cost.py [--rate 1000] [--seconds 10] [--burst 5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench_common import Services, log, threads_cpu_s, threads_wakeups
from publish_hot_path import FIELDS
from widelog.bootstrap import Pipeline, build_pipeline
from widelog.config import Settings
from widelog.incidents.rules import IncidentRules
from widelog.pipeline.kafka import ensure_topic
from widelog.policies import load_sampling_policy

# "embedded (incidents off)": the embedded transport with the incident aggregator off, which
# otherwise runs in this process with it and is most of its cost (see docs/benchmarks.md).
TRANSPORTS = ["none", "kafka", "redis", "embedded", "embedded (incidents off)"]


class NullPublisher:
    """The baseline: everything up to `publish()`, which then does nothing."""

    def publish(self, key: str, payload: bytes) -> None:
        del key, payload

    async def flush(self, timeout: float) -> int:
        del timeout
        return 0

    async def close(self) -> None:
        return None


SAMPLINGS = {"default": {}, "keep all": {"WIDELOG_SAMPLING_BASELINE_RATE": "1"}}


def _settings(services: Services, transport: str, tmp: Path, run_id: str) -> Settings:
    db = f"bench_cost_{run_id}"
    return Settings(
        transport="kafka"
        if transport == "kafka"
        else "redis"
        if transport == "redis"
        else "memory",
        store="mongo",
        mongo_url=services.mongo_url(db),
        kafka_bootstrap=services.kafka,
        kafka_topic=f"bench-cost-{run_id}",
        redis_url=services.redis_url,
        redis_stream=f"bench-cost-{run_id}",
        spool_dir=tmp / "spool",
        sqlite_path=tmp / "events.sqlite3",
        service_name="bench",
        instance="bench",
    )


def _finalize(pipeline: Pipeline, i: int) -> None:
    service = pipeline.logging
    event = service.begin()
    event.update(FIELDS)
    # 2% errors, 1% slow: what the default policy keeps whatever the baseline rate.
    if i % 50 == 0:
        event.error("LLM_TIMEOUT", message="upstream timed out")
        event.set("http.status", 504)
    if i % 100 == 1:
        event.doc["duration_ms"] = 2500.0
    service.finalize(event)


async def _drain(pipeline: Pipeline) -> None:
    if pipeline.queue is not None:
        await pipeline.drained()
    else:
        await pipeline.publisher.flush(30)
        await asyncio.sleep(0.05)  # the last XADD/produce answered


async def _burst(pipeline: Pipeline, events: int) -> float:
    started = time.process_time()
    for i in range(events):
        _finalize(pipeline, i)
        if i % 500 == 499:
            await asyncio.sleep(0)  # the API's loop runs other tasks between requests too
    await _drain(pipeline)
    return time.process_time() - started


async def _steady(
    pipeline: Pipeline, rate: int, seconds: float
) -> tuple[float, dict[str, float], dict[str, int]]:
    """One event every 1/rate s, each in its own loop iteration, as requests end one by one."""
    events = int(rate * seconds)
    wakeups_before = threads_wakeups(os.getpid())
    threads_before = threads_cpu_s(os.getpid())
    started = time.process_time()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(events):
        _finalize(pipeline, i)
        await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - loop.time()))
    await _drain(pipeline)
    used = time.process_time() - started
    threads_after = threads_cpu_s(os.getpid())
    wakeups_after = threads_wakeups(os.getpid())
    by_thread = {
        name: round(threads_after[name] - threads_before.get(name, 0.0), 3)
        for name in threads_after
        if threads_after[name] - threads_before.get(name, 0.0) > 0
    }
    wakeups = {
        name: wakeups_after[name] - wakeups_before.get(name, 0)
        for name in wakeups_after
        if wakeups_after[name] > wakeups_before.get(name, 0)
    }
    return used, by_thread, wakeups


async def _idle(seconds: float) -> float:
    started = time.process_time()
    await asyncio.sleep(seconds)
    return time.process_time() - started


async def one(
    services: Services,
    transport: str,
    sampling: str,
    *,
    rate: int,
    seconds: float,
    burst: int,
    profile: bool = False,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    if transport == "kafka":
        ensure_topic(services.kafka, f"bench-cost-{run_id}", partitions=6)
    with tempfile.TemporaryDirectory(prefix="wl-bench-") as tmp:
        settings = _settings(services, transport, Path(tmp), run_id)
        pipeline = build_pipeline(
            settings,
            sampling=load_sampling_policy(None, SAMPLINGS[sampling]),
            incident_rules=IncidentRules(enabled=False) if "incidents off" in transport else None,
            publisher=NullPublisher() if transport == "none" else None,
        )
        await pipeline.start()
        try:
            await _burst(pipeline, 500)  # warm-up: connections, topic metadata, producer id
            idle = await _idle(min(seconds, 3.0))
            idle_per_s = idle / min(seconds, 3.0)
            burst_cpu = await _burst(pipeline, burst)
            profiler = cProfile.Profile() if profile else None
            if profiler:
                profiler.enable()
            steady_cpu, by_thread, wakeups = await _steady(pipeline, rate, seconds)
            if profiler:
                profiler.disable()
            stats = pipeline.logging.stats
        finally:
            await pipeline.aclose()
    events = int(rate * seconds)
    row: dict[str, Any] = {
        "transport": transport,
        "sampling": sampling,
        "published_share": round(stats.published / max(stats.finalized, 1), 3),
        "idle_cpu_pct": round(100 * idle_per_s, 2),
        "burst_events": burst,
        "burst_us_per_event": round(1e6 * burst_cpu / burst, 1),
        "steady_rate": rate,
        "steady_seconds": seconds,
        "steady_cpu_pct": round(100 * steady_cpu / seconds, 1),
        "steady_us_per_event": round(1e6 * steady_cpu / events, 1),
        "steady_net_us_per_event": round(1e6 * (steady_cpu - idle_per_s * seconds) / events, 1),
        "steady_cpu_by_thread_s": by_thread,
        # Blocking and waking, per event, all threads: the loop's own sleep is ~1 (the `none`
        # row); what a transport adds is its wake-ups (flusher, poll thread, broker thread).
        "steady_wakeups_per_event": round(sum(wakeups.values()) / events, 2),
        "steady_wakeups_by_thread": wakeups,
    }
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        row["profile_top"] = out.getvalue()
    log(
        f"transport {transport:>8} {sampling:>8}: burst {row['burst_us_per_event']} µs/event, "
        f"steady {row['steady_us_per_event']} µs/event ({row['steady_cpu_pct']}% cpu), "
        f"{row['steady_wakeups_per_event']} wake-ups/event, threads {by_thread}"
    )
    await _drop(services, f"bench_cost_{run_id}")
    return row


async def _drop(services: Services, db: str) -> None:
    from pymongo import AsyncMongoClient  # noqa: PLC0415

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(services.mongo_url(db))
    await client.drop_database(db)
    await client.close()


async def run(
    services: Services, *, rate: int, seconds: float, burst: int, profile: bool = False
) -> dict[str, Any]:
    rows = []
    for transport in TRANSPORTS:
        for sampling in SAMPLINGS:
            rows.append(  # noqa: PERF401 - one at a time, on purpose
                await one(
                    services,
                    transport,
                    sampling,
                    rate=rate,
                    seconds=seconds,
                    burst=burst,
                    profile=profile,
                )
            )
    return {"rate": rate, "seconds": seconds, "burst": burst, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--transport", default=",".join(TRANSPORTS))
    parser.add_argument("--sampling", default=",".join(SAMPLINGS))
    parser.add_argument("--profile", action="store_true", help="cProfile the steady run")
    args = parser.parse_args()
    services = Services.from_env()

    async def go() -> list[dict[str, Any]]:
        return [
            await one(
                services,
                t,
                s,
                rate=args.rate,
                seconds=args.seconds,
                burst=args.burst,
                profile=args.profile,
            )
            for t in args.transport.split(",")
            for s in args.sampling.split(",")
        ]

    rows = asyncio.run(go())
    for row in rows:
        print(row.pop("profile_top", ""))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
