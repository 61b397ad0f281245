"""Request latency in the minute after a Kafka outage ends, while the spool is replayed.

The reference chat API (`bench_app.py`, uvicorn, Kafka transport, every event kept) takes
`POST /v1/chat` at a fixed rate, open loop (each request timed from when it was due,
so a stalled server is not offered less load). One run per replay rate, each:

1. baseline: `--baseline` s with no fault (p50 / p99);
2. outage: Kafka stopped (`scripts/services.sh stop kafka`) for `--outage` s: every event goes
   to the spool (rate × outage events, plus Kafka's restart), and `--backlog` more events are
   written to the spool directory, as a longer outage would have left them (a shared 2-core
   machine cannot serve 150 req/s long enough to spool thousands by traffic alone);
3. recovery: Kafka started again; from the moment it answers, `--after` s of requests (p50 /
   p99), while the API replays the spool; and how long until the spool was empty.

It stops and starts Kafka, so it refuses to run on the default ports (other people's services):
start a set of your own (`WIDELOG_SERVICES_*` variables, see docs/services.md) or pass
`--allow-default-services`.

    python bench/replay_recovery.py [--rate 150] [--replay-rates 0,1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx

from bench_common import BENCH, ROOT, Services, free_port, log, stop_process, summary, wait_port
from latency_decoupling import BODY, _wait_http, child_env
from widelog.events.ids import new_event_id
from widelog.pipeline.kafka import ensure_topic
from widelog.pipeline.spool import FileSpool

SCRIPT = ROOT / "scripts" / "services.sh"
WARMUP_S = 30.0
REPLAY_WINDOW_S = 15.0  # the first seconds after the outage, while most of the spool goes out


def kafka(action: str) -> None:
    subprocess.run([str(SCRIPT), action, "kafka"], check=True, timeout=300, capture_output=True)


def metrics(port: int) -> dict[str, float]:
    """The API's own counters (plain text exposition, names without labels only)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


