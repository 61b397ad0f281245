"""Item 5, storage: bytes stored per 100,000 requests of the reference mix, sampling on and off.

The events are the reference chat app's own: `widelog.chat.demo.synthetic_requests` (chats,
repeats, slow answers, LLM errors, invalid and oversized requests) sent in-process through the
instrumented app, each event captured unsampled. They are then repeated with fresh event and
request ids up to the target count (so the sampler, which hashes the request id, decides anew)
and sampled by the real `TailSampler` with the default policy ("on") or keeping all ("off"),
exactly as `finalize()` does. The kept events are written by widelog's own stores to FerretDB
(`collStats` size / storageSize / totalIndexSize) and to SQLite (file size after a checkpoint);
errors kept is checked against errors sent (error retention).

    python bench/storage.py [--requests 100000] [--distinct 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench_common import Services, log
from widelog.chat.api import create_app
from widelog.chat.bootstrap import build
from widelog.chat.demo import synthetic_requests
from widelog.config import Settings
from widelog.events.event import encode, is_error
from widelog.events.ids import new_event_id
from widelog.pipeline.mongo_store import MongoEventStore
from widelog.pipeline.sqlite_store import SQLiteEventStore
from widelog.policies import load_sampling_policy
from widelog.sampling.counts import is_count_record
from widelog.sampling.policy import TailSampler
from worker_drain import _Capture


async def captured_events(distinct: int, tmp: Path) -> list[dict[str, Any]]:
    settings = Settings(sqlite_path=tmp / "unused.sqlite3", fake_llm_latency_ms=2.0)
    container = build(settings)
    capture = _Capture()
    container.pipeline.logging.publisher = capture
    container.pipeline.logging.sampler = None  # every event, undecided
    app = create_app(container)
    pending = iter(synthetic_requests(distinct))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _, body in pending:
            await client.post("/v1/chat", json=body)

    await container.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            await asyncio.gather(*(client_loop(client) for _ in range(64)))
    finally:
        await container.aclose()
    decoded = [msgspec.json.decode(payload) for _, payload in capture.records]
    return [doc for doc in decoded if not is_count_record(doc)]  # the API's count records too


def sampled(events: list[dict[str, Any]], total: int, environ: dict[str, str]) -> list[bytes]:
    sampler = TailSampler(load_sampling_policy(None, environ))
    kept = []
    for i in range(total):
        doc = dict(events[i % len(events)])
        doc["event_id"] = new_event_id()
        doc["request_id"] = doc["event_id"] if i >= len(events) else doc["request_id"]
        doc.pop("sampling", None)
        decision = sampler.decide(doc)
        if decision.keep:
            sampler.apply(doc, decision)
            kept.append(encode(doc, max_bytes=64 * 1024))
    return kept


def _file_bytes(folder: Path, prefix: str) -> int:
    """The database file and its WAL / shared-memory files, if any are left."""
    return sum(f.stat().st_size for f in folder.glob(f"{prefix}*") if f.is_file())


async def store_sizes(services: Services, payloads: list[bytes], tmp: Path) -> dict[str, Any]:
    docs = [msgspec.json.decode(p) for p in payloads]
    db = f"bench_storage_{uuid.uuid4().hex[:8]}"
    mongo = MongoEventStore(services.mongo_url(db), timeout_ms=5000)
    sqlite_path = tmp / f"{db}.sqlite3"
    sqlite = SQLiteEventStore(sqlite_path, retention_days=0)
    try:
        for start in range(0, len(docs), 1000):
            await mongo.write_batch(docs[start : start + 1000])
            await sqlite.write_batch(docs[start : start + 1000])
        database = mongo._client[db]
        stats = await database.command("collStats", "events")
        db_stats = await database.command("dbStats")
    finally:
        await mongo._client.drop_database(db)
        await mongo.close()
        await sqlite.close()
    return {
        "stored": len(docs),
        "errors_stored": sum(1 for d in docs if is_error(d)),
        "payload_bytes": sum(len(p) for p in payloads),
        "ferretdb_size": stats.get("size"),
        "ferretdb_storage_size": stats.get("storageSize"),
        "ferretdb_index_size": stats.get("totalIndexSize"),
        "ferretdb_db_storage_size": db_stats.get("storageSize"),
        "sqlite_file_bytes": _file_bytes(tmp, f"{db}.sqlite3"),
    }


async def run(services: Services, *, requests: int, distinct: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        events = await captured_events(distinct, tmp)
        errors_sent = sum(1 for i in range(requests) if is_error(events[i % len(events)]))
        rows = []
        for label, environ in (
            ("sampling on (default policy)", {}),
            ("sampling off (keep all)", {"WIDELOG_SAMPLING_BASELINE_RATE": "1"}),
        ):
            payloads = sampled(events, requests, environ)
            row = {"sampling": label, **await store_sizes(services, payloads, tmp)}
            row["error_retention"] = row["errors_stored"] / max(errors_sent, 1)
            rows.append(row)
            log(f"storage {label}: {row}")
    scale = 100_000 / requests
    for row in rows:
        row["per_100k"] = {
            k: round(row[k] * scale)
            for k in (
                "stored",
                "payload_bytes",
                "ferretdb_size",
                "ferretdb_storage_size",
                "ferretdb_index_size",
                "sqlite_file_bytes",
            )
            if isinstance(row.get(k), int | float)
        }
    return {"requests": requests, "distinct": distinct, "errors_sent": errors_sent, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(run(Services.from_env(), requests=args.requests, distinct=args.distinct))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
