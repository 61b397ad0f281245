"""The producer: never blocks the request path; what the broker does not take goes to the spool.

What an event costs the API process at a steady rate is mostly per batch, not per event (issue
#13): librdkafka's broker thread wakes per produce request (one per partition batch, so every
`linger.ms` per partition in use), and each batch's delivery reports woke the poll thread and
took the GIL from the request path. So:

- `linger.ms` is 50 ms by default, librdkafka's own advice for a producer that is not latency
  bound ("the single most important configuration property for performance tuning", its
  INTRODUCTION.md): at 1,000 events/s over 6 partitions a produce request carries ~8 events
  instead of ~1. The price is up to 50 ms more before the broker has an event, and 50 ms more
  events in librdkafka's memory, each journaled meanwhile (`fallback.hold()`): a SIGKILL does not
  lose them.
- the poll thread serves delivery reports every `poll_interval_s` (100 ms) rather than whenever
  one is ready: one wake-up and one GIL hand-over per interval. Reports wait in librdkafka's
  queue meanwhile; none is skipped, a failed delivery is spooled at most that much later.
- one producer-wide delivery callback, cheap on success: no bound method made per `produce()`,
  the key decoded only for a log line that is on, or to spool a failure.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer

from widelog.pipeline.kafka._logs import librdkafka_log
from widelog.pipeline.replayer import Delivery

if TYPE_CHECKING:
    from collections.abc import Sequence

    from confluent_kafka import Message as KafkaMessage

    from widelog.pipeline.fallback import SpoolFallback

log = logging.getLogger("widelog.kafka")

# The broker (or librdkafka, for its own size limit) refuses these records whatever the retry.
_TOO_LARGE: Final = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)
_REFUSED_FOR_GOOD: Final = _TOO_LARGE | {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.INVALID_RECORD,
    KafkaError.POLICY_VIOLATION,
}
# A producer ended by a fatal error is replaced after this backoff, doubling while the new ones
# fail too (a misconfigured cluster must not make a tight loop of it), reset by a replay.
RECREATE_BACKOFF_S: Final = 1.0
RECREATE_BACKOFF_MAX_S: Final = 60.0


class KafkaEventPublisher:
    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        fallback: SpoolFallback,
        acks: str = "all",
        idempotence: bool = True,
        retries: int = 3,
        retry_backoff_ms: int = 100,
        message_timeout_ms: int = 10_000,
        linger_ms: int = 50,
        queue_max_messages: int = 100_000,
        config: dict[str, Any] | None = None,
        recreate_backoff_s: float = RECREATE_BACKOFF_S,
        poll_interval_s: float = 0.1,
    ) -> None:
        self.topic = topic
        self._fallback = fallback
        self._broker_down = False
        self._config = {
            "bootstrap.servers": bootstrap,
            "acks": acks,
            "enable.idempotence": idempotence,
            "message.send.max.retries": retries,
            "retry.backoff.ms": retry_backoff_ms,
            "message.timeout.ms": message_timeout_ms,
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": queue_max_messages,
            "compression.type": "lz4",
            "on_delivery": self._on_delivery,  # every message's, unless produce() passes its own
            "error_cb": self._on_error,
            "logger": librdkafka_log,  # librdkafka's own lines go through logging, not stderr
            **(config or {}),
        }
        self._producer = Producer(self._config)
        self.delivered = 0
        self.recreated = 0  # producers replaced after a fatal error
        self._recreate_backoff_s = recreate_backoff_s
        self._fatal_in_a_row = 0
        self._replace_at: float | None = None  # set by a fatal error, served by the poll thread
        self._poll_interval_s = poll_interval_s
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_callbacks, name="widelog-kafka-poll")
        self._poller.daemon = True
        self._poller.start()

    @property
    def broker_down(self) -> bool:
        return self._broker_down

    @property
    def queue_depth(self) -> int:
        """Messages in librdkafka's queue: produced, not yet acknowledged by the broker."""
        return len(self._producer)

    def publish(self, key: str, payload: bytes) -> None:
        """Produce, journaled until its delivery report: a SIGKILL loses nothing produced."""
        if self._broker_down:
            self._fallback.spill(key, payload, "broker down")
            return
        self._fallback.hold(key, payload)  # before produce(): its report may come at once
        try:
            self._producer.produce(self.topic, payload, key)
        except BufferError:
            self._fallback.spill(key, payload, "local producer queue full", held=True)
        except KafkaException as exc:
            self._fallback.spill(key, payload, exc, held=True)

    def _on_delivery(self, err: KafkaError | None, msg: KafkaMessage) -> None:
        """Every report of a `publish()`ed event; the replay's records have their own."""
        if err is None:
            self.delivered += 1
            self._fallback.release(msg.key() or b"")
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "Published log event to Kafka topic: %s, requestId: %s",
                    self.topic,
                    (msg.key() or b"").decode(errors="replace"),
                )
        else:
            key = (msg.key() or b"").decode(errors="replace")
            self._fallback.spill(key, msg.value() or b"", err, held=True)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            # The idempotent producer cannot go on (e.g. a sequence gap): every event is spooled
            # until a new producer, made by the poll thread after a backoff, gets a replay through.
            self._broker_down = True
            if self._replace_at is None:
                delay = min(
                    self._recreate_backoff_s * 2**self._fatal_in_a_row, RECREATE_BACKOFF_MAX_S
                )
                self._fatal_in_a_row += 1
                self._replace_at = time.monotonic() + delay
                log.error(
                    "fatal Kafka producer error, spooling and replacing the producer in %.1fs: %s",
                    delay,
                    err,
                )
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self._broker_down:
                log.warning("all Kafka brokers are down: spooling events until a replay succeeds")
            self._broker_down = True
        else:
            log.info("kafka: %s", err)

    def _serve_callbacks(self) -> None:
        """Every `poll_interval_s`, serve every report and error librdkafka has queued."""
        while not self._closed.wait(self._poll_interval_s):
            if self._replace_at is not None and time.monotonic() >= self._replace_at:
                self._replace_producer()
            try:
                self._producer.poll(0)
            except Exception:  # a callback bug must not stop every later delivery report
                log.exception("kafka delivery callback failed")

    def _replace_producer(self) -> None:
        """A new producer for one a fatal error ended; what the old one held is spooled."""
        try:
            new = Producer(self._config)
        except KafkaException as exc:
            log.error("a new Kafka producer could not be created: %s", exc)
            self._replace_at = time.monotonic() + RECREATE_BACKOFF_MAX_S
            return
        old, self._producer = self._producer, new
        self._replace_at = None
        self.recreated += 1
        # Its undelivered events fail with a delivery report that spools them.
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.flush(1.0)
        log.warning(
            "Kafka producer replaced after a fatal error (%d so far); the spool is replayed"
            " through the new one",
            self.recreated,
        )

    async def deliver(self, records: Sequence[tuple[str, bytes]], timeout: float) -> Delivery:
        """Publish and wait for every acknowledgement (the spool replay path)."""
        return await asyncio.to_thread(self._deliver, records, timeout)

    def _deliver(self, records: Sequence[tuple[str, bytes]], timeout: float) -> Delivery:
        """Produce `records`, wait for their own delivery reports, and sort out the refusals.

        The topic's `max.message.bytes` applies to a whole batch: one record too large fails the
        small ones batched with it (measured: all 41 records of a batch with one too large).
        Records refused for their size are sent again in halves, down to single records, so
        only those refused on their own are set aside: a few rounds, not one per record.
        """
        deadline = time.monotonic() + timeout
        refused: dict[int, KafkaError] = {}
        suspects = [list(range(len(records)))]
        while suspects:
            indexes = suspects.pop()
            errors = self._produce_and_wait([records[i] for i in indexes], deadline)
            if errors is None:
                return Delivery(ok=False)
            too_large = []
            for position, err in errors.items():
                if err.code() in _TOO_LARGE and len(indexes) > 1:
                    too_large.append(indexes[position])
                else:
                    refused[indexes[position]] = err
            if too_large:
                half = (len(too_large) + 1) // 2
                suspects += [part for part in (too_large[:half], too_large[half:]) if part]
        if len(refused) < len(records):
            if self._broker_down:
                log.warning("Kafka accepts events again: publishing resumes")
            self._broker_down = False
            self._fatal_in_a_row = 0
        return Delivery(ok=True, refused=[(i, err.name()) for i, err in sorted(refused.items())])

    def _produce_and_wait(
        self, records: Sequence[tuple[str, bytes]], deadline: float
    ) -> dict[int, KafkaError] | None:
        """Produce and wait for each record's own report; the refusals for good by index.

        None when anything else failed or was not acknowledged by `deadline`. Not `flush()`:
        request traffic keeps the producer's queue non-empty, so under load a flush would almost
        never come back empty and the replay would never succeed.
        """
        pending = len(records)
        errors: dict[int, KafkaError] = {}
        all_reported = threading.Event()
        lock = threading.Lock()

        def report(index: int, err: KafkaError | None, _msg: object = None) -> None:
            nonlocal pending
            with lock:
                if err is not None:
                    errors[index] = err
                pending -= 1
                if pending == 0:
                    all_reported.set()

        if not records:
            return {}
        producer = self._producer
        for index, (key, payload) in enumerate(records):
            while True:
                try:
                    producer.produce(
                        self.topic, payload, key, on_delivery=functools.partial(report, index)
                    )
                    break
                except BufferError:
                    if time.monotonic() >= deadline:
                        return None
                    time.sleep(0.05)  # the poll thread serves reports and frees the queue
                except KafkaException as exc:
                    if exc.args[0].code() not in _REFUSED_FOR_GOOD:
                        log.warning("replay produce failed: %s", exc)
                        return None
                    report(index, exc.args[0])
                    break
        all_reported.wait(max(deadline - time.monotonic(), 0.0))
        failed = [e for e in errors.values() if e.code() not in _REFUSED_FOR_GOOD]
        if not all_reported.is_set() or failed:
            log.warning("replay not acknowledged: %d pending, %d failed", pending, len(failed))
            return None
        return errors

    async def flush(self, timeout: float) -> int:
        return await asyncio.to_thread(self._producer.flush, timeout)

    async def close(self, timeout: float = 10.0) -> None:
        """Flush; whatever is still not acknowledged after `timeout` goes to the spool."""
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        if remaining:
            # Purged messages get their delivery report with an error: _on_delivery spools them.
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            await asyncio.to_thread(self._producer.flush, 1.0)
        self._closed.set()
        await asyncio.to_thread(self._poller.join, 5)
