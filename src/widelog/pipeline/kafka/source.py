"""One consumer-group member: commits after the store, confirmed; a progress watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from widelog.pipeline.kafka._calls import _bounded
from widelog.pipeline.kafka._logs import librdkafka_log
from widelog.pipeline.kafka.admin import KafkaGroupBacklog
from widelog.pipeline.ports import Message

if TYPE_CHECKING:
    from collections.abc import Sequence

    from confluent_kafka import Message as KafkaMessage


log = logging.getLogger("widelog.kafka")


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
    the store) and what is read twice is a duplicate the store absorbs. A member with no
    partitions (stuck rejoining, or a spare) judges the whole group instead: it samples the
    group's offsets after half the quiet period and judges at the full period, so it is replaced
    after `stall_timeout_s` too (it took two full periods, 60-90 s, before).
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
            "logger": librdkafka_log,
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
        # The group's (committed, high) offsets at the previous check, while this member had none.
        self._group_offsets: dict[str, tuple[int, int]] | None = None
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
        self._lost = False  # its partitions were lost (session expired) and none assigned since
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
        elif now - self._last_progress > self._quiet_period():
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

    def _quiet_period(self) -> float:
        """How long without progress before the next check.

        A member without partitions needs two looks at the group (is anybody committing?): the
        first after half the period, so the verdict comes after the period, not after two.
        """
        return self._stall_timeout if self.assigned else self._stall_timeout / 2

    async def _check_progress(self) -> None:
        """Replace the consumer if the broker answers and says it should have made progress.

        With partitions assigned: messages wait in them. With none after losing them (its session
        expired, e.g. the broker froze, and it is stuck rejoining: seen with Kafka and FerretDB
        frozen together, the coordinator request stuck in librdkafka's queue): messages wait in
        the group; waiting for a second check kept such a member stuck 30 s longer (58 s after
        the thaw, measured). With none otherwise (an idle spare member looks like that too):
        messages wait in the group's partitions and no offset of theirs was committed since the
        previous check, so nobody is consuming them (a lag that merely stays level under steady
        traffic is not a stall).
        """
        self._last_progress = time.monotonic()  # check again only after another quiet period
        mine = {p for (_, p) in self.assigned} or None
        try:
            offsets = await _bounded(lambda: self._lag.offsets(mine), self._close_timeout)
        except Exception as exc:  # noqa: BLE001 - a broker that does not answer is not a stall
            log.info("kafka watchdog: no answer about the lag (%r); checking again later", exc)
            return
        waiting = sum(max(high - committed, 0) for committed, high in offsets.values())
        if mine is None and not self._lost:
            before, self._group_offsets = self._group_offsets, offsets
            if before is None or waiting == 0 or _committed_since(before, offsets):
                return
        self._group_offsets = None
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
        self._group_offsets = None  # a later look at the group starts from a fresh sample
        self._lost = False
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
        self._lost = not self.assigned
        log.warning(
            "lost partitions %s (nothing committed for them)", [p.partition for p in partitions]
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned -= gone
        self._held = [m for m in self._held if (m.position.topic, m.position.partition) not in gone]


def _committed_since(before: dict[str, tuple[int, int]], now: dict[str, tuple[int, int]]) -> bool:
    """Whether any partition's committed offset moved between two looks at the group."""
    return any(now[p][0] != committed for p, (committed, _) in before.items() if p in now)
