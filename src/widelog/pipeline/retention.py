"""Retention where the store has no TTL index (FerretDB, SQLite): a periodic delete."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from widelog.pipeline.ports import EventStore

log = logging.getLogger("widelog.retention")


async def run_retention(store: EventStore, stop: asyncio.Event, *, every_s: float = 3600.0) -> None:
    """Expire old events now and every `every_s` until `stop`; a failure waits for the next turn."""
    while not stop.is_set():
        try:
            deleted = await store.expire()
            if deleted:
                log.info("retention deleted %d events", deleted)
        except Exception:
            log.exception("retention delete failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
