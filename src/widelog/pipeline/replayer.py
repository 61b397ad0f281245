"""Drains the spool back into the message queue once it takes events again.

It runs in the API process, beside request handling, so it must yield to it: reading the spool
and (Kafka) producing and waiting for acknowledgements run in worker threads, and with a `rate`
(events per second, `WIDELOG_REPLAY_RATE`) it sends chunks of about a fifth of a second's worth
and sleeps between them on the event loop. Without a rate, a backlog of thousands of events goes
out in 5,000-event chunks as fast as the broker takes them, and the burst (producing, delivery
reports, then the worker storing it, all on the same cores) slows the requests being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence
    from pathlib import Path

    from widelog.pipeline.ports import Quarantine, Spool

log = logging.getLogger("widelog.replay")
PACE_S = 0.2  # with a rate: each chunk is this much of it, so the pauses between are short


@dataclass(slots=True)
class Delivery:
    """Every record acknowledged (`ok`), except those the broker refused for good.

    `refused` holds (index in the records, reason): a record too large for the topic, or a topic
    this client may not write to, will be refused however often it is sent again.
    """

    ok: bool
    refused: list[tuple[int, str]] = field(default_factory=list)


class ConfirmingPublisher(Protocol):
    """A publisher that can say for sure that events reached the message queue."""

    async def deliver(
        self, records: Sequence[tuple[str, bytes]], timeout: float
    ) -> bool | Delivery:
        """Publish and wait for the broker's acknowledgement of every record."""
        ...


@dataclass(slots=True)
class ReplayStats:
    segments: int = 0
    events: int = 0
    failures: int = 0
    rejected: int = 0  # records quarantined in `*.rejected` files


class SpoolReplayer:
    """Replays the spool segment by segment, all or nothing.

    A segment is deleted only after every event in it was acknowledged or, refused for good,
    quarantined; a failure or a crash halfway means a replay again, never a loss.
    """

    def __init__(
        self,
        spool: Spool,
        publisher: ConfirmingPublisher,
        *,
        chunk: int = 5000,
        timeout: float = 30.0,
        rate: float = 0.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spool = spool
        self._publisher = publisher
        self._chunk = max(1, min(chunk, int(rate * PACE_S))) if rate > 0 else chunk
        self._timeout = timeout
        self._rate = rate
        self._sleep = sleep
        self._clock = clock
        self._next_send = 0.0  # with a rate: when the next chunk may go
        self.stats = ReplayStats()

    async def replay_once(self, *, rejected: bool = False) -> int:
        """Replay every segment no live writer holds; return how many events were confirmed.

        With `rejected`, replay the quarantined records instead (after a configuration fix);
        those refused again stay quarantined.
        """
        if rejected:
            paths = self._spool.rejected()
        else:
            if not self._spool.has_pending():
                return 0
            await asyncio.to_thread(self._spool.rotate)  # fsync and rename: off the event loop
            paths = self._spool.segments()
        confirmed = 0
        for path in paths:
            with self._spool.claim(path) as records:
                if records is None:
                    continue
                quarantine = self._spool.quarantine(path)
                reasons: dict[str, int] = {}
                try:
                    count = await self._replay(records, quarantine, reasons)
                except BaseException:
                    quarantine.discard()
                    raise
                if count is None:
                    quarantine.discard()
                    self.stats.failures += 1
                    log.warning("replay of %s failed; it stays in the spool", path.name)
                    return confirmed
                await asyncio.to_thread(quarantine.commit)  # replaces a rejected file: `path`
                if not rejected:
                    path.unlink()
                    self.stats.segments += 1
                    self.stats.rejected += quarantine.count
                self.stats.events += count
                confirmed += count
                log.info("replayed %d spooled events from %s", count, path.name)
                if quarantine.count:
                    _report(quarantine, path, reasons)
        return confirmed

    async def _replay(
        self,
        records: Iterator[tuple[str, bytes]],
        quarantine: Quarantine,
        reasons: dict[str, int],
    ) -> int | None:
        """Deliver every record; the refused ones go to `quarantine`. None: not all confirmed."""
        count = 0
        while True:
            chunk = await asyncio.to_thread(_take, records, self._chunk)
            if not chunk:
                return count
            await self._pace(len(chunk))
            result = await self._publisher.deliver(chunk, self._timeout)
            delivery = result if isinstance(result, Delivery) else Delivery(ok=result)
            if not delivery.ok:
                return None
            refused = [chunk[index] for index, _ in delivery.refused]
            if refused:
                await asyncio.to_thread(_add_all, quarantine, refused)
            for _, reason in delivery.refused:
                reasons[reason] = reasons.get(reason, 0) + 1
            count += len(chunk) - len(delivery.refused)

    async def _pace(self, events: int) -> None:
        """Wait until `events` more keep the replay at or under its rate (never ahead of it)."""
        if self._rate <= 0:
            return
        now = self._clock()
        start = max(self._next_send, now)
        self._next_send = start + events / self._rate
        if start > now:
            await self._sleep(start - now)

    async def run(self, stop: asyncio.Event, *, interval: float = 5.0) -> None:
        """Replay whenever there is something to replay, until `stop` is set."""
        while not stop.is_set():
            try:
                await self.replay_once()
            except Exception:
                log.exception("spool replay failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


def _report(quarantine: Quarantine, path: Path, reasons: dict[str, int]) -> None:
    log.error(
        "the broker refused %d events from %s for good (%s): kept in %s, not retried;"
        " fix the topic or broker configuration, then run `widelog replay --rejected`",
        quarantine.count,
        path.name,
        ", ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items())),
        quarantine.path.name,
    )


def _add_all(quarantine: Quarantine, records: Sequence[tuple[str, bytes]]) -> None:
    for key, payload in records:
        quarantine.add(key, payload)


def _take(records: Iterator[tuple[str, bytes]], count: int) -> list[tuple[str, bytes]]:
    return list(itertools.islice(records, count))
