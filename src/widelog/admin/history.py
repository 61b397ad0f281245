"""The dashboard's last hour: one sample of this process's counters per interval, in memory.

Per process on purpose: the counters (`LoggingStats`, the duration histogram, the caches') are
the ones this instance keeps anyway, so the history costs nothing on the request path and needs
no store. Each API process shows its own; the store is where the fleet's events are.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from widelog.histogram import quantile

if TYPE_CHECKING:
    from collections.abc import Callable

    from widelog.bootstrap import Pipeline
    from widelog.cache.fail_open import CacheCounters, ChatCaches

log = logging.getLogger("widelog.admin")

HOUR_S = 3600


@dataclass(frozen=True, slots=True)
class Reading:
    """The cumulative counters at one moment; two readings make one sample."""

    finalized: int = 0
    kept: int = 0  # handed to the transport, on their way to the store
    errors: int = 0
    durations: tuple[int, ...] = ()
    queue_depth: int = 0
    session: tuple[int, int] = (0, 0)  # hits, lookups attempted
    semantic: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class Sample:
    """What happened during one interval, ending at `at` (epoch seconds)."""

    at: float
    requests: int
    kept: int
    errors: int
    p95_ms: float | None  # None: no request in the interval
    queue_depth: int  # at the end of the interval
    session_hit_rate: float | None  # None: no lookup in the interval
    semantic_hit_rate: float | None


def read_counters(pipeline: Pipeline, caches: ChatCaches | None = None) -> Reading:
    """Plain attribute reads, no I/O: safe to call from the event loop at any time."""
    stats = pipeline.logging.stats
    return Reading(
        finalized=stats.finalized,
        kept=stats.published,
        errors=stats.errors,
        durations=tuple(pipeline.logging.durations.counts),
        queue_depth=pipeline.queue_depth,
        session=(0, 0) if caches is None else _lookups(caches.sessions.counters),
        semantic=(0, 0) if caches is None else _lookups(caches.answers.counters),
    )


def _lookups(counters: CacheCounters) -> tuple[int, int]:
    lookups = counters.lookups
    return lookups["hit"], lookups.total() - lookups["bypass"]


class History:
    """A ring buffer of samples: the oldest goes when a new one comes and it is full."""

    def __init__(self, *, capacity: int) -> None:
        self._samples: deque[Sample] = deque(maxlen=capacity)

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def samples(self) -> list[Sample]:
        """Oldest first."""
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)


class HistoryRecorder:
    """Turns successive readings into samples: counters become per-interval deltas."""

    def __init__(
        self,
        read: Callable[[], Reading],
        *,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval_s = interval_s
        self.history = History(capacity=math.ceil(HOUR_S / interval_s))
        self._read = read
        self._clock = clock
        self._last = read()

    def sample(self) -> Sample:
        """Record the interval since the previous call (or since the recorder was made)."""
        now, before = self._read(), self._last
        self._last = now
        durations = [a - b for a, b in zip(now.durations, before.durations, strict=False)]
        sample = Sample(
            at=self._clock(),
            requests=now.finalized - before.finalized,
            kept=now.kept - before.kept,
            errors=now.errors - before.errors,
            p95_ms=quantile(durations, 0.95),
            queue_depth=now.queue_depth,
            session_hit_rate=_rate(now.session, before.session),
            semantic_hit_rate=_rate(now.semantic, before.semantic),
        )
        self.history.add(sample)
        return sample

    async def run(self) -> None:
        """One sample per interval until cancelled; a failing sample is logged, not fatal."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:
                log.exception("dashboard history: sample failed")


def _rate(now: tuple[int, int], before: tuple[int, int]) -> float | None:
    hits, attempted = now[0] - before[0], now[1] - before[1]
    return hits / attempted if attempted else None
