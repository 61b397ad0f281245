"""Item 4, the request path's logging cost, next to what users have today, in one run.

Per event (the same 20 fields), each side set up the way its own documentation recommends:

- stdlib `logging` the cookbook's way: a `QueueHandler` on the request thread (it only copies the
  record into a queue) and a `QueueListener` thread whose handler formats JSON and writes it.
  The earlier version of this benchmark formatted the JSON *in* the `QueueHandler` and threw the
  record away in a `NullHandler`: ~4.7× slower on the request thread than the cookbook setup
  (issue #13), so it flattered widelog; it is still shown, labelled, for comparison.
- structlog, its "Performance" page's production setup: `make_filtering_bound_logger`, cached
  loggers, `JSONRenderer(serializer=orjson.dumps)` into a `BytesLoggerFactory` (to /dev/null).
- widelog `finalize()`: tail sampling (keep all: the worst case; and the default policy) +
  encode + Kafka `produce()`; and "set + finalize" with the 20 `set()` calls. Without the
  redactor, as the others do not scrub secrets either; one more row has it on, as
  `build_pipeline` does by default, to show what the scrub costs.
- the floor: `msgspec.json.encode(doc)` + `produce()` on a producer with widelog's settings.
- the in-flight journal (issue #10): the widelog rows above publish without it; one more row has
  it on, as `build_pipeline` does by default (a copy into an mmap ring before `produce()`, a
  release from the delivery report), so its cost is the difference between the two "keep all"
  rows of the same run.

Two numbers per variant: the time of the call on the request thread (p50/p99, each call timed),
and the whole process's CPU per event (`time.process_time()`, every thread: the listener's
formatting, librdkafka's threads) over rounds that end when everything was written / delivered.
Rounds interleave the variants so machine load hits all alike; the spread is over rounds.
Needs Kafka (`make services`).

    python bench/publish_hot_path.py [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import logging.handlers
import os
import queue
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from confluent_kafka import Producer

from bench_common import Services, log, summary
from widelog.events.logging_service import LoggingService
from widelog.events.redaction import RedactionPolicy, Redactor
from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.journal import InflightJournal
from widelog.pipeline.kafka import KafkaEventPublisher, ensure_topic
from widelog.pipeline.spool import FileSpool
from widelog.policies import load_sampling_policy
from widelog.sampling.policy import TailSampler

if TYPE_CHECKING:
    from collections.abc import Callable

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
    """The cookbook's structured-logging formatter: one JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"message": record.getMessage(), **record.__dict__.get("event", {})})


def _event(i: int) -> dict[str, Any]:
    return {**FIELDS, "request_id": f"req-{i}", "duration_ms": 12.5}


def stdlib_cookbook() -> tuple[Callable[[int], float], Callable[[], None], Callable[[], None]]:
    sink: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    out = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - closed in stop
    out.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(sink, out, respect_handler_level=True)
    logger = logging.getLogger("bench.stdlib.cookbook")
    logger.propagate = False
    logger.addHandler(logging.handlers.QueueHandler(sink))
    logger.setLevel(logging.INFO)
    listener.start()
    timer = time.perf_counter_ns

    def one(i: int) -> float:
        event = _event(i)
        started = timer()
        logger.info("request finished", extra={"event": event})
        return (timer() - started) / 1000

    def finish() -> None:  # wait until the listener wrote everything
        listener.stop()
        listener.start()

    def stop() -> None:
        listener.stop()
        out.stream.close()

    return one, finish, stop


def stdlib_old() -> tuple[Callable[[int], float], Callable[[], None], Callable[[], None]]:
    sink: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(sink)
    handler.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(sink, logging.NullHandler())
    logger = logging.getLogger("bench.stdlib.old")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    listener.start()
    timer = time.perf_counter_ns

    def one(i: int) -> float:
        event = _event(i)
        started = timer()
        logger.info("request finished", extra={"event": event})
        return (timer() - started) / 1000

    def finish() -> None:
        listener.stop()
        listener.start()

    return one, finish, listener.stop


def structlog_side() -> tuple[Callable[[int], float], Callable[[], None], Callable[[], None]]:
    import orjson  # noqa: PLC0415 - the bench extra
    import structlog  # noqa: PLC0415

    sink = open(os.devnull, "wb")  # noqa: SIM115 - closed in stop
    structlog.configure(
        cache_logger_on_first_use=True,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        logger_factory=structlog.BytesLoggerFactory(file=sink),
    )
    logger = structlog.get_logger()
    timer = time.perf_counter_ns

    def one(i: int) -> float:
        event = _event(i)
        started = timer()
        logger.info("request finished", **event)
        return (timer() - started) / 1000

    return one, lambda: None, sink.close