class OpenLoad:
    """Requests due every 1/rate s from `start()`; each latency measured from when it was due."""

    def __init__(self, url: str, rate: float, *, max_in_flight: int = 200) -> None:
        self._url = url
        self._rate = rate
        self._max_in_flight = max_in_flight
        self.samples: list[tuple[float, float]] = []  # (due, latency ms)
        self.failures = 0
        self.shed = 0  # not sent: `max_in_flight` requests were already waiting
        self._stop = asyncio.Event()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            start = time.monotonic()
            i = 0
            while not self._stop.is_set():
                due = start + i / self._rate
                i += 1
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= self._max_in_flight:
                    self.shed += 1
                    continue
                task = asyncio.create_task(self._one(client, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=60)

    async def _one(self, client: httpx.AsyncClient, due: float) -> None:
        try:
            response = await client.post(self._url, json=BODY)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            self.samples.append((due, (time.monotonic() - due) * 1000))
        else:
            self.failures += 1

    def stop(self) -> None:
        self._stop.set()

    def window(self, start: float, end: float) -> list[float]:
        return [ms for due, ms in self.samples if start <= due < end]


async def one_rate(
    services: Services,
    *,
    replay_rate: float,
    rate: float,
    baseline_s: float,
    outage_s: float,
    after_s: float,
    backlog_events: int,
    tmp: Path,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    topic = f"bench-replay-{run_id}"
    env = child_env(
        {
            "BENCH_APP_MODE": "widelog",
            "WIDELOG_TRANSPORT": "kafka",
            "WIDELOG_STORE": "mongo",
            "WIDELOG_MONGO_URL": services.mongo_url(f"bench_replay_{run_id}"),
            "WIDELOG_KAFKA_BOOTSTRAP": services.kafka,
            "WIDELOG_KAFKA_TOPIC": topic,
            "WIDELOG_KAFKA_GROUP": topic,
            "WIDELOG_KAFKA_MESSAGE_TIMEOUT_MS": "3000",
            "WIDELOG_SPOOL_DIR": str(tmp / "spool"),
            "WIDELOG_REPLAY_INTERVAL_S": "1",
            "WIDELOG_REPLAY_RATE": str(replay_rate),
            "WIDELOG_SAMPLING_BASELINE_RATE": "1",  # every request's event crosses the spool
        }
    )
    await asyncio.to_thread(ensure_topic, services.kafka, topic, partitions=6)
    worker, api, port = await asyncio.to_thread(start, env, services.state, f"{replay_rate:g}")
    load = OpenLoad(f"http://127.0.0.1:{port}/v1/chat", rate)
    try:
        await asyncio.to_thread(wait_port, port)
        await asyncio.to_thread(_wait_http, f"http://127.0.0.1:{port}/healthz")
        running = asyncio.create_task(load.run())
        # Warm-up: imports, connections, the producer's id, the worker's group (on a loaded
        # machine the first seconds are far slower than the rest).
        await asyncio.sleep(WARMUP_S)
        baseline_from = time.monotonic()
        await asyncio.sleep(baseline_s)
        outage_from = time.monotonic()
        await asyncio.to_thread(kafka, "stop")
        await asyncio.to_thread(backlog, tmp / "spool", backlog_events)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(kafka, "start")
        outage_to = time.monotonic()
        spooled = metrics(port).get("widelog_events_spooled_total", 0.0)
        drained_after = None
        while time.monotonic() < outage_to + after_s:
            await asyncio.sleep(0.5)
            values = await asyncio.to_thread(metrics, port)
            expected = values.get("widelog_events_spooled_total", 0.0) + backlog_events
            if drained_after is None and values.get("widelog_events_replayed_total", 0) >= expected:
                drained_after = time.monotonic() - outage_to
        load.stop()
        await running
        values = metrics(port)
    finally:
        stop_process(api)
        stop_process(worker)
    row = {
        "replay_rate": replay_rate,
        "baseline": summary(load.window(baseline_from, outage_from)),
        "outage": summary(load.window(outage_from, outage_to)),
        "after": summary(load.window(outage_to, outage_to + after_s)),
        "after_first_15s": summary(load.window(outage_to, outage_to + REPLAY_WINDOW_S)),
        "outage_s": round(outage_to - outage_from, 1),
        "spooled_at_outage_end": int(spooled),
        "spooled": int(values.get("widelog_events_spooled_total", 0)),
        "replayed": int(values.get("widelog_events_replayed_total", 0)),
        "spool_empty_after_s": None if drained_after is None else round(drained_after, 1),
        "failed_requests": load.failures,
        "shed_requests": load.shed,
    }
    log(f"replay rate {replay_rate:g}/s: {json.dumps(row)}")
    return row


def backlog(spool_dir: Path, count: int) -> None:
    """`count` more events in the spool, as a longer outage would have left (a dead process's
    segment: the API's replayer takes it like its own). Each about 1.5 KB, like a chat event."""
    if not count:
        return
    spool = FileSpool(spool_dir, fsync="never")
    pad = "x" * 1200
    for i in range(count):
        event: dict[str, Any] = {
            "event_id": new_event_id(),
            "request_id": f"backlog-{i}",
            "timestamp": "2026-12-02T10:00:00.000Z",
            "http": {"route": "/v1/chat", "method": "POST", "status": 200},
            "llm": {"model": "fake-chat-1", "input_tokens": 12, "output_tokens": 40},
            "note": pad,
        }
        spool.append(f"backlog-{i}", json.dumps(event).encode())
    spool.close()


def start(env: dict[str, str], state: Path, name: str) -> tuple[Popen[bytes], Popen[bytes], int]:
    """A `widelog worker` and the API (uvicorn, not pinned: other benchmarks pin core 0)."""
    logs = state / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "widelog", "worker", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(logs / f"replay-{name}-worker.log").open("w"),
    )
    port = free_port()
    api = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "bench_app:create"),
            *("--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(port)),
            *("--no-access-log", "--log-level", "warning"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(logs / f"replay-{name}-api.log").open("w"),
    )
    return worker, api, port


async def run(
    services: Services,
    *,
    rate: float,
    replay_rates: list[float],
    baseline_s: float,
    outage_s: float,
    after_s: float,
    backlog_events: int,
) -> dict[str, Any]:
    rows = []
    for replay_rate in replay_rates:
        with tempfile.TemporaryDirectory(prefix="wl-replay-") as tmp:
            rows.append(
                await one_rate(
                    services,
                    replay_rate=replay_rate,
                    rate=rate,
                    baseline_s=baseline_s,
                    outage_s=outage_s,
                    after_s=after_s,
                    backlog_events=backlog_events,
                    tmp=Path(tmp),
                )
            )
    return {
        "rate": rate,
        "baseline_s": baseline_s,
        "outage_s": outage_s,
        "after_s": after_s,
        "backlog_events": backlog_events,
        "rows": rows,
    }


def refuse_shared_services(allowed: bool) -> None:
    if not allowed and "WIDELOG_SERVICES_KAFKA_PORT" not in os.environ:
        sys.exit(
            "replay_recovery stops and starts Kafka: run it against services of your own"
            " (WIDELOG_SERVICES_* variables) or pass --allow-default-services"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--replay-rates", default="0,1000", help="WIDELOG_REPLAY_RATE values")
    parser.add_argument("--baseline", type=float, default=60.0)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=60.0)
    parser.add_argument(
        "--backlog",
        type=int,
        default=5000,
        help="events added to the spool during the outage, as a longer one would have left",
    )
    parser.add_argument("--quick", action="store_true", help="20 s windows, 20 s outage")
    parser.add_argument("--allow-default-services", action="store_true")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    refuse_shared_services(args.allow_default_services)
    windows = (20.0, 20.0, 20.0) if args.quick else (args.baseline, args.outage, args.after)
    results = asyncio.run(
        run(
            Services.from_env(),
            rate=args.rate,
            replay_rates=[float(r) for r in args.replay_rates.split(",")],
            baseline_s=windows[0],
            outage_s=windows[1],
            after_s=windows[2],
            backlog_events=args.backlog,
        )
    )
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
