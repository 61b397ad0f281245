"""`NotificationOutbox` on MongoDB (and FerretDB): two insert-only collections.

`incident_outbox` holds each message under `_id` = its idempotency key; `incident_outbox_attempts`
holds claims (`key#n`) and outcomes (`key#n!`). Only unique inserts, for the reason the incident
store gives: FerretDB 1.24 loses concurrent updates of one document, and a claim by conditional
update could "win" twice there; a duplicate `_id` is refused atomically on both servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from widelog.incidents.notify.model import Attempt, OutboxMessage, merge_attempts, stored_time
from widelog.pipeline.mongo_store import insert_new, mongo_client

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Collection, Sequence


class MongoNotificationOutbox:
    """The outbox beside the MongoDB incident store (same database, collections of its own)."""

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
        self._messages = self.database[f"{prefix}outbox"]
        self._attempts = self.database[f"{prefix}outbox_attempts"]
        self._indexed = False

    async def _ensure_indexes(self) -> None:
        if not self._indexed:
            await self._messages.create_index([("created", ASCENDING)], name="created")
            await self._attempts.create_index([("key", ASCENDING)], name="key")
            self._indexed = True

    async def enqueue(self, messages: Sequence[OutboxMessage]) -> int:
        await self._ensure_indexes()
        docs = [
            {
                "_id": m.key,
                "incident": m.incident_id,
                "episode": m.episode,
                "kind": m.kind,
                "seq": m.seq,
                "created": m.created,
            }
            for m in messages
        ]
        return len(docs) - len(await insert_new(self._messages, docs))

    async def messages(
        self, *, since: dt.datetime | None = None, keys: Collection[str] | None = None
    ) -> list[OutboxMessage]:
        if keys is not None and not keys:
            return []
        query: dict[str, Any] = {}
        if since is not None:
            query["created"] = {"$gte": since}
        if keys is not None:
            query["_id"] = {"$in": list(keys)}
        return [
            OutboxMessage(
                str(doc["incident"]),
                int(doc["episode"]),
                doc["kind"],
                stored_time(doc["created"]),
                int(doc["seq"]),
            )
            async for doc in self._messages.find(query)
        ]

    async def attempts(self, keys: Collection[str]) -> dict[str, list[Attempt]]:
        if not keys:
            return {}
        claims: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        async for doc in self._attempts.find({"key": {"$in": list(keys)}}):
            (outcomes if str(doc["_id"]).endswith("!") else claims).append(doc)
        return merge_attempts(claims, outcomes)

    async def _insert(self, record_id: str, doc: dict[str, Any]) -> bool:
        await self._ensure_indexes()
        try:
            await self._attempts.insert_one({"_id": record_id, **doc})
        except DuplicateKeyError:
            return False
        return True

    async def claim(self, attempt: Attempt) -> bool:
        return await self._insert(attempt.claim_id, attempt.claim_doc())

    async def finish(self, attempt: Attempt) -> None:
        await self._insert(attempt.outcome_id, attempt.outcome_doc())

    async def ping(self) -> None:
        await self._client.admin.command("ping")

    async def close(self) -> None:
        await self._client.close()
