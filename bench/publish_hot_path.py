"""The request path's logging cost: `finalize()` (sample + encode + Kafka `produce()`) per event,
next to stdlib `logging` through a `QueueHandler` with a JSON formatter, in the same run.

Both sides log the same 20-field event. The widelog side is measured twice: `finalize()` alone
(fields were made storage-safe when the handler set them) and "set + finalize" (the 20 `set()`
calls included). Sampling keeps everything here (rate 1), the worst case: with the default policy
most events stop at the sampler and cost less. Needs the Kafka broker (`make services`).

    .venv/bin/python bench/publish_hot_path.py [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import logging.handlers
import queue
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from widelog.events.logging_service import LoggingService
from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.kafka import KafkaEventPublisher, ensure_topic
from widelog.pipeline.spool import FileSpool
from widelog.policies import load_sampling_policy
from widelog.sampling.policy import TailSampler
from widelog.stats import percentile

FIELDS: dict[str, Any] = {
    "http.method": "POST",
    "http.route": "/v1/chat",
    "http.status": 200,
    "session_id": "s-1234",
    "user_id": "u-42",
    "llm.provider": "openai-compatible",
    "llm.model": "gpt-4o-mini",
    "llm.prompt_version": "v3",
    "llm.language": "ko",
    "llm.input_tokens": 512,
    "llm.output_tokens": 128,
    "llm.latency_ms": 812.5,
    "cache.session": "hit",
    "cache.semantic": "miss",
    "chat.message_chars": 240,
    "chat.stream": False,
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "span_id": "00f067aa0ba902b7",
    "feature.flag": "new-prompt",
    "tenant": "acme",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"message": record.getMessage(), **record.__dict__.get("event", {})})


def stdlib_side(events: int) -> list[float]:
    sink: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(sink)
    handler.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(sink, logging.NullHandler())
    logger = logging.getLogger("bench.stdlib")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    listener.start()
    samples = []
    timer = time.perf_counter_ns
    try:
        for i in range(events):
            event = {**FIELDS, "request_id": f"req-{i}", "duration_ms": 12.5}
            started = timer()
            logger.info("request finished", extra={"event": event})
            samples.append((timer() - started) / 1000)
    finally:
        listener.stop()
    return samples


def widelog_side(service: LoggingService, events: int, *, include_set: bool) -> list[float]:
    samples = []
    timer = time.perf_counter_ns
    for i in range(events):
        event = service.begin(request_id=f"req-{i}")
        if include_set:
            started = timer()
            event.update(FIELDS)
        else:
            event.update(FIELDS)
            started = timer()
        service.finalize(event)
        samples.append((timer() - started) / 1000)
    return samples


def durability_lag(topic: str, events: int) -> list[float]:
    """ms from `produce()` to the acks=all delivery report: how long an event lives only in
    librdkafka's memory, i.e. what a process crash can lose (the publisher's own settings)."""
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:9092",
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    producer.produce(topic, b"{}", "warm-up")  # the idempotent producer first gets its id
    producer.flush(30)
    lags: list[float] = []
    for i in range(events):
        produced = time.perf_counter()

        def on_delivery(err: object, _msg: object, produced: float = produced) -> None:
            if err is None:
                lags.append((time.perf_counter() - produced) * 1000)

        producer.produce(topic, b'{"event_id": "lag"}', f"lag-{i}", on_delivery=on_delivery)
        producer.poll(0)
        if i % 10 == 9:
            time.sleep(0.001)  # a steady request rate, not one burst
    producer.flush(30)
    return lags


async def main(events: int) -> None:
    topic = "bench-log-events"
    ensure_topic("127.0.0.1:9092", topic, partitions=6)
    with tempfile.TemporaryDirectory() as tmp:
        spool = FileSpool(Path(tmp) / "spool")
        publisher = KafkaEventPublisher(
            bootstrap="127.0.0.1:9092", topic=topic, fallback=SpoolFallback(spool)
        )
        keep_all = load_sampling_policy(None, {"WIDELOG_SAMPLING_BASELINE_RATE": "1"})
        service = LoggingService(
            publisher=publisher,
            service="bench",
            env="bench",
            version="1",
            instance="bench",
            sampler=TailSampler(keep_all),
        )
        results: dict[str, list[float]] = {
            "stdlib QueueHandler + JSON": [],
            "widelog finalize()": [],
            "widelog set x20 + finalize()": [],
        }
        widelog_side(service, 2000, include_set=False)  # warm-up
        stdlib_side(2000)
        gc.collect()
        for _ in range(5):  # interleave rounds so both sides see the same machine state
            chunk = events // 5
            results["stdlib QueueHandler + JSON"] += stdlib_side(chunk)
            results["widelog finalize()"] += widelog_side(service, chunk, include_set=False)
            results["widelog set x20 + finalize()"] += widelog_side(
                service, chunk, include_set=True
            )
            await publisher.flush(30)
        await publisher.close()
        spool.close()
        delivered, spooled = publisher.delivered, service.stats.publish_failed
    baseline = percentile(results["stdlib QueueHandler + JSON"], 50)
    print(f"{events} events per variant, µs per event (Kafka delivered {delivered}, ", end="")
    print(f"spooled {spooled})\n")
    print(f"{'variant':<30} {'p50':>7} {'p99':>7} {'p50 vs stdlib':>14}")
    for name, values in results.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{name:<30} {p50:7.2f} {p99:7.2f} {p50 / baseline:13.2f}x")
    lags = durability_lag(topic, 5000)
    print(f"\nproduce() → acks=all delivery report: p50 {percentile(lags, 50):.1f} ms,", end="")
    print(f" p99 {percentile(lags, 99):.1f} ms, max {max(lags):.1f} ms ({len(lags)} events)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    asyncio.run(main(parser.parse_args().events))
