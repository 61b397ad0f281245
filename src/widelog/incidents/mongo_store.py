"""`IncidentStore` on MongoDB (PyMongo async); also runs on FerretDB.

Only unique inserts change state (`insert_many(ordered=False)`, duplicate key 11000 means "already
recorded"), and counts are summed in Python from plain `find`s. Both are deliberate: FerretDB 1.24
on SQLite loses concurrent `$inc`/`findAndModify` updates of one document and lets several
conditional updates "win", and its `$group` summed an integer field to 0 in our probe; unique
`_id` inserts are atomic on both servers.
"""

from __future__ import annotations

import datetime as dt
import zlib
from typing import TYPE_CHECKING, Any

import msgspec
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from widelog.incidents.model import (
    MINUTE,
    Contribution,
    Transition,
    WorkerMinute,
    minute_key,
    parse_time,
)
from widelog.incidents.watermark import WorkerMark
from widelog.pipeline.mongo_store import insert_new, mongo_client

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence


def _time(value: object) -> dt.datetime:
    moment = parse_time(value)
    if moment is None:
        raise ValueError(f"not a stored time: {value!r}")
    return moment


# A minute's counts are one compressed MessagePack value: thousands of scopes as BSON fields made
# FerretDB (which stores every field with its type, in JSON) spend ~60 ms on each insert and
# read, and every read of minute counts decodes the whole collection (zlib level 1: 341 KB of
# MessagePack for 2,000 events over 2,000 routes become 47 KB, in ~1 ms).
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def _pack(doc: dict[str, Any]) -> bytes:
    return zlib.compress(_encode(doc), 1)


def _unpack(packed: bytes) -> Any:
    return _decode(zlib.decompress(packed))


def _id_range(low: str, high: str) -> dict[str, Any]:
    return {"_id": {"$gte": low, "$lt": high}}


class MongoIncidentStore:
    """The incident store on MongoDB or FerretDB; the judging reads are `_id` ranges.

    FerretDB 1.24 (SQLite) scans a collection for every find, replace or delete, even by `_id`
    (docs/incidents.md says why); only inserts use its index. So the records written per batch
    are inserted, and the ones read per judging step (minute counts) are kept few by `prune`.
    The summaries' reads (one incident's facts, its members, the transitions) and the prune
    scan too; they run per request, per sweep, or (the minute counts' prune) every few judged
    minutes, never per batch.
    """

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        prefix: str = "incident_",
        timeout_ms: int = 2000,
    ) -> None:
        self._client = mongo_client(url, timeout_ms=timeout_ms)
        self.database = self._client.get_default_database(database or "widelog")
        self._minutes = self.database[f"{prefix}minutes"]  # each worker's counts per minute
        self._records = self.database[f"{prefix}records"]  # facts and members
        self._transitions = self.database[f"{prefix}transitions"]
        self._marks = self.database[f"{prefix}watermarks"]

    async def add_batch(
        self, contributions: Sequence[Contribution], minutes: Sequence[WorkerMinute], *, token: str
    ) -> None:
        # Facts and members in one collection (`incident|minute|…`, `incident|user|…`), then
        # the counts: two `insert_many`s, which FerretDB does not scan for (a replace does).
        docs: list[dict[str, Any]] = []
        for part in contributions:
            if part.first is None or part.last is None:
                continue
            docs.append({"_id": part.record_id(token), **part.to_doc()})
            for kind, hashes in (("user", part.users), ("session", part.sessions)):
                docs += [
                    {"_id": f"{part.incident_id}|{kind}|{h}", "incident": part.incident_id,
                     "minute": part.minute}
                    for h in sorted(hashes)
                ]  # fmt: skip
        await insert_new(self._records, docs)
        counts = [
            {"_id": c.record_id(token), "minute": c.minute, "packed": _pack(c.to_doc())}
            for c in minutes
        ]
        await insert_new(self._minutes, counts)

    async def minute_counts(self, start: dt.datetime, end: dt.datetime) -> list[WorkerMinute]:
        query = _id_range(minute_key(start), minute_key(end + MINUTE))
        return [
            WorkerMinute.from_doc(_unpack(doc["packed"]) if "packed" in doc else doc)
            async for doc in self._minutes.find(query)
        ]

    async def publish_watermark(self, worker: str, mark: WorkerMark) -> None:
        # One writer per document (the worker itself), so a replace is safe even on FerretDB.
        doc = {
            "newest": mark.newest,
            "arrival": mark.arrival,
            "first": mark.first,
            "pruned_before": mark.pruned_before,
        }
        await self._marks.replace_one({"_id": worker}, doc, upsert=True)

    async def watermarks(self) -> dict[str, WorkerMark]:
        return {
            str(doc["_id"]): WorkerMark(
                parse_time(doc.get("newest")),
                _time(doc["arrival"]),
                parse_time(doc.get("first")),
                parse_time(doc.get("pruned_before")),
            )
            async for doc in self._marks.find({})
        }

    async def add_transition(self, transition: Transition) -> bool:
        try:
            await self._transitions.insert_one({"_id": transition.record_id, **transition.to_doc()})
        except DuplicateKeyError:
            return False
        return True

    async def transitions(
        self, incident_ids: Collection[str] | None = None
    ) -> dict[str, list[Transition]]:
        if incident_ids is None:
            docs = [doc async for doc in self._transitions.find({})]
        else:
            docs = []
            for iid in incident_ids:
                docs += [d async for d in self._transitions.find(_id_range(f"{iid}|", f"{iid}|~"))]
        result: dict[str, list[Transition]] = {}
        for doc in docs:
            step = Transition.from_doc(doc)
            result.setdefault(step.incident_id, []).append(step)
        return result

    async def contributions(self, incident_id: str, since: dt.datetime) -> list[Contribution]:
        # ':' sorts right after the digits: the minute-keyed facts, not the members.
        query = _id_range(f"{incident_id}|{minute_key(since)}", f"{incident_id}|:")
        cursor = self._records.find(query).sort([("_id", ASCENDING)])
        return [Contribution.from_doc(doc) async for doc in cursor]

    async def member_counts(self, incident_id: str, since: dt.datetime) -> dict[str, int]:
        counts = {}
        for kind in ("user", "session"):
            query = {
                **_id_range(f"{incident_id}|{kind}|", f"{incident_id}|{kind}|~"),
                "minute": {"$gte": since},
            }
            counts[kind] = await self._records.count_documents(query)
        return counts

    async def prune(
        self,
        *,
        minutes_before: dt.datetime,
        facts_before: dt.datetime | None = None,
        keep: Collection[str] = (),
    ) -> int:
        # Scans (not per batch): of the small minutes collection at every sweep and every few
        # judged minutes, and, with `facts_before`, of every fact, for the groups that never
        # opened (hourly, from the sweep).
        query: dict[str, Any] = {"minute": {"$lt": minutes_before}}
        deleted = (await self._minutes.delete_many(query)).deleted_count
        if facts_before is not None:
            query = {"minute": {"$lt": facts_before}, "incident": {"$nin": list(keep)}}
            deleted += (await self._records.delete_many(query)).deleted_count
            await self._marks.delete_many({"arrival": {"$lt": facts_before}})
        return deleted

    async def clear(self) -> None:
        for collection in (self._minutes, self._records, self._transitions, self._marks):
            await collection.delete_many({})

    async def ping(self) -> None:
        await self._client.admin.command("ping")

    async def close(self) -> None:
        await self._client.close()
