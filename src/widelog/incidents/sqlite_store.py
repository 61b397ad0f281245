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

from widelog.incidents.model import Contribution, MinuteTotals, Transition, parse_time
from widelog.sqlite_db import SQLiteDatabase

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from widelog.sqlite_db import SQLiteDatabase
from widelog.incidents.model import ScopeCount

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incident_scope_counts (
    id      TEXT PRIMARY KEY,
    scope   TEXT NOT NULL,
    minute  TEXT NOT NULL,
    events  INTEGER NOT NULL,
    weight  REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incident_scope_counts_scope ON incident_scope_counts (scope, minute);
CREATE INDEX IF NOT EXISTS incident_scope_counts_minute ON incident_scope_counts (minute);
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
_TABLES = ("incident_scope_counts", "incident_facts", "incident_members", "incident_transitions")
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


class SQLiteIncidentStore:
    """`IncidentStore` on SQLite, in the same file as the events (`sqlite_db.py`)."""

    def __init__(self, path: str | Path) -> None:
        self._db = SQLiteDatabase(path, schema=_SCHEMA)
        self._run = self._db.run

    async def add_scope_counts(self, counts: Sequence[ScopeCount], *, token: str) -> None:
        rows = [(c.record_id(token), c.scope_id, _t(c.minute), c.events, c.weight) for c in counts]

        def insert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT OR IGNORE INTO incident_scope_counts"
                    " (id, scope, minute, events, weight) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )

        if rows:
            await self._run(insert)

    async def add_contributions(self, contributions: Sequence[Contribution], *, token: str) -> None:
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
                    (f"{part.incident_id}|{kind}|{h}", part.incident_id, kind, minute)
                    for h in hashes
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

        if facts:
            await self._run(insert)

    async def group_series(
        self, incident_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, MinuteTotals]]:
        ids = list(incident_ids)
        if not ids:
            return {}
        sql = (
            "SELECT incident, minute, sum(events), sum(weight), min(first), max(last)"
            " FROM incident_facts WHERE incident IN (SELECT value FROM json_each(?))"
            " AND minute BETWEEN ? AND ?"
            " GROUP BY incident, minute"
        )
        args = (_json(ids), _t(start), _t(end))
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        result: dict[str, dict[dt.datetime, MinuteTotals]] = {}
        for incident, minute, events, weight, first, last in rows:
            totals = MinuteTotals(int(events), float(weight), _parse(first), _parse(last))
            result.setdefault(incident, {})[_parse(minute)] = totals
        return result

    async def scope_series(
        self, scope_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, float]]:
        ids = list(scope_ids)
        if not ids:
            return {}
        sql = (
            "SELECT scope, minute, sum(weight) FROM incident_scope_counts"
            " WHERE scope IN (SELECT value FROM json_each(?)) AND minute BETWEEN ? AND ?"
            " GROUP BY scope, minute"
        )
        args = (_json(ids), _t(start), _t(end))
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        result: dict[str, dict[dt.datetime, float]] = {}
        for scope, minute, weight in rows:
            result.setdefault(scope, {})[_parse(minute)] = float(weight)
        return result

    async def last_event_before(self, incident_id: str, before: dt.datetime) -> dt.datetime | None:
        sql = "SELECT max(last) FROM incident_facts WHERE incident = ? AND minute < ?"
        row = await self._run(lambda db: db.execute(sql, (incident_id, _t(before))).fetchone())
        return None if row is None or row[0] is None else _parse(row[0])

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
        args = (_t(before), _json(keep))

        def delete(db: sqlite3.Connection) -> int:
            with db:
                deleted = db.execute(
                    "DELETE FROM incident_scope_counts WHERE minute < ?", args[:1]
                ).rowcount
                deleted += db.execute(
                    "DELETE FROM incident_facts WHERE minute < ?"
                    " AND incident NOT IN (SELECT value FROM json_each(?))",
                    args,
                ).rowcount
                deleted += db.execute(
                    "DELETE FROM incident_members WHERE minute < ?"
                    " AND incident NOT IN (SELECT value FROM json_each(?))",
                    args,
                ).rowcount
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
