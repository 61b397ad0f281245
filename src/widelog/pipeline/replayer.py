"""Drains the spool back into the message queue once it takes events again."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from widelog.pipeline.ports import Spool

log = logging.getLogger("widelog.replay")


class ConfirmingPublisher(Protocol):
    """A publisher that can say for sure that events reached the message queue."""

    async def deliver(self, records: Sequence[tuple[str, bytes]], timeout: float) -> bool:
        """Publish and wait for the broker's acknowledgement of every record."""
        ...


@dataclass(slots=True)
class ReplayStats:
    segments: int = 0
    events: int = 0
    failures: int = 0


class SpoolReplayer:
    """Replays the spool segment by segment, all or nothing.

    A segment is deleted only after every event in it was acknowledged, so a failure or a crash
    halfway means a replay again, never a loss.
    """

    def __init__(
        self,
        spool: Spool,
        publisher: ConfirmingPublisher,
        *,
        chunk: int = 5000,
        timeout: float = 30.0,
    ) -> None:
        self._spool = spool
        self._publisher = publisher
        self._chunk = chunk
        self._timeout = timeout
        self.stats = ReplayStats()

    async def replay_once(self) -> int:
        """Replay every segment no live writer holds; return how many events were confirmed."""
        if not self._spool.has_pending():
            return 0
        await asyncio.to_thread(self._spool.rotate)  # fsync and rename: off the event loop
        confirmed = 0
        for path in self._spool.segments():
            with self._spool.claim(path) as records:
                if records is None:
                    continue
                count, ok = 0, True
                while ok:
                    chunk = await asyncio.to_thread(_take, records, self._chunk)
                    if not chunk:
                        break
                    ok = await self._publisher.deliver(chunk, self._timeout)
                    count += len(chunk)
                if not ok:
                    self.stats.failures += 1
                    log.warning("replay of %s failed; it stays in the spool", path.name)
                    return confirmed
                path.unlink()
                self.stats.segments += 1
                self.stats.events += count
                confirmed += count
                log.info("replayed %d spooled events from %s", count, path.name)
        return confirmed

    async def run(self, stop: asyncio.Event, *, interval: float = 5.0) -> None:
        """Replay whenever there is something to replay, until `stop` is set."""
        while not stop.is_set():
            try:
                await self.replay_once()
            except Exception:
                log.exception("spool replay failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


def _take(records: Iterator[tuple[str, bytes]], count: int) -> list[tuple[str, bytes]]:
    return list(itertools.islice(records, count))
