"""Contract for `NotificationOutbox`: every adapter runs these (provide `outbox` and `second`).

`second` is another client of the same storage (another worker process, in effect): a message
enqueued by both is there once, an attempt claimed by both is claimed by exactly one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from widelog.incidents.notify.model import Attempt, OutboxMessage

T0 = dt.datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=dt.UTC)
SEC = dt.timedelta(seconds=1)


def message(incident: str = "inc_a", kind: str = "open", at: dt.datetime = T0, seq: int = 0):
    return OutboxMessage(incident, 1, kind, at, seq)  # type: ignore[arg-type]


def claim(key: str, n: int = 1, worker: str = "w1") -> Attempt:
    return Attempt(key, n, worker, T0, T0 + 30 * SEC)


class NotificationOutboxContract:
    @pytest.fixture
    def outbox(self):
        raise NotImplementedError

    @pytest.fixture
    def second(self):
        raise NotImplementedError

    async def test_a_message_is_enqueued_once_whoever_enqueues_it(self, outbox, second):
        assert 2 == await outbox.enqueue([message(), message(kind="resolve")])
        later = dataclasses.replace(message(), created=T0 + 5 * SEC)
        assert 0 == await second.enqueue([later])  # the first insert's time stays
        assert 1 == await second.enqueue([later, message("inc_b")])

        assert [message(), message(kind="resolve")] == sorted(
            await second.messages(keys=["inc_a:1:open", "inc_a:1:resolve", "inc_x:1:open"]),
            key=lambda m: m.kind,
        )

    async def test_messages_read_back_by_creation_time_and_by_key(self, outbox, second):
        update = message(kind="update", at=T0 + 60 * SEC, seq=3)
        await outbox.enqueue([message(), update])

        assert [update] == await second.messages(since=T0 + SEC)
        assert {"inc_a:1:open", "inc_a:1:update:3"} == {m.key for m in await second.messages()}
        assert [] == await second.messages(keys=[])
        assert [] == await second.messages(since=T0 + 61 * SEC)

    async def test_an_attempt_is_claimed_by_exactly_one_of_many_concurrent_claimants(
        self, outbox, second
    ):
        key = message().key
        tries = [(outbox if i % 2 else second).claim(claim(key, worker=f"w{i}")) for i in range(10)]
        assert 1 == sum(await asyncio.gather(*tries))
        assert await second.claim(claim(key, 2))  # the next attempt is a claim of its own

    async def test_an_outcome_reads_back_with_its_claim(self, outbox, second):
        key = message().key
        first = claim(key)
        await outbox.claim(first)
        failed = dataclasses.replace(
            first, outcome="failed", finished=T0 + SEC, retry_at=T0 + 3 * SEC, detail="HTTP 500"
        )
        await outbox.finish(failed)
        await second.claim(claim(key, 2, "w2"))

        assert {key: [failed, claim(key, 2, "w2")]} == await second.attempts([key, "other"])
        assert {} == await second.attempts([])

    async def test_the_outbox_answers_a_ping(self, outbox):
        await outbox.ping()


class TestSQLiteNotificationOutbox(NotificationOutboxContract):
    @pytest.fixture
    async def outbox(self, tmp_path: Path):
        from widelog.incidents.notify.sqlite_outbox import SQLiteNotificationOutbox

        outbox = SQLiteNotificationOutbox(tmp_path / "events.sqlite3")
        yield outbox
        await outbox.close()

    @pytest.fixture
    async def second(self, tmp_path: Path):
        from widelog.incidents.notify.sqlite_outbox import SQLiteNotificationOutbox

        outbox = SQLiteNotificationOutbox(tmp_path / "events.sqlite3")
        yield outbox
        await outbox.close()


@pytest.mark.mongo
class TestMongoNotificationOutbox(NotificationOutboxContract):
    @pytest.fixture
    def database(self, live_services):
        from tests.live import unique

        return unique("widelog_test").replace("-", "_")

    @pytest.fixture
    async def outbox(self, database):
        from tests.live import mongo_url
        from widelog.incidents.notify.mongo_outbox import MongoNotificationOutbox

        outbox = MongoNotificationOutbox(mongo_url(database))
        yield outbox
        await outbox._client.drop_database(database)
        await outbox.close()

    @pytest.fixture
    async def second(self, database):
        from tests.live import mongo_url
        from widelog.incidents.notify.mongo_outbox import MongoNotificationOutbox

        outbox = MongoNotificationOutbox(mongo_url(database))
        yield outbox
        await outbox.close()
