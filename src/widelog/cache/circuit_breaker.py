"""A circuit breaker: stop calling a backend that keeps failing, probe now and then for its return.

closed ──(`failure_threshold` failures in a row)──▶ open ──(`reset_timeout_s`)──▶ half-open

In half-open exactly one call goes through as a probe: its success closes the circuit, its failure
opens it for another `reset_timeout_s`. Other callers are refused meanwhile, so a backend that is
still down costs one request one bounded attempt per period, not every request. A probe whose
caller never reports (cancelled mid-call) is replaced by a new one after `reset_timeout_s`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("widelog.cache")
State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        name: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self.name = name
        self._threshold = failure_threshold
        self._reset_s = reset_timeout_s
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._since = 0.0  # when the circuit opened, or when the probe started
        self.opened = 0  # how many times it opened: a metric

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """May the caller use the backend now? In half-open, True makes the caller the probe."""
        if self._state == "closed":
            return True
        if self._clock() - self._since < self._reset_s:
            return False
        if self._state == "open":
            log.info("cache circuit %s half-open: probing the backend", self.name)
        self._state = "half_open"
        self._since = self._clock()
        return True

    def record_success(self) -> None:
        if self._state != "closed":
            log.warning("cache circuit %s closed: the backend answers again", self.name)
        self._state = "closed"
        self._failures = 0

    def record_failure(self, reason: str) -> None:
        self._failures += 1
        if self._state == "half_open" or (
            self._state == "closed" and self._failures >= self._threshold
        ):
            if self._state == "closed":
                self.opened += 1
                log.warning(
                    "cache circuit %s opened after %d failures in a row (last: %s);"
                    " fallbacks for the next %.1f s",
                    self.name,
                    self._failures,
                    reason,
                    self._reset_s,
                )
            self._state = "open"
            self._since = self._clock()
