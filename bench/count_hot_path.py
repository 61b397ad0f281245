"""Cost of counting every request before sampling (`RequestCounter.count`), per request.

Two views, in one run, rounds interleaved so machine load hits all alike:

- the call alone: `RequestCounter.count(doc)` timed per call (p50/p99) and per pass (mean), next
  to a bare `dict` increment and the timer's own cost;
- in place: `LoggingService.finalize()` with the default sampling policy (2% of successes kept)
  and a publisher that drops the bytes, counting **on** and **off**. The difference of the two
  means is what counting adds to a request.

Events get a fresh `timestamp` per round, all in one minute, as live traffic would (a new minute
costs one dict lookup more, once a minute).

    .venv/bin/python bench/count_hot_path.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import sys
from collections.abc import Callable
from typing import Any

from sampling_decide import per_call, per_pass
from widelog.events.event import WideEvent
from widelog.events.logging_service import LoggingService
from widelog.sampling.counts import RequestCounter
from widelog.sampling.policy import SamplingPolicy, TailSampler
from widelog.stats import percentile

ROUTES = ("/v1/chat", "/v1/chat", "/v1/chat", "/v1/sessions/{session_id}", "/healthz")


class DroppingPublisher:
    def publish(self, key: str, payload: bytes) -> None:
        return None

    async def flush(self, timeout: float) -> int:
        return 0

    async def close(self) -> None:
        return None


def docs(n: int, at: dt.datetime) -> list[dict[str, Any]]:
    """`n` finished requests: 96% ok, 4% errors, over five routes (a fixed pattern)."""
    result = []
    for i in range(n):
        status = 503 if i % 25 == 0 else 200
        result.append(
            {
                "event_id": f"e{i}",
                "request_id": f"bench-{i}",
                "timestamp": at,
                "http": {"method": "POST", "route": ROUTES[i % len(ROUTES)], "status": status},
                "duration_ms": 40.0 + i % 300,
            }
        )
    return result


def service(*, counting: bool) -> LoggingService:
    return LoggingService(
        publisher=DroppingPublisher(),
        service="bench",
        env="bench",
        version="1",
        instance="bench",
        sampler=TailSampler(SamplingPolicy()),
        count_requests=counting,
    )


def main(n: int, rounds: int) -> None:
    counter = RequestCounter(emitter="bench")
    plain: dict[tuple[str, int], int] = {}

    def dict_increment(doc: dict[str, Any]) -> None:
        key = (doc["http"]["route"], 2)
        plain[key] = plain.get(key, 0) + 1

    def nothing(_: object) -> None:
        return None

    on, off = service(counting=True), service(counting=False)

    def finalizer(svc: LoggingService) -> Callable[[dict[str, Any]], None]:
        def run(doc: dict[str, Any]) -> None:
            # A fresh event per call (finalize() runs once per event), with the request's fields.
            svc.finalize(WideEvent(dict(doc), started_ns=0))

        return run

    cases: dict[str, Callable[[Any], object]] = {
        "RequestCounter.count()": counter.count,
        "dict increment": dict_increment,
        "timer + empty call": nothing,
        "finalize(), counting on": finalizer(on),
        "finalize(), counting off": finalizer(off),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    means: dict[str, list[float]] = {name: [] for name in cases}
    gc.disable()
    try:
        for round_ in range(rounds):
            items = docs(n, dt.datetime.now(dt.UTC))
            order = list(cases.items())
            if round_ % 2:  # alternate the order: no case always runs right after another
                order.reverse()
            for name, fn in order:
                samples[name] += per_call(fn, items)
                means[name].append(per_pass(fn, items))
    finally:
        gc.enable()
    report: dict[str, Any] = {
        name: {
            "p50_us": round(percentile(values, 50), 3),
            "p99_us": round(percentile(values, 99), 3),
            "mean_us": round(min(means[name]), 3),  # best pass: least disturbed by the machine
        }
        for name, values in samples.items()
    }
    report["counting_adds_to_finalize_p50_us"] = round(
        report["finalize(), counting on"]["p50_us"] - report["finalize(), counting off"]["p50_us"],
        3,
    )
    report["counting_adds_to_finalize_mean_us"] = round(
        report["finalize(), counting on"]["mean_us"]
        - report["finalize(), counting off"]["mean_us"],
        3,
    )
    report["events_per_round"] = n
    report["rounds"] = rounds
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    main(args.events, args.rounds)
