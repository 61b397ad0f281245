"""Kafka transport: a non-blocking producer with a spool fallback, and a consumer-group source.

librdkafka traps this module is written around:
- `produce()` returning means "queued in this process", not "stored": durability starts with the
  delivery report (acks=all). Until then an event lives in librdkafka's memory.
- A broker outage shows up later, as delivery errors after `message.timeout.ms`, or at once as a
  full local queue (`BufferError`). Both send the event to the spool; so does a broker that
  librdkafka reports as all-down, until a replay gets through again.
- Offsets are committed explicitly, only for messages whose batch the store has, and never with
  a call that can wait forever (see `KafkaEventSource`).
- Some refusals are for good: a record larger than the topic's `max.message.bytes`, a topic this
  client may not write to. Sent again, they fail again, so the replay quarantines them instead
  of retrying the segment forever (`Delivery.refused`).
- A fatal error (the idempotent producer cannot keep its guarantees) ends a producer for good:
  it is replaced by a new one, after a backoff, while events go to the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from widelog.pipeline.ports import Message
from widelog.pipeline.replayer import Delivery

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from confluent_kafka import Message as KafkaMessage

    from widelog.pipeline.fallback import SpoolFallback

log = logging.getLogger("widelog.kafka")


_T = TypeVar("_T")

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


async def _bounded(call: Callable[[], _T], timeout: float) -> _T:
    """`call()` in a daemon thread, waited for at most `timeout` s.

    Not `asyncio.to_thread`: a librdkafka call that never returns would pin a thread of the
    default executor, and `asyncio.run` waits for those at exit, so the process could not stop.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="widelog-kafka-bounded", daemon=True).start()
    return await asyncio.wait_for(asyncio.shield(done), timeout)


def _settle(future: asyncio.Future[_T], result: _T | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]  # None only with an exception


def ensure_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int,
    replication: int = -1,
    timeout: float = 30.0,
    config: dict[str, Any] | None = None,
) -> None:
    """Create the topic if it does not exist (several partitions: several consumers can share).

    `replication=-1` takes the broker's `default.replication.factor`: with one replica, acks=all
    means one broker's page cache, so production clusters want 3 and `min.insync.replicas=2`.
    """
    settings: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log, **(config or {})}
    admin = AdminClient(settings)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication)],
        request_timeout=timeout,
    )
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


class KafkaGroupBacklog:
    """The consumer group's lag per partition, read from outside the group (the API's view).

    A consumer with the group's id that never subscribes does not join the group: it only asks
    the group coordinator for the committed offsets, and the leaders for the high watermarks.
    """

    def __init__(self, *, bootstrap: str, topic: str, group: str, timeout: float = 5.0) -> None:
        self._topic = topic
        self._timeout = timeout
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "logger": log}
        )

    def read(self, partitions: Collection[int] | None = None) -> dict[str, int]:
        """Lag per partition (all of the topic's unless `partitions`); blocks: call off the loop."""
        if partitions is None:
            metadata = self._consumer.list_topics(self._topic, timeout=self._timeout)
            topic = metadata.topics.get(self._topic)
            partitions = topic.partitions if topic is not None else ()
        wanted = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        lag = {}
        for tp in self._consumer.committed(wanted, timeout=self._timeout):
            low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout)
            committed = tp.offset if tp.offset >= 0 else low  # nothing committed: from the start
            lag[str(tp.partition)] = max(high - committed, 0)
        return lag

    async def backlog(self) -> dict[str, int]:
        return await _bounded(self.read, self._timeout * 2)

    async def close(self) -> None:
        await _bounded(self._consumer.close, self._timeout)


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
        linger_ms: int = 5,
        queue_max_messages: int = 100_000,
        config: dict[str, Any] | None = None,
        recreate_backoff_s: float = RECREATE_BACKOFF_S,
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
            "error_cb": self._on_error,
            "logger": log,  # librdkafka's own lines go through logging, not stderr
            **(config or {}),
        }
        self._producer = Producer(self._config)
        self.delivered = 0
        self.recreated = 0  # producers replaced after a fatal error
        self._recreate_backoff_s = recreate_backoff_s
        self._fatal_in_a_row = 0
        self._replace_at: float | None = None  # set by a fatal error, served by the poll thread
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
        if self._broker_down:
            self._fallback.spill(key, payload, "broker down")
            return
        try:
            self._producer.produce(self.topic, payload, key, on_delivery=self._on_delivery)
        except BufferError:
            self._fallback.spill(key, payload, "local producer queue full")
        except KafkaException as exc:
            self._fallback.spill(key, payload, exc)

    def _on_delivery(self, err: KafkaError | None, msg: KafkaMessage) -> None:
        key = (msg.key() or b"").decode(errors="replace")
        if err is None:
            self.delivered += 1
            log.debug("Published log event to Kafka topic: %s, requestId: %s", self.topic, key)
        else:
            self._fallback.spill(key, msg.value() or b"", err)

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
        while not self._closed.is_set():
            if self._replace_at is not None and time.monotonic() >= self._replace_at:
                self._replace_producer()
            try:
                self._producer.poll(0.1)
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


