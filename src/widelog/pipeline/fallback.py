"""What a message-queue publisher does with an event the queue cannot take: spool it.

The spool is bounded (`max_bytes`, `WIDELOG_SPOOL_MAX_BYTES`). The last tenth of it is kept for
errors: past 90 % only events that record an error (`error.code` set, or a 5xx status) are still
spooled, and past 100 % nothing is. Every drop is counted (`dropped`, by kind) and logged as an
ERROR at most once per `warn_every_s`, with how many were dropped since the last line.

It also owns the in-flight journal (`widelog.pipeline.journal`), the other half of durability:
a publisher `hold()`s each event it accepts and `release()`s it once the broker acknowledged it;
an event spilled with `held=True` is released once it is in the spool. At start a process takes
over the journals of dead ones (`take_over_journals`), and a graceful `close()` spools what is
still held, so its journal is deleted empty.

Telling an error apart costs one JSON decode of the payload, and only while the spool is past
90 %: the publisher's interface stays `publish(key, payload)`, which custom transports implement,
and a byte search for `"code"` would be fooled by any field or message containing it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from widelog.events.event import is_error
from widelog.pipeline.journal import Recovery, take_over

if TYPE_CHECKING:
    from pathlib import Path

    from widelog.pipeline.journal import InflightJournal
    from widelog.pipeline.ports import Spool

log = logging.getLogger("widelog.publisher")

ERRORS_ONLY_FROM: Final = 0.9  # of max_bytes: the rest is kept for errors
DropKind = Literal["error", "other"]


class SpoolFallback:
    """Appends refused events to the spool and says so, at most once per `warn_every_s`."""

    def __init__(
        self,
        spool: Spool,
        *,
        max_bytes: int = 1 << 30,
        warn_every_s: float = 5.0,
        journal: InflightJournal | None = None,
    ) -> None:
        self.spool = spool
        self.journal = journal
        self.recovered = Recovery()  # from dead processes' journals
        self.max_bytes = max_bytes
        self.spooled = 0
        self.lost = 0
        self.dropped: dict[DropKind, int] = {"error": 0, "other": 0}
        self._warn_every_s = warn_every_s
        self._last_warning = -float("inf")
        self._last_drop_log = -float("inf")
        self._unlogged_drops: dict[DropKind, int] = {"error": 0, "other": 0}
        self._lock = threading.Lock()

    def hold(self, key: str, payload: bytes) -> None:
        """Journal an event the publisher accepted, until `release()` or a `spill(held=True)`."""
        if self.journal is not None:
            self.journal.hold(key, payload)

    def release(self, key: bytes) -> None:
        """The broker acknowledged the event held under `key`."""
        if self.journal is not None:
            self.journal.release(key)

    def take_over_journals(self, directory: Path) -> Recovery:
        """Spool what the journals of dead processes in `directory` still held (at start)."""
        own = self.journal.path if self.journal is not None else None
        found = take_over(directory, self.spool, own=own)
        self.recovered.journals += found.journals
        self.recovered.records += found.records
        self.recovered.corrupt += found.corrupt
        return found

    def close(self) -> None:
        """Spool what is still held (nothing, after a publisher's graceful close); close both."""
        if self.journal is not None:
            for key, payload in self.journal.unreleased():
                self.spool.append(key, payload)
        self.spool.close()
        if self.journal is not None:
            self.journal.close()

    def spill(self, key: str, payload: bytes, reason: object, *, held: bool = False) -> None:
        """Spool an event the broker did not take; `held`: the publisher had `hold()` it.

        A held event is released even if the full spool drops it or the disk fails (counted):
        nothing else would ever release it, and its record would pin the journal's ring.
        """
        try:
            self._spill(key, payload, reason)
        finally:
            if held:
                self.release(key.encode())

    def _spill(self, key: str, payload: bytes, reason: object) -> None:
        try:
            kind = self._refused(payload)
            if kind is None:
                self.spool.append(key, payload)
        except OSError:
            with self._lock:
                self.lost += 1
            log.exception("spool append failed: event %s is lost", key)
            return
        if kind is not None:
            self._drop(kind)
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

    def _refused(self, payload: bytes) -> DropKind | None:
        """The kind of event the full spool refuses this one as; None if it has room for it."""
        after = self.spool.bytes_used() + len(payload)
        if after <= self.max_bytes * ERRORS_ONLY_FROM:
            return None
        error = _records_an_error(payload)
        if after > self.max_bytes:
            return "error" if error else "other"
        return None if error else "other"

    def _drop(self, kind: DropKind) -> None:
        with self._lock:
            self.dropped[kind] += 1
            self._unlogged_drops[kind] += 1
            now = time.monotonic()
            if now - self._last_drop_log < self._warn_every_s:
                return
            self._last_drop_log = now
            other, errors = self._unlogged_drops["other"], self._unlogged_drops["error"]
            self._unlogged_drops = {"error": 0, "other": 0}
        log.error(
            "spool full: dropped %d non-error events%s (spool at %d of %d bytes"
            " (WIDELOG_SPOOL_MAX_BYTES); errors are kept up to the limit)",
            other,
            f" and {errors} errors" if errors else "",
            self.spool.bytes_used(),
            self.max_bytes,
        )


def _records_an_error(payload: bytes) -> bool:
    """Whether the event is an error; one that cannot be read is kept as if it were one."""
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return True
    return not isinstance(doc, dict) or is_error(doc)
