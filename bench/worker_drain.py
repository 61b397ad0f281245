"""Item 3, the worker against the ceiling: how fast `widelog worker` drains a backlog to the store.

A topic (Kafka, 6 partitions) or stream (Redis) is pre-filled with N realistic events, then 1 or 2
`widelog worker` subprocesses start and drain it into FerretDB; the drain is timed from the first
stored document to the last (so start-up and group join are not counted), the count read with
the workers' own `widelog_events_stored` counters (their metrics port) every 0.25 s, and checked
with `count_documents` at the end: counting in FerretDB while it drains would load the server
being measured (its SQLite backend reads every document to count). The same run measures the
store's own ceiling: a plain PyMongo `insert_many(ordered=False)` of the same documents (already
decoded) in the same batch size, one connection, one batch after another. CPU of the workers
and of FerretDB comes from /proc; the workers' peak RSS is VmHWM.

    python bench/worker_drain.py [--events 20000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from pymongo import MongoClient

from bench_common import Services, cpu_s, free_port, log, peak_rss_mb, stop_process
from latency_decoupling import child_env
from publish_hot_path import FIELDS
from widelog.events.logging_service import LoggingService
from widelog.pipeline.mongo_store import MongoEventStore, _to_document
from widelog.policies import load_sampling_policy
from widelog.sampling.policy import TailSampler

if TYPE_CHECKING:
    from collections.abc import Callable


class _Capture:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def publish(self, key: str, payload: bytes) -> None:
        self.records.append((key, payload))

    async def flush(self, timeout: float) -> int:
        del timeout
        return 0

    async def close(self) -> None:
        return None


def realistic_records(count: int) -> list[tuple[str, bytes]]:
    """(key, payload) as the API publishes them: 20 fields, 2% errors, 1% slow, all kept."""
    capture = _Capture()
    service = LoggingService(
        publisher=capture,
        service="chat-api",
        env="bench",
        version="1",
        instance="bench",
        sampler=TailSampler(load_sampling_policy(None, {"WIDELOG_SAMPLING_BASELINE_RATE": "1"})),
    )
    for i in range(count):
        event = service.begin()
        event.update(FIELDS)
        if i % 50 == 0:
            event.error("LLM_TIMEOUT", message="upstream timed out")
            event.set("http.status", 504)
        if i % 100 == 1:
            event.doc["duration_ms"] = 2500.0
        service.finalize(event)
    return capture.records


def _prefill(
    services: Services, transport: str, name: str, records: list[tuple[str, bytes]]
) -> None:
    if transport == "kafka":
        from confluent_kafka import Producer  # noqa: PLC0415

        from widelog.pipeline.kafka import ensure_topic  # noqa: PLC0415

        ensure_topic(services.kafka, name, partitions=6)
        producer = Producer({"bootstrap.servers": services.kafka, "linger.ms": 20})
        for key, payload in records:
            producer.produce(name, payload, key)
            producer.poll(0)
        if producer.flush(60):
            raise RuntimeError("pre-fill not delivered")
    else:
        import redis  # noqa: PLC0415

        client = redis.Redis(port=services.redis_port)
        for start in range(0, len(records), 1000):
            pipe = client.pipeline(transaction=False)
            for key, payload in records[start : start + 1000]:
                pipe.xadd(name, {b"k": key, b"v": payload})
            pipe.execute()
        client.close()


def _metrics(port: int) -> tuple[int, float, float]:
    """A worker's events stored (first time + duplicates), batches, and seconds in batches."""
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0, 0.0, 0.0
    stored = batches = seconds = 0.0
    for line in text.splitlines():
        if line.startswith(("widelog_events_stored_total", "widelog_events_duplicates_total")):
            stored += float(line.split()[-1])
        elif line.startswith("widelog_batch_duration_seconds_count"):
            batches += float(line.split()[-1])
        elif line.startswith("widelog_batch_duration_seconds_sum"):
            seconds += float(line.split()[-1])
    return int(stored), batches, seconds


def ms_per_batch(samples: list[tuple[int, float, float]], parts: int = 4) -> list[float]:
    """Mean ms per batch in each of `parts` equal shares of the events drained (flat = good)."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return []
    first, last = samples[0][0], samples[-1][0]
    marks = [first + (last - first) * i / parts for i in range(parts + 1)]

    def nearest(mark: float) -> tuple[int, float, float]:
        return min(samples, key=lambda sample: abs(sample[0] - mark))

    picked = [nearest(m) for m in marks]
    result = []
    for a, b in itertools.pairwise(picked):
        n = b[1] - a[1]
        result.append(round((b[2] - a[2]) / n * 1000, 1) if n > 0 else 0.0)
    return result


def ceiling(
    services: Services, records: list[tuple[str, bytes]], batch: int, *, indexes: bool = True
) -> dict[str, Any]:
    """`insert_many(ordered=False)` batches, one connection; with the store's own indexes."""
    db = f"bench_ceiling_{uuid.uuid4().hex[:8]}"
    docs = [_to_document(msgspec.json.decode(payload)) for _, payload in records]
    if indexes:
        store = MongoEventStore(services.mongo_url(db), timeout_ms=5000)
        asyncio.run(store.ensure_indexes())
    client: MongoClient[dict[str, Any]] = MongoClient(services.mongo_url(db), tz_aware=True)
    events = client[db]["events"]
    events.insert_one({"_id": "warm-up", "event_id": "warm-up"})
    ferret = services.pid("ferretdb")
    ferret_before = cpu_s(ferret) if ferret else 0.0
    cpu_before = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(docs), batch):
        events.insert_many(docs[start : start + batch], ordered=False)
    elapsed = time.perf_counter() - started
    row = {
        "events_per_s": len(docs) / elapsed,
        "client_cpu_s": time.process_time() - cpu_before,
        "ferretdb_cpu_s": (cpu_s(ferret) - ferret_before) if ferret else None,
        "seconds": elapsed,
    }
    client.drop_database(db)
    client.close()
    return row


