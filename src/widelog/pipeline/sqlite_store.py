"""The embedded store: events in one SQLite file (stdlib, WAL), keyed by `event_id`.

A few top-level fields get their own indexed columns for the queries operators run (time, request
id, route, error code); the whole event is kept as JSON beside them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from widelog.events.event import is_error
from widelog.pipeline.conflicts import CONFLICT_REASON, conflict_id, content_hash
from widelog.pipeline.ports import DeadLetter, EventQuery, WriteResult
from widelog.sampling.counts import CountRecord
from widelog.sampling.reweighting import weight_of
from widelog.sqlite_db import SQLiteDatabase

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Mapping, Sequence

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id   TEXT PRIMARY KEY,
    timestamp  TEXT,
    request_id TEXT,
    route      TEXT,
    status     INTEGER,
    error_code TEXT,
    is_error   INTEGER NOT NULL,
    doc        TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_timestamp ON events (timestamp);
CREATE INDEX IF NOT EXISTS events_request_id ON events (request_id);
CREATE INDEX IF NOT EXISTS events_route ON events (route, timestamp);
CREATE INDEX IF NOT EXISTS events_error_code ON events (error_code, timestamp)
    WHERE error_code IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_status ON events (status, timestamp);
CREATE INDEX IF NOT EXISTS events_session ON events (json_extract(doc, '$.session_id'), timestamp);
CREATE INDEX IF NOT EXISTS events_model ON events (json_extract(doc, '$.llm.model'), timestamp);
CREATE TABLE IF NOT EXISTS request_counts (
    id      TEXT PRIMARY KEY,
    minute  TEXT NOT NULL,
    version INTEGER NOT NULL,
    doc     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_counts_minute ON request_counts (minute);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    letter_id   TEXT UNIQUE,
    received_at TEXT NOT NULL,
    source      TEXT NOT NULL,
    error       TEXT NOT NULL,
    payload     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts (
    id           TEXT PRIMARY KEY,
    event_id     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    stored_hash  TEXT NOT NULL,
    doc          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conflicts_event_id ON conflicts (event_id, received_at);
"""

_INSERT = (
    "INSERT OR IGNORE INTO events"
    " (event_id, timestamp, request_id, route, status, error_code, is_error, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_COUNTS = (
    "INSERT INTO request_counts (id, minute, version, doc) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET minute = excluded.minute, version = excluded.version,"
    " doc = excluded.doc WHERE excluded.version > request_counts.version"
)
_encoder = msgspec.json.Encoder(enc_hook=str)
_IDS_PER_QUERY = 500
_MINUTE = dt.timedelta(minutes=1)


