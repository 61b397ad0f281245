"""What a message-queue publisher does with an event the queue cannot take: spool it."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from widelog.pipeline.ports import Spool

log = logging.getLogger("widelog.publisher")


class SpoolFallback:
    """Appends refused events to the spool and says so, at most once per `warn_every_s`."""

    def __init__(self, spool: Spool, *, warn_every_s: float = 5.0) -> None:
        self.spool = spool
        self.spooled = 0
        self.lost = 0
        self._warn_every_s = warn_every_s
        self._last_warning = -float("inf")
        self._lock = threading.Lock()

    def spill(self, key: str, payload: bytes, reason: object) -> None:
        try:
            self.spool.append(key, payload)
        except OSError:
            with self._lock:
                self.lost += 1
            log.exception("spool append failed: event %s is lost", key)
            return
        with self._lock:
            self.spooled += 1
            now = time.monotonic()
            warn = now - self._last_warning >= self._warn_every_s
            if warn:
                self._last_warning = now
        if warn:
            log.warning(
                "MQ publish failed, falling back to direct logging: %s (requestId: %s, %d spooled)",
                reason,
                key,
                self.spooled,
            )
