"""MongoDB store on PyMongo's native async API; also runs on FerretDB (see README for limits).

`_id = event_id`, so `insert_many(ordered=False)` is idempotent: a re-delivered event fails with
duplicate-key error 11000 and is counted as already stored, and every other event of the batch is
inserted. Each document carries `_hash`, the hash of its content (`pipeline/conflicts.py`): for
the ids that collided, one query reads the stored hashes, and a different one is a conflict whose
version goes to the `conflicts` collection (an event stored before `_hash` existed counts as a
duplicate). Other per-document errors are rejections the consumer dead-letters; connection errors
raise, and the consumer retries the whole batch.

`timestamp` is stored as a BSON date so range queries and TTL retention work; it reads back as an
aware `datetime` (millisecond precision, as BSON dates are).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import bson
from bson import Binary
from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.errors import BulkWriteError, DocumentTooLarge, DuplicateKeyError, OperationFailure

from widelog.pipeline.conflicts import CONFLICT_REASON, conflict_id, content_hash
from widelog.pipeline.ports import DeadLetter, EventQuery, WriteResult
from widelog.sampling.counts import RECORD_KIND, CountRecord
from widelog.sampling.reweighting import weight_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Mapping, Sequence

    from pymongo.asynchronous.collection import AsyncCollection

log = logging.getLogger("widelog.mongo")
DUPLICATE_KEY = 11000
HASH = "_hash"  # the content hash stored with each event, never returned with it
NOT_IMPLEMENTED = 238
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_IDS_PER_QUERY = 1000
_MINUTE = dt.timedelta(minutes=1)
_UNENCODABLE = (
    InvalidDocument,
    DocumentTooLarge,
    OverflowError,
)  # FerretDB's answer to a TTL index
ERROR_FILTER = {
    "$or": [
        {"error.code": {"$exists": True, "$nin": [None, ""]}},
        {"http.status": {"$gte": 500}},
    ]
}


def mongo_client(url: str, *, timeout_ms: int) -> AsyncMongoClient[dict[str, Any]]:
    """A client that fails fast when the server is away (the consumer retries, not the driver).

    Aware datetimes, so `timestamp` reads back in UTC.
    """
    return AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 5, 10_000),
    )


def _to_document(event: Mapping[str, Any]) -> dict[str, Any]:
    doc = dict(event)
    doc["_id"] = doc["event_id"]
    doc[HASH] = content_hash(event)
    stamp = doc.get("timestamp")
    if isinstance(stamp, str):
        # An unparsable timestamp stays as sent: the event is still worth storing.
        with contextlib.suppress(ValueError):
            doc["timestamp"] = dt.datetime.fromisoformat(stamp)
    return doc


def _check_encodable(doc: Mapping[str, Any]) -> None:
    """Raise for what BSON cannot carry: integers beyond int64, documents over 16 MiB."""
    if len(bson.encode(doc)) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge("document larger than 16 MiB")


def _from_document(doc: dict[str, Any]) -> dict[str, Any]:
    doc.pop("_id", None)
    doc.pop(HASH, None)
    stamp = doc.get("timestamp")
    if isinstance(stamp, dt.datetime) and stamp.tzinfo is None:
        doc["timestamp"] = stamp.replace(tzinfo=dt.UTC)
    return doc


async def insert_new(
    collection: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]]
) -> set[int]:
    """Insert what is not there yet (`_id`); the indexes of the documents that already were.

    Insert-only writes are how widelog stays idempotent on FerretDB too, which loses concurrent
    updates of one document; any error other than a duplicate key (or a write concern error)
    raises, so the caller retries.
    """
    if not docs:
        return set()
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if exc.details.get("writeConcernErrors") or any(
            e.get("code") != DUPLICATE_KEY for e in errors
        ):
            raise
        return {e["index"] for e in errors}
    return set()


class MongoEventStore:
    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        events: str = "events",
        dead_letters: str = "dead_letters",
        request_counts: str = "request_counts",
        conflicts: str = "conflicts",
        timeout_ms: int = 2000,
        retention_days: int = 0,
    ) -> None:
        self._client = mongo_client(url, timeout_ms=timeout_ms)
        db = self._client.get_default_database(database or "widelog")
        self._events = db[events]
        self._dead = db[dead_letters]
        self._counts = db[request_counts]
        self._conflicts = db[conflicts]
        self._retention_days = retention_days
        self.ttl_index = False
        self._indexed = False

    async def ensure_indexes(self) -> None:
        """The indexes operators' queries need; a TTL index where the server supports it.

        An index the server refuses (say, an existing one with other options after a retention
        change) is logged and skipped: it must never stop events from being stored.
        """
        if self._indexed:
            return
        specs: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
            ([("request_id", ASCENDING)], {"name": "request_id"}),
            ([("error.code", ASCENDING), ("timestamp", ASCENDING)], {"name": "error_code_time"}),
            ([("http.route", ASCENDING), ("timestamp", ASCENDING)], {"name": "route_time"}),
            ([("http.status", ASCENDING), ("timestamp", ASCENDING)], {"name": "status_time"}),
            ([("session_id", ASCENDING), ("timestamp", ASCENDING)], {"name": "session_time"}),
            ([("llm.model", ASCENDING), ("timestamp", ASCENDING)], {"name": "model_time"}),
        ]
        if self._retention_days:
            try:
                await self._events.create_index(
                    [("timestamp", ASCENDING)],
                    name="timestamp_ttl",
                    expireAfterSeconds=self._retention_days * 86400,
                )
                self.ttl_index = True
            except OperationFailure as exc:
                if exc.code == NOT_IMPLEMENTED:
                    log.info("no TTL index on this server: retention runs as a periodic delete")
                else:  # e.g. a TTL index with other options exists: change it with collMod
                    log.error(
                        "TTL index not created (%s); retention runs as a periodic delete", exc
                    )
        if not self.ttl_index:
            specs.append(([("timestamp", ASCENDING)], {"name": "timestamp"}))
        indexes = [(self._events, keys, options) for keys, options in specs]
        indexes.append((self._conflicts, [("event_id", ASCENDING)], {"name": "event_id"}))
        for collection, keys, options in indexes:
            try:
                await collection.create_index(keys, **options)
            except OperationFailure as exc:
                log.error("index %s not created, events are stored anyway: %s", options, exc)
        try:
            await self._counts.create_index([("minute", ASCENDING)], name="minute")
        except OperationFailure as exc:
            log.error("index on request_counts.minute not created: %s", exc)
        self._indexed = True

    async def expire(self, *, now: dt.datetime | None = None) -> int:
        """Delete events past retention (where no TTL index does it); returns how many.

        Count records of those minutes go too (whatever the TTL index does for the events).
        """
        if not self._retention_days:
            return 0
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=self._retention_days)
        await self._counts.delete_many({"minute": {"$lt": cutoff}})
        if self.ttl_index:
            return 0
        result = await self._events.delete_many({"timestamp": {"$lt": cutoff}})
        return result.deleted_count

    async def write_batch(self, events: Sequence[Mapping[str, Any]]) -> WriteResult:
        await self.ensure_indexes()
        result = WriteResult()
        docs, index_of = [], []
        for index, event in enumerate(events):
            try:
                docs.append(_to_document(event))
                index_of.append(index)
            except (KeyError, TypeError) as exc:
                result.rejected.append((index, f"unstorable event: {exc!r}"))
        if not docs:
            return result
        try:
            inserted = await self._events.insert_many(docs, ordered=False)
            result.inserted = len(inserted.inserted_ids)
        except _UNENCODABLE:
            # One document BSON cannot carry fails the whole call, on every retry: find it, set
            # it aside, and write the rest.
            encodable = []
            for i, doc in zip(index_of, docs, strict=True):
                try:
                    _check_encodable(doc)
                    encodable.append(i)
                except _UNENCODABLE as exc:
                    result.rejected.append((i, f"not storable as BSON: {exc!r}"[:500]))
            rest = await self.write_batch([events[i] for i in encodable])
            result.inserted = rest.inserted
            result.duplicate_indexes += [encodable[i] for i in rest.duplicate_indexes]
            result.conflict_indexes += [encodable[i] for i in rest.conflict_indexes]
            result.rejected += [(encodable[i], reason) for i, reason in rest.rejected]
        except BulkWriteError as exc:
            details = exc.details
            if details.get("writeConcernErrors"):
                # Written, but not as durably as asked (e.g. w:majority timed out): a rollback
                # could still lose it, so the batch is retried, and the duplicates absorbed.
                raise
            failed = 0
            collided: list[int] = []  # positions in `docs`
            for error in details.get("writeErrors", []):
                failed += 1
                if error.get("code") == DUPLICATE_KEY:
                    collided.append(error["index"])
                else:
                    reason = f"mongo error {error.get('code')}: {error.get('errmsg')}"
                    result.rejected.append((index_of[error["index"]], reason[:500]))
            result.inserted = details.get("nInserted", len(docs) - failed)
            conflicting = await self._record_conflicts([docs[k] for k in collided])
            for position, k in enumerate(collided):
                kind = (
                    result.conflict_indexes if position in conflicting else result.duplicate_indexes
                )
                kind.append(index_of[k])
        return result

    async def _record_conflicts(self, collided: list[dict[str, Any]]) -> set[int]:
        """Keep the versions whose content differs; their indexes in `collided`.

        A version kept once already (a re-delivered conflicting event) is a plain duplicate.
        """
        if not collided:
            return set()
        ids = list({doc["_id"] for doc in collided})
        stored: dict[str, Any] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            query = {"_id": {"$in": ids[start : start + _IDS_PER_QUERY]}}
            async for doc in self._events.find(query, {HASH: 1}):
                stored[doc["_id"]] = doc.get(HASH)
        now = dt.datetime.now(dt.UTC)
        records, positions = [], []
        for position, doc in enumerate(collided):
            stored_hash = stored.get(doc["_id"])
            if stored_hash is None or stored_hash == doc[HASH]:
                continue  # the same content, or stored before hashes (or expired since)
            event = {k: v for k, v in doc.items() if k not in ("_id", HASH)}
            records.append(
                {
                    "_id": conflict_id(doc["_id"], doc[HASH]),
                    "event_id": doc["_id"],
                    "received_at": now,
                    "reason": CONFLICT_REASON,
                    "content_hash": doc[HASH],
                    "stored_hash": stored_hash,
                    "event": event,
                }
            )
            positions.append(position)
        if not records:
            return set()
        known = await insert_new(self._conflicts, records)
        return {positions[i] for i in range(len(records)) if i not in known}

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Set letters aside; idempotent where a letter has an id (its source position).

        A retry, or a re-delivery of the same poison message, then adds nothing.
        """
        now = dt.datetime.now(dt.UTC)
        docs = []
        for letter in letters:
            doc = {
                "received_at": now,
                "source": letter.source,
                "error": letter.error,
                "payload": Binary(letter.payload),
            }
            if letter.letter_id is not None:
                doc["_id"] = letter.letter_id
            docs.append(doc)
        await insert_new(self._dead, docs)

    async def write_request_counts(self, records: Sequence[CountRecord]) -> None:
        """Upsert each record unless the stored copy has the same or a higher version.

        The filter `{_id, version < v}` misses a stored copy that is as new or newer, so the
        upsert tries an insert and fails on the `_id`: that duplicate key is the "ignored".
        """
        if not records:
            return
        await self.ensure_indexes()
        for record in records:
            doc = record.to_doc()
            doc["minute"] = record.minute
            del doc["id"], doc["record"]
            # One call each, not `bulk_write`: FerretDB answers an update batch with a
            # duplicate-key error without `nModified`, which PyMongo cannot read. Records are
            # few (one per emitter and minute).
            with contextlib.suppress(DuplicateKeyError):
                await self._counts.update_one(
                    {"_id": record.id, "version": {"$lt": record.version}},
                    {"$set": doc},
                    upsert=True,
                )

    async def request_counts(
        self, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[CountRecord]:
        minute = {"$gte": since, "$lt": until}
        where = {"minute": {k: v for k, v in minute.items() if v is not None}}
        cursor = self._counts.find(where if where["minute"] else {})
        return [CountRecord.from_doc({**doc, "record": RECORD_KIND}) async for doc in cursor]

    async def sampled_weights(
        self,
        scope: Mapping[str, str | None],
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        exclude: Collection[tuple[str, dt.datetime]] = (),
    ) -> list[tuple[str | None, dt.datetime | None, float]]:
        where: dict[str, Any] = dict(scope)
        stamp = {"$gte": since, "$lt": until}
        if any(v is not None for v in stamp.values()):
            where["timestamp"] = {k: v for k, v in stamp.items() if v is not None}
        if exclude:
            where["$nor"] = [
                {"emitter": emitter, "timestamp": {"$gte": minute, "$lt": minute + _MINUTE}}
                for emitter, minute in exclude
            ]
        projection = {"_id": 0, "emitter": 1, "timestamp": 1, "sampling": 1}
        rows = []
        async for doc in self._events.find(where, projection):
            emitter, stamp_ = doc.get("emitter"), _from_document(doc).get("timestamp")
            rows.append(
                (
                    emitter if isinstance(emitter, str) else None,
                    stamp_ if isinstance(stamp_, dt.datetime) else None,
                    weight_of(doc),
                )
            )
        return rows

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        doc = await self._events.find_one({"_id": event_id})
        return None if doc is None else _from_document(doc)

    async def count_events(
        self, *, errors_only: bool = False, request_ids: Collection[str] | None = None
    ) -> int:
        query = ERROR_FILTER if errors_only else {}
        if request_ids is None:
            return await self._events.count_documents(query)
        ids = list(request_ids)
        counted = 0
        for start in range(0, len(ids), _IDS_PER_QUERY):  # keeps each query well under 16 MiB
            chunk = ids[start : start + _IDS_PER_QUERY]
            counted += await self._events.count_documents({**query, "request_id": {"$in": chunk}})
        return counted

    async def find_events(self, query: EventQuery) -> list[dict[str, Any]]:
        await self.ensure_indexes()
        fields = {
            "request_id": query.request_id,
            "http.route": query.route,
            "http.status": query.status,
            "error.code": query.error_code,
            "session_id": query.session_id,
            "llm.model": query.model,
        }
        where: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        stamp = {"$gte": query.since, "$lt": query.until}
        if any(v is not None for v in stamp.values()):
            where["timestamp"] = {k: v for k, v in stamp.items() if v is not None}
        cursor = self._events.find(where, sort=[("timestamp", DESCENDING)], limit=query.limit)
        return [_from_document(doc) async for doc in cursor]

    async def scan_events(self, *, batch_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
        cursor = self._events.find({}, sort=[("_id", ASCENDING)], batch_size=batch_size)
        async for doc in cursor:
            yield _from_document(doc)

    async def find_conflicts(self, event_id: str) -> list[dict[str, Any]]:
        cursor = self._conflicts.find(
            {"event_id": event_id}, sort=[("received_at", ASCENDING), ("_id", ASCENDING)]
        )
        found = []
        async for record in cursor:
            record.pop("_id", None)
            record["event"] = _from_document(record["event"])
            found.append(record)
        return found

    async def count_conflicts(self) -> int:
        return await self._conflicts.count_documents({})

    async def count_dead_letters(self) -> int:
        return await self._dead.count_documents({})

    async def ping(self) -> None:
        await self._client.admin.command("ping")

    async def close(self) -> None:
        await self._client.close()
