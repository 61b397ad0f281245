"""`IncidentStore` on MongoDB (PyMongo async); also runs on FerretDB.

Only unique inserts change state (`insert_many(ordered=False)`, duplicate key 11000 means "already
recorded"), and counts are summed in Python from plain `find`s. Both are deliberate: FerretDB 1.24
on SQLite loses concurrent `$inc`/`findAndModify` updates of one document and lets several
conditional updates "win", and its `$group` summed an integer field to 0 in our probe; unique
`_id` inserts are atomic on both servers.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from widelog.incidents.model import Contribution, MinuteTotals, Transition, parse_time
from widelog.pipeline.mongo_store import mongo_client

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from pymongo.asynchronous.collection import AsyncCollection

    from widelog.incidents.model import ScopeCount

DUPLICATE_KEY = 11000


def _time(value: object) -> dt.datetime:
    moment = parse_time(value)
    if moment is None:
        raise ValueError(f"not a stored time: {value!r}")
    return moment


async def _insert_new(
    collection: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]]
) -> int:
    """Insert what is not there yet; return how many were new. Other write errors raise."""
    if not docs:
        return 0
    try:
        result = await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise
        return len(docs) - len(errors)
    return len(result.inserted_ids)


class MongoIncidentStore:
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
        self._scopes = self.database[f"{prefix}scope_counts"]
        self._facts = self.database[f"{prefix}facts"]
        self._members = self.database[f"{prefix}members"]
        self._transitions = self.database[f"{prefix}transitions"]
        self._indexed = False

    async def ensure_indexes(self) -> None:
        if self._indexed:
            return
        await self._scopes.create_index([("scope", ASCENDING), ("minute", ASCENDING)], name="scope")
        await self._scopes.create_index([("minute", ASCENDING)], name="minute")
        await self._facts.create_index(
            [("incident", ASCENDING), ("minute", ASCENDING)], name="incident"
        )
        await self._facts.create_index([("minute", ASCENDING)], name="minute")
        await self._members.create_index(
            [("incident", ASCENDING), ("kind", ASCENDING), ("minute", ASCENDING)], name="incident"
        )
        await self._transitions.create_index([("incident", ASCENDING)], name="incident")
        self._indexed = True

    async def add_scope_counts(self, counts: Sequence[ScopeCount], *, token: str) -> None:
        await self.ensure_indexes()
        docs = [
            {
                "_id": c.record_id(token),
                "scope": c.scope_id,
                "minute": c.minute,
                "events": c.events,
                "weight": float(c.weight),
            }
            for c in counts
        ]
        await _insert_new(self._scopes, docs)

    async def add_contributions(self, contributions: Sequence[Contribution], *, token: str) -> None:
        await self.ensure_indexes()
        facts, members = [], []
        for part in contributions:
            if part.first is None or part.last is None:
                continue
            facts.append({"_id": part.record_id(token), **part.to_doc()})
            for kind, hashes in (("user", part.users), ("session", part.sessions)):
                members += [
                    {
                        "_id": f"{part.incident_id}|{kind}|{h}",
                        "incident": part.incident_id,
                        "kind": kind,
                        "minute": part.minute,
                    }
                    for h in hashes
                ]
        # Facts first: a member is only ever counted for a group whose facts are stored.
        await _insert_new(self._facts, facts)
        await _insert_new(self._members, members)

    async def group_series(
        self, incident_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, MinuteTotals]]:
        if not incident_ids:
            return {}
        await self.ensure_indexes()
        query = {"incident": {"$in": list(incident_ids)}, "minute": {"$gte": start, "$lte": end}}
        fields = {"incident": 1, "minute": 1, "events": 1, "weight": 1, "first": 1, "last": 1}
        result: dict[str, dict[dt.datetime, MinuteTotals]] = {}
        async for doc in self._facts.find(query, fields):
            minute = _time(doc["minute"])
            totals = MinuteTotals(
                int(doc["events"]), float(doc["weight"]), _time(doc["first"]), _time(doc["last"])
            )
            series = result.setdefault(str(doc["incident"]), {})
            series[minute] = series[minute].plus(totals) if minute in series else totals
        return result

    async def scope_series(
        self, scope_ids: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[dt.datetime, float]]:
        if not scope_ids:
            return {}
        await self.ensure_indexes()
        query = {"scope": {"$in": list(scope_ids)}, "minute": {"$gte": start, "$lte": end}}
        result: dict[str, dict[dt.datetime, float]] = {}
        async for doc in self._scopes.find(query, {"scope": 1, "minute": 1, "weight": 1}):
            series = result.setdefault(str(doc["scope"]), {})
            minute = _time(doc["minute"])
            series[minute] = series.get(minute, 0.0) + float(doc["weight"])
        return result

    async def last_event_before(self, incident_id: str, before: dt.datetime) -> dt.datetime | None:
        cursor = (
            self._facts.find({"incident": incident_id, "minute": {"$lt": before}}, {"last": 1})
            .sort([("last", DESCENDING)])
            .limit(1)
        )
        async for doc in cursor:
            return _time(doc["last"])
        return None

    async def add_transition(self, transition: Transition) -> bool:
        await self.ensure_indexes()
        try:
            await self._transitions.insert_one({"_id": transition.record_id, **transition.to_doc()})
        except DuplicateKeyError:
            return False
        return True

    async def transitions(
        self, incident_ids: Collection[str] | None = None
    ) -> dict[str, list[Transition]]:
        query: Mapping[str, Any] = (
            {} if incident_ids is None else {"incident": {"$in": list(incident_ids)}}
        )
        if incident_ids is not None and not incident_ids:
            return {}
        result: dict[str, list[Transition]] = {}
        async for doc in self._transitions.find(query):
            step = Transition.from_doc(doc)
            result.setdefault(step.incident_id, []).append(step)
        return result

    async def contributions(self, incident_id: str, since: dt.datetime) -> list[Contribution]:
        cursor = self._facts.find({"incident": incident_id, "minute": {"$gte": since}}).sort(
            [("minute", ASCENDING)]
        )
        return [Contribution.from_doc(doc) async for doc in cursor]

    async def member_counts(self, incident_id: str, since: dt.datetime) -> dict[str, int]:
        return {
            kind: await self._members.count_documents(
                {"incident": incident_id, "kind": kind, "minute": {"$gte": since}}
            )
            for kind in ("user", "session")
        }

    async def prune(self, *, before: dt.datetime, keep: Collection[str]) -> int:
        deleted = (await self._scopes.delete_many({"minute": {"$lt": before}})).deleted_count
        query = {"minute": {"$lt": before}, "incident": {"$nin": list(keep)}}
        for collection in (self._facts, self._members):
            deleted += (await collection.delete_many(query)).deleted_count
        return deleted

    async def clear(self) -> None:
        for collection in (self._scopes, self._facts, self._members, self._transitions):
            await collection.delete_many({})

    async def ping(self) -> None:
        await self._client.admin.command("ping")

    async def close(self) -> None:
        await self._client.close()
