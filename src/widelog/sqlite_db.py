"""One SQLite file shared by the embedded stores (events, incidents) and by several processes.

A single connection per store, used from worker threads under a lock, so the event loop never
waits on disk. WAL lets readers and one writer work at once; `synchronous=NORMAL` with WAL
survives an application crash (an OS crash can lose the last transactions); the busy timeout
lets several processes (API, workers, CLI) share the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Callable


class SQLiteDatabase:
    def __init__(
        self,
        path: str | Path,
        *,
        schema: str,
        upgrade: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._schema = schema
        self._upgrade = upgrade  # brings a file made by an older version up to `schema`
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` in a worker thread, one call at a time."""

        def locked() -> T:
            with self._lock:
                return fn(self._connect())

        return await asyncio.to_thread(locked)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(close)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout=10000")
            _set_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(self._schema)
            if self._upgrade is not None:
                self._upgrade(db)
            self._db = db
        return self._db


def _set_wal(db: sqlite3.Connection, *, attempts: int = 100) -> None:
    """Switch to WAL, waiting out a connection that is creating the file right now.

    Changing the journal mode takes an exclusive lock for which SQLite does not call the busy
    handler, so two connections opening a new file at once can get "database is locked".
    """
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.02)
        else:
            return
