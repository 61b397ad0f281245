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
    Contribution,
    MinuteCounts,
    Transition,
    count_id_range,
    minute_key,
    parse_time,
    scope_id_ranges,
)
from widelog.incidents.watermark import WorkerMark
from widelog.sqlite_db import SQLiteDatabase

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from widelog.incidents.model import GroupCount, ScopeCount

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incident_counts (
    id      TEXT PRIMARY KEY,
    events  INTEGER NOT NULL,
    weight  REAL NOT NULL,
    doc     TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incident_watermarks (
    worker  TEXT PRIMARY KEY,
    newest  TEXT,
    arrival TEXT NOT NULL
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
    "incident_counts",
    "incident_facts",
    "incident_members",
    "incident_transitions",
    "incident_watermarks",
)
_encoder = msgspec.json.Encoder()


def _t(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


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
        self._db = SQLiteDatabase(path, schema=_SCHEMA)
        self._run = self._db.run

    async def add_batch(
        self,
        scopes: Sequence[ScopeCount],
        groups: Sequence[GroupCount],
        contributions: Sequence[Contribution],
        *,
        token: str,
    ) -> None:
        rows: list[tuple[str, int, float, str | None]] = [
            (c.record_id(token), c.events, c.weight, None) for c in scopes
        ]
        rows += [
            (g.record_id(token), g.events, g.weight, _encoder.encode(g.to_doc()).decode())
            for g in groups
        ]
        facts, members = _fact_rows(contributions, token)

        def insert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT OR IGNORE INTO incident_counts (id, events, weight, doc)"
                    " VALUES (?, ?, ?, ?)",
                    rows,
                )
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

        if rows or facts:
            await self._run(insert)

    async def counts(self, start: dt.datetime | None, end: dt.datetime) -> MinuteCounts:
        sql = "SELECT id, events, weight, doc FROM incident_counts WHERE id >= ? AND id < ?"
        args = count_id_range(start, end)
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        result = MinuteCounts()
        for record_id, events, weight, doc in rows:
            decoded = None if doc is None else msgspec.json.decode(doc)
            result.add_record(record_id, int(events), float(weight), decoded)
        return result

    async def publish_watermark(self, worker: str, mark: WorkerMark) -> None:
        newest = None if mark.newest is None else _t(mark.newest)
        args = (worker, newest, _t(mark.arrival))

        def upsert(db: sqlite3.Connection) -> None:
            with db:
                db.execute("INSERT OR REPLACE INTO incident_watermarks VALUES (?, ?, ?)", args)

        await self._run(upsert)

    async def watermarks(self) -> dict[str, WorkerMark]:
        sql = "SELECT worker, newest, arrival FROM incident_watermarks"
        rows = await self._run(lambda db: db.execute(sql).fetchall())
        return {
            worker: WorkerMark(None if newest is None else _parse(newest), _parse(arrival))
            for worker, newest, arrival in rows
        }

    async def scope_series(
        self, scope_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, float]]:
        ranges = scope_id_ranges(scope_ids, start, end)
        sql = (
            "SELECT sum(weight) FROM incident_counts"
            " WHERE id >= ? AND id < ? AND id NOT LIKE '%|late'"
        )

        def read(db: sqlite3.Connection) -> list[tuple[str, dt.datetime, float | None]]:
            return [
                (scope, minute, db.execute(sql, (low, high)).fetchone()[0])
                for scope, minute, low, high in ranges
            ]

        result: dict[str, dict[dt.datetime, float]] = {}
        for scope, minute, weight in await self._run(read):
            if weight is not None:
                result.setdefault(scope, {})[minute] = float(weight)
        return result

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

    async def prune(self, *, before: dt.datetime, keep: Collection[str]) -> int:
        cut = minute_key(before)

        def delete(db: sqlite3.Connection) -> int:
            with db:
                old = db.execute(
                    "SELECT id FROM incident_counts WHERE id < ? AND doc IS NOT NULL", (cut,)
                ).fetchall()
                noise = {record_id.split("|")[2] for (record_id,) in old} - set(keep)
                deleted = db.execute("DELETE FROM incident_counts WHERE id < ?", (cut,)).rowcount
                for iid in sorted(noise):
                    deleted += db.execute(
                        "DELETE FROM incident_facts WHERE incident = ? AND minute < ?",
                        (iid, _t(before)),
                    ).rowcount
                    deleted += db.execute(
                        "DELETE FROM incident_members WHERE incident = ? AND minute < ?",
                        (iid, _t(before)),
                    ).rowcount
                db.execute("DELETE FROM incident_watermarks WHERE arrival < ?", (_t(before),))
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