def widelog_side(
    service: LoggingService, publisher: KafkaEventPublisher, *, include_set: bool
) -> tuple[Callable[[int], float], Callable[[], None], Callable[[], None]]:
    timer = time.perf_counter_ns

    def one(i: int) -> float:
        event = service.begin(request_id=f"req-{i}")
        if include_set:
            started = timer()
            event.update(FIELDS)
        else:
            event.update(FIELDS)
            started = timer()
        service.finalize(event)
        return (timer() - started) / 1000

    def finish() -> None:
        asyncio.run(publisher.flush(30))

    return one, finish, lambda: None


def floor_side(
    bootstrap: str, topic: str
) -> tuple[Callable[[int], float], Callable[[], None], Callable[[], None]]:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 50,  # KafkaEventPublisher's default
            "compression.type": "lz4",
        }
    )
    encoder = msgspec.json.Encoder()
    timer = time.perf_counter_ns

    def one(i: int) -> float:
        doc = _event(i)
        started = timer()
        producer.produce(topic, encoder.encode(doc), doc["request_id"])
        elapsed = (timer() - started) / 1000
        if i % 1000 == 0:
            producer.poll(0)
        return elapsed

    def finish() -> None:
        producer.flush(30)

    return one, finish, lambda: None


def run(services: Services, events: int, rounds: int = 5) -> dict[str, Any]:
    topic = "bench-hot-path"
    ensure_topic(services.kafka, topic, partitions=6)
    with tempfile.TemporaryDirectory() as tmp:
        spool = FileSpool(Path(tmp) / "spool")
        publisher = KafkaEventPublisher(
            bootstrap=services.kafka, topic=topic, fallback=SpoolFallback(spool)
        )
        journaled_fallback = SpoolFallback(spool, journal=InflightJournal(Path(tmp) / "journal"))
        journaled = KafkaEventPublisher(
            bootstrap=services.kafka, topic=topic, fallback=journaled_fallback
        )
        services_ = {}
        keep_all = load_sampling_policy(None, {"WIDELOG_SAMPLING_BASELINE_RATE": "1"})
        for name, policy, redactor, via in (
            ("keep all", keep_all, None, publisher),
            ("default", load_sampling_policy(None, {}), None, publisher),
            ("keep all, redacted", keep_all, Redactor(RedactionPolicy()), publisher),
            ("keep all, journaled", keep_all, None, journaled),
        ):
            services_[name] = LoggingService(
                publisher=via,
                service="bench",
                env="bench",
                version="1",
                instance="bench",
                sampler=TailSampler(policy),
                redactor=redactor,
            )
        variants = {
            "stdlib QueueHandler → listener JSON (cookbook)": stdlib_cookbook(),
            "stdlib JSON in QueueHandler (old baseline)": stdlib_old(),
            "structlog JSON, orjson (docs' production setup)": structlog_side(),
            "widelog finalize(), keep all": widelog_side(
                services_["keep all"], publisher, include_set=False
            ),
            "widelog finalize(), default sampling": widelog_side(
                services_["default"], publisher, include_set=False
            ),
            "widelog finalize(), keep all, redaction on (the default)": widelog_side(
                services_["keep all, redacted"], publisher, include_set=False
            ),
            "widelog finalize(), keep all, in-flight journal on (the default)": widelog_side(
                services_["keep all, journaled"], journaled, include_set=False
            ),
            "widelog 20× set() + finalize(), keep all": widelog_side(
                services_["keep all"], publisher, include_set=True
            ),
            "floor: msgspec encode + produce()": floor_side(services.kafka, topic),
        }
        calls: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for one, finish, _ in variants.values():  # warm-up
            for i in range(2000):
                one(i)
            finish()
        chunk = max(1000, events // rounds)
        for _ in range(rounds):
            for name, (one, finish, _) in variants.items():
                gc.collect()
                gc.disable()
                try:
                    started = time.process_time()
                    calls[name] += [one(i) for i in range(chunk)]
                    finish()
                    cpu[name].append(1e6 * (time.process_time() - started) / chunk)
                finally:
                    gc.enable()
        for _, _, stop in variants.values():
            stop()
        asyncio.run(publisher.close())
        asyncio.run(journaled.close())
        journaled_fallback.close()  # the spool, and the journal (empty: every event delivered)
    rows = []
    for name in variants:
        row: dict[str, Any] = {
            "variant": name,
            **summary(calls[name]),
            "cpu_us_per_event": statistics.median(cpu[name]),
        }
        row["cpu_spread_pct"] = round(
            100 * (max(cpu[name]) - min(cpu[name])) / row["cpu_us_per_event"], 1
        )
        rows.append(row)
        log(f"hot path {name}: p50 {row['p50']} µs, cpu {row['cpu_us_per_event']:.1f} µs/event")
    return {"events_per_variant": chunk * rounds, "rounds": rounds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    result = run(Services.from_env(), parser.parse_args().events)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
