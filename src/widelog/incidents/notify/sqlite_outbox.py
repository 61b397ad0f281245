"""`NotificationOutbox` on SQLite: two insert-only tables in the events' file.

`INSERT OR IGNORE` under the idempotency key (messages) and under `key#n` / `key#n!` (claims,
outcomes), so several processes sharing the file (WAL) enqueue each message once and claim each
attempt once. Times are fixed-width ISO strings, which sort as the times do.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from widelog.incidents.notify.model import Attempt, OutboxMessage, merge_attempts, stored_time
from widelog.sqlite_db import SQLiteDatabase

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incident_outbox (
    id        TEXT PRIMARY KEY,
    incident  TEXT NOT NULL,
    episode   INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    created   TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incident_outbox_created ON incident_outbox (created);
CREATE TABLE IF NOT EXISTS incident_outbox_attempts (
    id        TEXT PRIMARY KEY,
    key       TEXT NOT NULL,
    number    INTEGER NOT NULL,
    doc       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incident_outbox_attempts_key ON incident_outbox_attempts (key);
"""


def _t(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


class SQLiteNotificationOutbox:
    """The outbox beside the SQLite incident store (same file, tables of its own)."""

    def __init__(self, path: str | Path) -> None:
        self._db = SQLiteDatabase(path, schema=_SCHEMA)
        self._run = self._db.run

    async def enqueue(self, messages: Sequence[OutboxMessage]) -> int:
        rows = [(m.key, m.incident_id, m.episode, m.kind, m.seq, _t(m.created)) for m in messages]

        def insert(db: sqlite3.Connection) -> int:
            with db:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO incident_outbox"
                    " (id, incident, episode, kind, seq, created) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                return db.total_changes - before

        return int(await self._run(insert)) if rows else 0

    async def messages(
        self, *, since: dt.datetime | None = None, keys: Collection[str] | None = None
    ) -> list[OutboxMessage]:
        if keys is not None and not keys:
            return []
        sql = "SELECT incident, episode, kind, seq, created FROM incident_outbox WHERE 1 = 1"
        args: list[str] = []
        if since is not None:
            sql += " AND created >= ?"
            args.append(str(_t(since)))
        if keys is not None:
            sql += " AND id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(keys)))
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        return [
            OutboxMessage(str(incident), int(episode), kind, stored_time(created), int(seq))
            for incident, episode, kind, seq, created in rows
        ]

    async def attempts(self, keys: Collection[str]) -> dict[str, list[Attempt]]:
        if not keys:
            return {}
        sql = (
            "SELECT id, doc FROM incident_outbox_attempts"
            " WHERE key IN (SELECT value FROM json_each(?))"
        )
        rows = await self._run(lambda db: db.execute(sql, (json.dumps(list(keys)),)).fetchall())
        claims: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        for record_id, doc in rows:
            (outcomes if str(record_id).endswith("!") else claims).append(json.loads(doc))
        return merge_attempts(claims, outcomes)

    async def _insert(self, record_id: str, attempt: Attempt, doc: dict[str, Any]) -> bool:
        text = json.dumps({k: _t(v) if isinstance(v, dt.datetime) else v for k, v in doc.items()})

        def insert(db: sqlite3.Connection) -> bool:
            with db:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO incident_outbox_attempts (id, key, number, doc)"
                    " VALUES (?, ?, ?, ?)",
                    (record_id, attempt.key, attempt.number, text),
                )
                return cursor.rowcount == 1

        return bool(await self._run(insert))

    async def claim(self, attempt: Attempt) -> bool:
        return await self._insert(attempt.claim_id, attempt, attempt.claim_doc())

    async def finish(self, attempt: Attempt) -> None:
        await self._insert(attempt.outcome_id, attempt, attempt.outcome_doc())

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._db.close()