def drain(
    services: Services,
    records: list[tuple[str, bytes]],
    *,
    transport: str,
    workers: int,
    batch: int,
    incidents: bool,
    timeout: float = 180.0,
    prepare: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One drain; `prepare(database)` runs before the workers start (e.g. to seed a history)."""
    run_id = uuid.uuid4().hex[:8]
    name, db = f"bench-drain-{run_id}", f"bench_drain_{run_id}"
    _prefill(services, transport, name, records)
    if prepare is not None:
        prepare(services.mongo_url(db))
    client: MongoClient[dict[str, Any]] = MongoClient(services.mongo_url(db))
    collection = client[db]["events"]
    with tempfile.TemporaryDirectory(prefix="wl-bench-") as tmp:
        env = child_env(
            {
                "WIDELOG_TRANSPORT": transport,
                "WIDELOG_STORE": "mongo",
                "WIDELOG_MONGO_URL": services.mongo_url(db),
                "WIDELOG_KAFKA_BOOTSTRAP": services.kafka,
                "WIDELOG_KAFKA_TOPIC": name,
                "WIDELOG_KAFKA_GROUP": name,
                "WIDELOG_REDIS_URL": services.redis_url,
                "WIDELOG_REDIS_STREAM": name,
                "WIDELOG_REDIS_GROUP": name,
                "WIDELOG_BATCH_SIZE": str(batch),
                "WIDELOG_INCIDENTS_ENABLED": "true" if incidents else "false",
                "WIDELOG_SPOOL_DIR": str(Path(tmp) / "spool"),
            }
        )
        ports = [free_port() for _ in range(workers)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "widelog", "worker", "--log-level", "warning"],
                env={**env, "WIDELOG_WORKER_HTTP_PORT": str(ports[i])},
                stdout=subprocess.DEVNULL,
                stderr=(Path(tmp) / f"worker{i}.log").open("w"),
            )
            for i in range(workers)
        ]
        ferret = services.pid("ferretdb")
        deadline = time.monotonic() + timeout
        first_at = first_count = None
        cpu_first: list[float] = []
        ferret_first = 0.0
        done = 0
        samples: list[tuple[int, float, float]] = []
        try:
            while time.monotonic() < deadline:
                readings = [_metrics(port) for port in ports]
                done = sum(r[0] for r in readings)
                samples.append((done, sum(r[1] for r in readings), sum(r[2] for r in readings)))
                now = time.perf_counter()
                if first_at is None and done:
                    first_at, first_count = now, done
                    cpu_first = [cpu_s(p.pid) for p in procs]
                    ferret_first = cpu_s(ferret) if ferret else 0.0
                if done >= len(records):
                    break
                time.sleep(0.25)
            finished_at = time.perf_counter()
            worker_cpu = sum(cpu_s(p.pid) for p in procs) - sum(cpu_first)
            ferret_cpu = (cpu_s(ferret) - ferret_first) if ferret else None
            rss = [peak_rss_mb(p.pid) for p in procs]
            done = collection.count_documents({})
        finally:
            for proc in procs:
                stop_process(proc, 30)
    client.drop_database(db)
    client.close()
    if transport == "redis":
        import redis  # noqa: PLC0415

        r = redis.Redis(port=services.redis_port)
        r.delete(name)
        r.close()
    elapsed = finished_at - (first_at or finished_at)
    drained = done - (first_count or 0)
    return {
        "transport": transport,
        "workers": workers,
        "batch": batch,
        "incidents": incidents,
        "stored": done,
        "complete": done >= len(records),
        "events_per_s": drained / elapsed if elapsed > 0 else 0.0,
        "worker_cpu_s": worker_cpu,
        "ferretdb_cpu_s": ferret_cpu,
        "seconds": elapsed,
        "worker_peak_rss_mb": max(rss),
        "ms_per_batch": ms_per_batch([s for s in samples if s[0]]),
    }


def run(services: Services, *, events: int, quick: bool) -> dict[str, Any]:
    records = realistic_records(events)
    batches = [100, 1000]
    ceilings = {b: ceiling(services, records, b) for b in batches}
    bare = ceiling(services, records, 1000, indexes=False)
    for b, c in ceilings.items():
        log(f"ceiling batch {b}: {c['events_per_s']:.0f} events/s")
    rows = []
    matrix = [
        (t, w, b, inc)
        for t in ("kafka", "redis")
        for w in (1, 2)
        for b in batches
        for inc in (True, False)
        if not quick or inc or (w == 1 and b == 1000)
    ]
    for transport, workers, batch, incidents in matrix:
        row = drain(
            services,
            records,
            transport=transport,
            workers=workers,
            batch=batch,
            incidents=incidents,
        )
        row["vs_ceiling"] = row["events_per_s"] / ceilings[batch]["events_per_s"]
        rows.append(row)
        log(
            f"drain {transport} x{workers} batch {batch} incidents {incidents}: "
            f"{row['events_per_s']:.0f} ev/s ({row['vs_ceiling']:.2f}x ceiling), "
            f"worker cpu {row['worker_cpu_s']:.1f}s ferretdb {row['ferretdb_cpu_s']}"
        )
    return {
        "events": events,
        "ceiling": {str(b): c for b, c in ceilings.items()},
        "ceiling_no_indexes_1000": bare,
        "rows": rows,
        "payload_bytes_avg": sum(len(p) for _, p in records) / len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(Services.from_env(), events=args.events, quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