def _section(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def _row(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    http = _section(doc, "http")
    error = _section(doc, "error")
    status = http.get("status")
    return (
        doc["event_id"],
        _sortable(doc.get("timestamp", "")),
        doc.get("request_id"),
        http.get("route"),
        status if isinstance(status, int) else None,
        error.get("code"),
        int(is_error(doc)),
        _encoder.encode(doc).decode(),
    )


def _record_conflict(db: sqlite3.Connection, row: tuple[Any, ...], digest: str, now: str) -> bool:
    """For an id already stored: keep this version if its content differs (True: a conflict).

    The stored JSON is hashed only here, for the ids that collided; a version kept once already
    (a re-delivered conflicting event) is a plain duplicate.
    """
    event_id, doc = row[0], row[-1]
    stored = db.execute("SELECT doc FROM events WHERE event_id = ?", (event_id,)).fetchone()
    if stored is None:
        return False
    stored_hash = content_hash(msgspec.json.decode(stored[0]))
    if stored_hash == digest:
        return False
    inserted = db.execute(
        "INSERT OR IGNORE INTO conflicts"
        " (id, event_id, received_at, reason, content_hash, stored_hash, doc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (conflict_id(event_id, digest), event_id, now, CONFLICT_REASON, digest, stored_hash, doc),
    )
    return bool(inserted.rowcount == 1)


def _sortable(stamp: object) -> str:
    """Timestamps as RFC 3339 UTC text (what the transports carry), so they sort as text."""
    if isinstance(stamp, dt.datetime):
        return stamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(stamp)


# Filters of `find_events`: the expression of each must match an index's to use it.
_FILTERS = {
    "request_id": "request_id = ?",
    "route": "route = ?",
    "status": "status = ?",
    "error_code": "error_code = ?",
    "session_id": "json_extract(doc, '$.session_id') = ?",
    "model": "json_extract(doc, '$.llm.model') = ?",
}


def search_sql(query: EventQuery) -> tuple[str, list[Any]]:
    """The statement `find_events` runs, and its parameters (tests check its query plan)."""
    clauses, params = [], []
    for name, clause in _FILTERS.items():
        value = getattr(query, name)
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if query.since is not None:
        clauses.append("timestamp >= ?")
        params.append(_sortable(query.since))
    if query.until is not None:
        clauses.append("timestamp < ?")
        params.append(_sortable(query.until))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # Only the fixed clauses above are formatted in; every value is a bound parameter.
    sql = f"SELECT doc FROM events {where} ORDER BY timestamp DESC LIMIT ?"  # noqa: S608
    return sql, [*params, query.limit]


def _from_json(text: str) -> dict[str, Any]:
    """The stored event, with `timestamp` as an aware datetime like every store returns it."""
    doc: dict[str, Any] = msgspec.json.decode(text)
    stamp = doc.get("timestamp")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            doc["timestamp"] = dt.datetime.fromisoformat(stamp)
    return doc


class SQLiteEventStore:
    """`EventStore` on SQLite (`sqlite_db.py`: WAL, one connection, off the loop)."""

    def __init__(self, path: str | Path, *, retention_days: int = 0) -> None:
        self._db = SQLiteDatabase(path, schema=_SCHEMA)
        self._run = self._db.run
        self._retention_days = retention_days

    async def expire(self, *, now: dt.datetime | None = None) -> int:
        """Delete events older than the retention period (0 keeps them all); returns how many."""
        if not self._retention_days:
            return 0
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=self._retention_days)

        def delete(db: sqlite3.Connection) -> int:
            with db:
                deleted: int = db.execute(
                    "DELETE FROM events WHERE timestamp < ?", (_sortable(cutoff),)
                ).rowcount
                db.execute("DELETE FROM request_counts WHERE minute < ?", (_sortable(cutoff),))
                return deleted

        return await self._run(delete)

    async def write_batch(self, events: Sequence[Mapping[str, Any]]) -> WriteResult:
        result = WriteResult()
        rows: list[tuple[int, tuple[Any, ...]]] = []
        for index, doc in enumerate(events):
            try:
                rows.append((index, _row(doc)))
            except (KeyError, TypeError, ValueError) as exc:
                result.rejected.append((index, f"unstorable event: {exc!r}"))

        now = dt.datetime.now(dt.UTC).isoformat()

        def insert(db: sqlite3.Connection) -> None:
            with db:  # one transaction per batch, conflicts included
                for index, row in rows:
                    if db.execute(_INSERT, row).rowcount == 1:
                        result.inserted += 1
                    elif _record_conflict(db, row, content_hash(events[index]), now):
                        result.conflict_indexes.append(index)
                    else:
                        result.duplicate_indexes.append(index)

        await self._run(insert)
        return result

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        now = dt.datetime.now(dt.UTC).isoformat()
        rows = [
            (letter.letter_id, now, letter.source, letter.error, letter.payload)
            for letter in letters
        ]

        def insert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT OR IGNORE INTO dead_letters"
                    " (letter_id, received_at, source, error, payload) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )

        await self._run(insert)

    async def write_request_counts(self, records: Sequence[CountRecord]) -> None:
        """Insert each record, or replace the stored one if this one's version is higher."""
        rows = [
            (r.id, _sortable(r.minute), r.version, _encoder.encode(r.to_doc()).decode())
            for r in records
        ]

        def upsert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(_UPSERT_COUNTS, rows)

        await self._run(upsert)

    async def request_counts(
        self, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[CountRecord]:
        low = _sortable(since) if since is not None else ""
        high = _sortable(until) if until is not None else "\uffff"

        def select(db: sqlite3.Connection) -> list[str]:
            sql = "SELECT doc FROM request_counts WHERE minute >= ? AND minute < ?"
            return [doc for (doc,) in db.execute(sql, (low, high))]

        return [CountRecord.from_doc(msgspec.json.decode(doc)) for doc in await self._run(select)]

    async def sampled_weights(
        self,
        scope: Mapping[str, str | None],
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        exclude: Collection[tuple[str, dt.datetime]] = (),
    ) -> list[tuple[str | None, dt.datetime | None, float]]:
        clauses = ["timestamp >= ?", "timestamp < ?"]
        params: list[Any] = [
            _sortable(since) if since is not None else "",
            _sortable(until) if until is not None else "\uffff",
        ]
        for emitter, minute in exclude:
            clauses.append(
                "NOT (json_extract(doc, '$.emitter') IS ? AND timestamp >= ? AND timestamp < ?)"
            )
            params += [emitter, _sortable(minute), _sortable(minute + _MINUTE)]
        for path, value in scope.items():
            column = "route" if path == "http.route" else "json_extract(doc, ?)"
            if column != "route":
                params.append("$." + ".".join(f'"{part}"' for part in path.split(".")))
            if value is None:
                clauses.append(f"{column} IS NULL")
            else:
                clauses.append(f"{column} = ?")
                params.append(value)
        # Only fixed clauses and `?` placeholders are formatted in.
        sql = (
            "SELECT json_extract(doc, '$.emitter'), timestamp, json_extract(doc, '$.sampling')"  # noqa: S608
            f" FROM events WHERE {' AND '.join(clauses)}"
        )

        def select(db: sqlite3.Connection) -> list[tuple[Any, str, str | None]]:
            return db.execute(sql, params).fetchall()

        rows = []
        for emitter, stamp, sampling in await self._run(select):
            moment = None
            with contextlib.suppress(ValueError, TypeError):
                moment = dt.datetime.fromisoformat(stamp)
            doc = {"sampling": msgspec.json.decode(sampling)} if sampling else {}
            rows.append((emitter if isinstance(emitter, str) else None, moment, weight_of(doc)))
        return rows

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        def select(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT doc FROM events WHERE event_id = ?", (event_id,)).fetchone()
            return None if row is None else str(row[0])

        doc = await self._run(select)
        return None if doc is None else _from_json(doc)

    async def count_events(
        self, *, errors_only: bool = False, request_ids: Collection[str] | None = None
    ) -> int:
        errors = " AND is_error = 1" if errors_only else ""
        # S608: the SQL is built from fixed clauses and `?` placeholders only.
        sql = f"SELECT count(*) FROM events WHERE request_id IN ({{}}){errors}"  # noqa: S608

        def count(db: sqlite3.Connection) -> int:
            if request_ids is None:
                return int(db.execute(f"SELECT count(*) FROM events WHERE 1{errors}").fetchone()[0])  # noqa: S608
            ids = list(request_ids)
            chunks = (ids[i : i + _IDS_PER_QUERY] for i in range(0, len(ids), _IDS_PER_QUERY))
            # Chunks: SQLite caps the number of bound parameters of one statement.
            return sum(
                int(db.execute(sql.format(",".join("?" * len(c))), c).fetchone()[0]) for c in chunks
            )

        return await self._run(count)

    async def find_events(self, query: EventQuery) -> list[dict[str, Any]]:
        sql, params = search_sql(query)

        def select(db: sqlite3.Connection) -> list[str]:
            return [doc for (doc,) in db.execute(sql, params)]

        return [_from_json(doc) for doc in await self._run(select)]

    async def scan_events(self, *, batch_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
        after = ""
        while True:

            def page(db: sqlite3.Connection, after: str = after) -> list[tuple[str, str]]:
                return db.execute(
                    "SELECT event_id, doc FROM events WHERE event_id > ? ORDER BY event_id LIMIT ?",
                    (after, batch_size),
                ).fetchall()

            rows = await self._run(page)
            for _, doc in rows:
                yield _from_json(doc)
            if len(rows) < batch_size:
                return
            after = rows[-1][0]

    async def find_conflicts(self, event_id: str) -> list[dict[str, Any]]:
        def select(db: sqlite3.Connection) -> list[tuple[str, str, str, str, str]]:
            return db.execute(
                "SELECT received_at, reason, content_hash, stored_hash, doc FROM conflicts"
                " WHERE event_id = ? ORDER BY received_at, id",
                (event_id,),
            ).fetchall()

        return [
            {
                "event_id": event_id,
                "received_at": dt.datetime.fromisoformat(received_at),
                "reason": reason,
                "content_hash": digest,
                "stored_hash": stored,
                "event": _from_json(doc),
            }
            for received_at, reason, digest, stored, doc in await self._run(select)
        ]

    async def count_conflicts(self) -> int:
        sql = "SELECT count(*) FROM conflicts"
        return int((await self._run(lambda db: db.execute(sql).fetchone()))[0])

    async def count_dead_letters(self) -> int:
        sql = "SELECT count(*) FROM dead_letters"
        return int((await self._run(lambda db: db.execute(sql).fetchone()))[0])

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._db.close()
