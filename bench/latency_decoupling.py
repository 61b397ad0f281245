"""Item 1, the headline: API latency at a fixed request rate while MongoDB writes get slower.

The reference chat API (`bench_app.py`, uvicorn, one worker process pinned to core 0) takes a
fixed rate of `POST /v1/chat` from `oha` (pinned to core 1), in five modes: no wide-event logging,
the synchronous "before" (an awaited `insert_one` per request), and widelog through Kafka, Redis
Streams and the embedded queue. Every write to the store goes through a Toxiproxy proxy in front
of FerretDB whose `latency` toxic adds 0, 50 or 200 ms to each answer: the synchronous insert's,
the `widelog worker`'s (Kafka, Redis) and the in-process consumer's (embedded).

Why `oha -q RATE --latency-correction` and not `wrk`: wrk is closed-loop (a connection sends its
next request only when the last one answered), so a slow server is offered less load and its
queueing delay never shows (coordinated omission). oha paces requests at a fixed rate and, with
latency correction, measures each from when it should have been sent.

    python bench/latency_decoupling.py [--rate 200] [--duration 10] [--latencies 0,50,200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench_common import (
    BENCH,
    ROOT,
    Services,
    Toxiproxy,
    cpu_s,
    free_port,
    log,
    peak_rss_mb,
    stop_process,
    tool,
    wait_port,
)

MODES = ["none", "sync", "kafka", "redis", "embedded"]
LABELS = {
    "none": "(a) no wide-event logging",
    "sync": "(b) synchronous insert_one",
    "kafka": "(c) widelog → Kafka",
    "redis": "(d) widelog → Redis Streams",
    "embedded": "(e) widelog embedded",
}
BODY = {
    "session_id": "bench",
    "message": "How do I reset my password?",
    "language": "en",
    "prompt_version": "v3",
    # Every request asks the fake LLM (20 ms median): business logic, not a cache hit.
    "cache": {"no_cache": True, "no_store": True},
}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIDELOG_") or "SERVICES" in k}
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{BENCH}"
    env.update(extra)
    return env


def oha(url: str, *, rate: int, seconds: float, connections: int) -> dict[str, Any]:
    cmd = [
        "taskset",
        "-c",
        "1",
        tool("oha"),
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        f"{seconds}s",
        "-q",
        str(rate),
        "-c",
        str(connections),
        "--latency-correction",
        "-m",
        "POST",
        "-T",
        "application/json",
        "-d",
        json.dumps(BODY),
        url,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=seconds + 60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def run(
    services: Services,
    toxi: Toxiproxy,
    *,
    rate: int,
    seconds: float,
    warmup_s: float,
    latencies: list[int],
    modes: list[str] = MODES,
) -> dict[str, Any]:
    proxy_port = free_port()
    toxi.proxy("mongo", listen=proxy_port, upstream=services.mongo_port)
    run_id = uuid.uuid4().hex[:8]
    results: dict[str, Any] = {"rate": rate, "seconds": seconds, "latencies_ms": latencies}
    rows: list[dict[str, Any]] = []
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="wl-bench-") as tmp:
            rows += _one_mode(
                services,
                toxi,
                mode,
                tmp=Path(tmp),
                proxy_port=proxy_port,
                run_id=run_id,
                rate=rate,
                seconds=seconds,
                warmup_s=warmup_s,
                latencies=latencies,
            )
    toxi.latency("mongo", 0)
    results["rows"] = rows
    return results


def _one_mode(
    services: Services,
    toxi: Toxiproxy,
    mode: str,
    *,
    tmp: Path,
    proxy_port: int,
    run_id: str,
    rate: int,
    seconds: float,
    warmup_s: float,
    latencies: list[int],
) -> list[dict[str, Any]]:
    db = f"bench_lat_{run_id}_{mode}"
    transport = {"kafka": "kafka", "redis": "redis"}.get(mode, "memory")
    env = child_env(
        {
            "BENCH_APP_MODE": {"none": "none", "sync": "sync"}.get(mode, "widelog"),
            "WIDELOG_TRANSPORT": transport,
            "WIDELOG_STORE": "mongo",
            "WIDELOG_MONGO_URL": services.mongo_url(db, port=proxy_port),
            "WIDELOG_MONGO_TIMEOUT_MS": "5000",
            "WIDELOG_KAFKA_BOOTSTRAP": services.kafka,
            "WIDELOG_KAFKA_TOPIC": f"bench-lat-{run_id}",
            "WIDELOG_KAFKA_GROUP": f"bench-lat-{run_id}",
            "WIDELOG_REDIS_URL": services.redis_url,
            "WIDELOG_REDIS_STREAM": f"bench-lat-{run_id}",
            "WIDELOG_REDIS_GROUP": f"bench-lat-{run_id}",
            "WIDELOG_SPOOL_DIR": str(tmp / "spool"),
            "WIDELOG_SQLITE_PATH": str(tmp / "events.sqlite3"),
            # Keep every event: all of them cross the slow store (the worst case for widelog).
            "WIDELOG_SAMPLING_BASELINE_RATE": "1",
            "WIDELOG_INSTANCE": f"bench-{mode}",
        }
    )
    if transport == "kafka":
        from widelog.pipeline.kafka import ensure_topic  # noqa: PLC0415

        ensure_topic(services.kafka, f"bench-lat-{run_id}", partitions=6)
    logs = services.state / "bench-logs"  # kept after the run, beside the services' own logs
    logs.mkdir(parents=True, exist_ok=True)
    worker = None
    if transport != "memory":
        worker = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                "-m",
                "widelog",
                "worker",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(logs / f"latency-{mode}-worker.log").open("w"),
        )
    port = free_port()
    api = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench_app:create",
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(logs / f"latency-{mode}-api.log").open("w"),
    )
    rows = []
    sent = 0
    try:
        wait_port(port)
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/v1/chat"
        for latency in latencies:
            toxi.latency("mongo", latency)
            warm = oha(url, rate=rate, seconds=warmup_s, connections=64)
            sent += sum(warm.get("statusCodeDistribution", {}).values())
            before = cpu_s(api.pid)
            result = oha(url, rate=rate, seconds=seconds, connections=64)
            used = cpu_s(api.pid) - before
            summary = result["summary"]
            pct = result["latencyPercentiles"]
            done = sum(result.get("statusCodeDistribution", {}).values())
            ok = sum(
                n for code, n in result.get("statusCodeDistribution", {}).items() if code == "200"
            )
            row = {
                "mode": mode,
                "label": LABELS[mode],
                "latency_ms": latency,
                "p50_ms": pct["p50"] * 1000,
                "p99_ms": pct["p99"] * 1000,
                "rps": summary["requestsPerSec"],
                "requests": done,
                "non_200": done - ok,
                "errors": sum(result.get("errorDistribution", {}).values()),
                "cpu_ms_per_req": 1000 * used / max(done, 1),
                "cpu_pct": 100 * used / seconds,
            }
            sent += done
            rows.append(row)
            log(
                f"latency {mode:>8} +{latency:>3} ms: p50 {row['p50_ms']:.1f} p99 "
                f"{row['p99_ms']:.1f} ms, {row['rps']:.0f} req/s, cpu {row['cpu_pct']:.0f}%"
            )
        peak = peak_rss_mb(api.pid)
        for row in rows:
            row["api_peak_rss_mb"] = peak
    finally:
        stop_process(api, 30)
        if worker is not None:
            stop_process(worker, 30)
    rows[-1]["sent_total"] = sent  # every request of the mode, warm-ups included
    rows[-1]["stored_total"] = _stored(services, db)
    return rows


def _stored(services: Services, db: str) -> int:
    from pymongo import MongoClient  # noqa: PLC0415

    client: MongoClient[dict[str, Any]] = MongoClient(services.mongo_url(db))
    try:
        return client[db]["events"].count_documents({})
    finally:
        client.drop_database(db)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--latencies", default="0,50,200")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--toxiproxy-port", type=int, default=38474)
    args = parser.parse_args()
    services = Services.from_env()
    toxi = Toxiproxy(api_port=args.toxiproxy_port)
    try:
        result = run(
            services,
            toxi,
            rate=args.rate,
            seconds=args.duration,
            warmup_s=args.warmup,
            latencies=[int(x) for x in args.latencies.split(",")],
            modes=args.modes.split(","),
        )
    finally:
        toxi.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