@dataclass(frozen=True, slots=True)
class KafkaPosition:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


class KafkaEventSource:
    """One member of a consumer group: explicit commits after the store, and a progress watchdog.

    Commits are asynchronous, confirmed by `on_commit` and re-sent until confirmed. A synchronous
    commit has no timeout: with the broker frozen (SIGSTOP) and thawed, about one in ten waited
    forever in `rd_kafka_commit_queue` while the group coordinator moved, so the worker stopped
    without a word and not even SIGTERM could end it (the thread cannot be interrupted).

    The watchdog: when nothing was received and no commit confirmed for `stall_timeout_s` while
    the broker says the group has uncommitted messages in this member's partitions, the consumer
    is closed (bounded) and a new one joins. Nothing is lost (offsets were never committed past
    the store) and what is read twice is a duplicate the store absorbs.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        client_id: str = "widelog-worker",
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        stall_timeout_s: float = 30.0,
        commit_retry_s: float = 5.0,
        close_timeout_s: float = 10.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._topic = topic
        self._config = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "max.poll.interval.ms": max_poll_interval_ms,
            "on_commit": self._on_commit,
            "logger": log,
            **(config or {}),
        }
        self._stall_timeout = stall_timeout_s
        self._commit_retry = commit_retry_s
        self._close_timeout = close_timeout_s
        self._lock = threading.Lock()  # `on_commit` runs in the thread that polls
        self._unconfirmed: dict[tuple[str, int], int] = {}  # next offsets sent, not confirmed
        self._last_commit_sent = 0.0
        self._last_progress = time.monotonic()
        self.commit_failures = 0
        self.stalls = 0  # consumers the watchdog found stuck and replaced
        # The watchdog asks through a client of its own: the member's own connection to the
        # group coordinator is what gets stuck (seen: rejoining forever after a frozen broker).
        self._lag = KafkaGroupBacklog(
            bootstrap=bootstrap, topic=topic, group=group, timeout=close_timeout_s / 2
        )
        self._group_lag: int | None = None  # at the previous check, while this member had none
        self._consumer = self._join()

    def _join(self) -> Consumer:
        consumer = Consumer(self._config)
        consumer.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._paused = False
        self._held: list[Message] = []  # read while paused (a race), handed out on resume
        self.assigned: set[tuple[str, int]] = set()
        return consumer

    async def poll(self, max_messages: int, timeout: float) -> list[Message]:
        if self._paused:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
        if self._held:
            held, self._held = self._held[:max_messages], self._held[max_messages:]
            return held
        raw = await asyncio.to_thread(self._consumer.consume, max_messages, timeout)
        now = time.monotonic()
        if raw:
            self._last_progress = now
        elif now - self._last_progress > self._stall_timeout:
            await self._check_progress()
        if self._unconfirmed and now - self._last_commit_sent > self._commit_retry:
            self._send_commit()  # the last one failed, or its answer never came
        return self._convert(raw)

    async def keepalive(self) -> None:
        """Stay in the group without fetching while the store is down (no rebalance storm)."""
        if not self._paused:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
        raw = await asyncio.to_thread(self._consumer.consume, 100, 0.0)
        self._held += self._convert(raw)
        self._last_progress = time.monotonic()  # waiting for the store is not a stall

    async def commit(self, messages: Sequence[Message]) -> None:
        """Send the next offsets (asynchronously); `poll` re-sends them until confirmed."""
        with self._lock:
            for message in messages:
                pos: KafkaPosition = message.position
                key = (pos.topic, pos.partition)
                self._unconfirmed[key] = max(self._unconfirmed.get(key, 0), pos.offset + 1)
        self._send_commit()

    def _send_commit(self) -> None:
        with self._lock:
            # A partition that moved is the new owner's to commit (it re-reads; the store dedups).
            for key in [k for k in self._unconfirmed if k not in self.assigned]:
                del self._unconfirmed[key]
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._unconfirmed.items()]
        if not offsets:
            return
        self._last_commit_sent = time.monotonic()
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self.commit_failures += 1
            log.warning("offset commit not sent (events are stored; retrying): %s", exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            self.commit_failures += 1
            if self.commit_failures % 20 == 1:
                log.warning(
                    "offset commit failed (%d so far; retrying): %s", self.commit_failures, err
                )
            return
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                if tp.error is None and self._unconfirmed.get(key, -1) <= tp.offset:
                    self._unconfirmed.pop(key, None)
        self._last_progress = time.monotonic()

    async def _check_progress(self) -> None:
        """Replace the consumer if the broker answers and says it should have made progress.

        With partitions assigned: messages wait in them. With none (a member stuck rejoining the
        group looks like this, and so does an idle spare member): the group's lag did not go down
        since the previous check, so nobody is consuming it.
        """
        self._last_progress = time.monotonic()  # check again only after another quiet period
        mine = {p for (_, p) in self.assigned} or None
        try:
            lag = await _bounded(lambda: self._lag.read(mine), self._close_timeout)
        except Exception as exc:  # noqa: BLE001 - a broker that does not answer is not a stall
            log.info("kafka watchdog: no answer about the lag (%r); checking again later", exc)
            return
        waiting = sum(lag.values())
        if mine is None:
            before, self._group_lag = self._group_lag, waiting
            if before is None or waiting == 0 or waiting < before:
                return
        self._group_lag = None
        if not waiting:
            return
        self.stalls += 1
        log.error(
            "Kafka consumer made no progress for %.0fs with %d messages waiting: replacing it"
            " (stall %d)",
            self._stall_timeout,
            waiting,
            self.stalls,
        )
        old = self._consumer
        self._consumer = self._join()
        try:
            await _bounded(old.close, self._close_timeout)
        except Exception as exc:  # noqa: BLE001 - a stuck consumer is left behind, not waited for
            log.warning("the stuck Kafka consumer did not close (%r); left behind", exc)

    async def backlog(self) -> dict[str, int]:
        """Per assigned partition: the high watermark minus the group's committed offset."""
        mine = {p for (_, p) in self.assigned}
        return await _bounded(lambda: self._lag.read(mine), self._close_timeout) if mine else {}

    async def close(self) -> None:
        """Leave the group; a broker that does not answer in `close_timeout_s` is not waited for."""
        try:
            await _bounded(self._consumer.close, self._close_timeout)
        except TimeoutError:
            log.warning(
                "Kafka consumer did not close in %.0fs; exiting anyway", self._close_timeout
            )
        with contextlib.suppress(TimeoutError):
            await self._lag.close()

    def _convert(self, raw: Sequence[KafkaMessage]) -> list[Message]:
        messages = []
        for msg in raw:
            error = msg.error()
            if error is not None:
                log.warning("kafka consume error: %s", error)
                continue
            position = KafkaPosition(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
            messages.append(Message(msg.value() or b"", position))
        return messages

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a replaced consumer's last callbacks: its state is gone already
        self.assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))
        if self._paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return
        # Every batch is committed right after its write, so there is nothing left to commit.
        self._forget(partitions)
        log.info("revoked partitions %s", sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return
        self._forget(partitions)
        log.warning(
            "lost partitions %s (nothing committed for them)", [p.partition for p in partitions]
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned -= gone
        self._held = [m for m in self._held if (m.position.topic, m.position.partition) not in gone]
