"""`IncidentStore` on SQLite (stdlib, WAL): the embedded default, beside the events.

Every record is an `INSERT OR IGNORE` under its deterministic id, so batches can be re-delivered
and retried, and several processes may share the file (WAL, with a busy timeout). Times are
stored as fixed-width ISO strings (`...T10:11:12.345+00:00`), which sort as the times do.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from widelog.incidents.model import (
    MINUTE,
    Contribution,
    Transition,
    WorkerMinute,
    minute_key,
    parse_time,
)
from widelog.incidents.watermark import WorkerMark
from widelog.sqlite_db import SQLiteDatabase

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence


_SCHEMA = """
CREATE TABLE IF NOT EXISTS incident_minutes (
    id      TEXT PRIMARY KEY,
    minute  TEXT NOT NULL,
    doc     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incident_marks (
    worker  TEXT PRIMARY KEY,
    newest  TEXT,
    arrival TEXT NOT NULL,
    first   TEXT,
    pruned_before TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incident_facts (
    id        TEXT PRIMARY KEY,
    incident  TEXT NOT NULL,
    minute    TEXT NOT NULL,
    events    INTEGER NOT NULL,
    weight    REAL NOT NULL,
    first     TEXT NOT NULL,
    last      TEXT NOT NULL,
    doc       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incident_facts_incident ON incident_facts (incident, minute);
CREATE INDEX IF NOT EXISTS incident_facts_minute ON incident_facts (minute);
CREATE TABLE IF NOT EXISTS incident_members (
    id        TEXT PRIMARY KEY,
    incident  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    minute    TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incident_members_incident ON incident_members (incident, kind, minute);
CREATE TABLE IF NOT EXISTS incident_transitions (
    id        TEXT PRIMARY KEY,
    incident  TEXT NOT NULL,
    doc       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incident_transitions_incident ON incident_transitions (incident);
"""
_TABLES = (
    "incident_minutes",
    "incident_facts",
    "incident_members",
    "incident_transitions",
    "incident_marks",
)
_encoder = msgspec.json.Encoder()


def _upgrade(db: sqlite3.Connection) -> None:
    """Add the columns newer versions added to a file an older version made."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(incident_marks)")}
    if "pruned_before" not in columns:
        try:
            db.execute("ALTER TABLE incident_marks ADD COLUMN pruned_before TEXT")
        except sqlite3.OperationalError as exc:  # another process added it just now
            if "duplicate column" not in str(exc):
                raise


def _t(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _maybe_t(moment: dt.datetime | None) -> str | None:
    return None if moment is None else _t(moment)


def _maybe_parse(text: str | None) -> dt.datetime | None:
    return None if text is None else _parse(text)


def _parse(text: str) -> dt.datetime:
    moment = parse_time(text)
    if moment is None:
        raise ValueError(f"not a stored time: {text!r}")
    return moment


# Lists of ids are passed as one JSON array parameter: `IN (SELECT value FROM json_each(?))`.
def _json(values: Collection[str]) -> str:
    return json.dumps(list(values))


def _fact_rows(
    contributions: Sequence[Contribution], token: str
) -> tuple[list[tuple[str, str, str, int, float, str, str, str]], list[tuple[str, str, str, str]]]:
    facts, members = [], []
    for part in contributions:
        if part.first is None or part.last is None:
            continue  # nothing matched: nothing to record
        minute = _t(part.minute)
        doc = _encoder.encode(part.to_doc()).decode()
        facts.append(
            (
                part.record_id(token),
                part.incident_id,
                minute,
                part.events,
                part.weight,
                _t(part.first),
                _t(part.last),
                doc,
            )
        )
        for kind, hashes in (("user", part.users), ("session", part.sessions)):
            members += [
                (f"{part.incident_id}|{kind}|{h}", part.incident_id, kind, minute) for h in hashes
            ]
    return facts, members


class SQLiteIncidentStore:
    """`IncidentStore` on SQLite, in the same file as the events (`sqlite_db.py`)."""

    def __init__(self, path: str | Path) -> None:
        self._db = SQLiteDatabase(path, schema=_SCHEMA, upgrade=_upgrade)
        self._run = self._db.run

    async def add_batch(
        self, contributions: Sequence[Contribution], minutes: Sequence[WorkerMinute], *, token: str
    ) -> None:
        facts, members = _fact_rows(contributions, token)
        rows = [
            (m.record_id(token), _t(m.minute), _encoder.encode(m.to_doc()).decode())
            for m in minutes
        ]

        def insert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT OR IGNORE INTO incident_facts"
                    " (id, incident, minute, events, weight, first, last, doc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    facts,
                )
                db.executemany(
                    "INSERT OR IGNORE INTO incident_members (id, incident, kind, minute)"
                    " VALUES (?, ?, ?, ?)",
                    members,
                )
                db.executemany("INSERT OR IGNORE INTO incident_minutes VALUES (?, ?, ?)", rows)

        if facts or rows:
            await self._run(insert)

    async def minute_counts(self, start: dt.datetime, end: dt.datetime) -> list[WorkerMinute]:
        sql = "SELECT doc FROM incident_minutes WHERE id >= ? AND id < ?"
        args = (minute_key(start), minute_key(end + MINUTE))

        def read(db: sqlite3.Connection) -> list[str]:
            return [row[0] for row in db.execute(sql, args)]

        return [WorkerMinute.from_doc(msgspec.json.decode(doc)) for doc in await self._run(read)]

    async def publish_watermark(self, worker: str, mark: WorkerMark) -> None:
        args = (
            worker,
            _maybe_t(mark.newest),
            _t(mark.arrival),
            _maybe_t(mark.first),
            _maybe_t(mark.pruned_before),
        )
        sql = (
            "INSERT OR REPLACE INTO incident_marks (worker, newest, arrival, first, pruned_before)"
            " VALUES (?, ?, ?, ?, ?)"
        )

        def upsert(db: sqlite3.Connection) -> None:
            with db:
                db.execute(sql, args)

        await self._run(upsert)

    async def watermarks(self) -> dict[str, WorkerMark]:
        sql = "SELECT worker, newest, arrival, first, pruned_before FROM incident_marks"
        rows = await self._run(lambda db: db.execute(sql).fetchall())
        return {
            worker: WorkerMark(
                _maybe_parse(newest), _parse(arrival), _maybe_parse(first), _maybe_parse(pruned)
            )
            for worker, newest, arrival, first, pruned in rows
        }

    async def add_transition(self, transition: Transition) -> bool:
        doc = _encoder.encode(transition.to_doc()).decode()

        def insert(db: sqlite3.Connection) -> bool:
            with db:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO incident_transitions (id, incident, doc)"
                    " VALUES (?, ?, ?)",
                    (transition.record_id, transition.incident_id, doc),
                )
                return cursor.rowcount == 1

        return bool(await self._run(insert))

    async def transitions(
        self, incident_ids: Collection[str] | None = None
    ) -> dict[str, list[Transition]]:
        args: tuple[str, ...] = ()
        sql = "SELECT doc FROM incident_transitions"
        if incident_ids is not None:
            if not incident_ids:
                return {}
            sql += " WHERE incident IN (SELECT value FROM json_each(?))"
            args = (_json(incident_ids),)
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        result: dict[str, list[Transition]] = {}
        for (doc,) in rows:
            step = Transition.from_doc(msgspec.json.decode(doc))
            result.setdefault(step.incident_id, []).append(step)
        return result

    async def contributions(self, incident_id: str, since: dt.datetime) -> list[Contribution]:
        sql = "SELECT doc FROM incident_facts WHERE incident = ? AND minute >= ? ORDER BY minute"
        rows = await self._run(lambda db: db.execute(sql, (incident_id, _t(since))).fetchall())
        return [Contribution.from_doc(msgspec.json.decode(doc)) for (doc,) in rows]

    async def member_counts(self, incident_id: str, since: dt.datetime) -> dict[str, int]:
        sql = (
            "SELECT kind, count(*) FROM incident_members"
            " WHERE incident = ? AND minute >= ? GROUP BY kind"
        )
        rows = await self._run(lambda db: db.execute(sql, (incident_id, _t(since))).fetchall())
        counts = {"user": 0, "session": 0}
        counts.update({str(kind): int(n) for kind, n in rows})
        return counts

    async def prune(
        self,
        *,
        minutes_before: dt.datetime,
        facts_before: dt.datetime | None = None,
        keep: Collection[str] = (),
    ) -> int:
        def delete(db: sqlite3.Connection) -> int:
            with db:
                deleted = db.execute(
                    "DELETE FROM incident_minutes WHERE minute < ?", (_t(minutes_before),)
                ).rowcount
                if facts_before is not None:
                    args = (_t(facts_before), _json(keep))
                    for table in ("incident_facts", "incident_members"):
                        deleted += db.execute(
                            f"DELETE FROM {table} WHERE minute < ?"  # noqa: S608 - constant names
                            " AND incident NOT IN (SELECT value FROM json_each(?))",
                            args,
                        ).rowcount
                    db.execute("DELETE FROM incident_marks WHERE arrival < ?", args[:1])
            return int(deleted)

        return int(await self._run(delete))

    async def clear(self) -> None:
        def delete(db: sqlite3.Connection) -> None:
            with db:
                for table in _TABLES:
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - table names are constants

        await self._run(delete)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._db.close()
