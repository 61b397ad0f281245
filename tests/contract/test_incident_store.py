"""Contract for `IncidentStore`: every adapter runs these (subclass and provide `store`/`second`).

`second` is another client of the same storage (another worker process, in effect): what one
records, the other reads, and concurrent writers never lose or duplicate a record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from widelog.incidents.model import (
    Contribution,
    DurationBucket,
    GroupCount,
    MessageStat,
    Tally,
    Transition,
    WindowStats,
    WorkerMinute,
)
from widelog.incidents.ports import IncidentStore
from widelog.incidents.watermark import WorkerMark

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
RULE = {"id": "errors", "window_s": 300, "quiet_s": 900, "scope": ["http.route"]}
KEY = (("error.code", "LLM_TIMEOUT"), ("http.route", "/v1/chat"))


def part(
    incident: str = "inc_a",
    minute: dt.datetime = T0,
    *,
    events: int = 2,
    weight: float = 2.0,
    first_s: float = 5.25,
    last_s: float = 50.5,
    users: tuple[str, ...] = (),
    sessions: tuple[str, ...] = (),
) -> Contribution:
    first = minute + dt.timedelta(seconds=first_s)
    item = Contribution(incident, "errors", KEY, "scope_chat", minute, events, weight, first)
    item.last = minute + dt.timedelta(seconds=last_s)
    item.durations = {400: DurationBucket(events, (2712.5, 2750.0))}
    item.dims = {"llm.model": {"m.1": events}, "http.status": {"504": events}}
    item.messages = {
        "k1": MessageStat("timed out after <num> ms", "timed out after 3 ms", first, 2)
    }
    item.samples = [(item.last, "req-2"), (first, "req-1")]
    item.users, item.sessions = set(users), set(sessions)
    return item


def counts(minute: dt.datetime, worker: str = "w1", n: int = 1) -> WorkerMinute:
    """A worker's counts of one minute: n requests on the chat scope, n matches of inc_a."""
    group = GroupCount("inc_a", "errors", KEY, "scope_chat", n, float(n))
    return WorkerMinute(minute, worker, {"scope_chat": 10.0 * n}, {"inc_a": group})


def step(incident: str = "inc_a", episode: int = 1, kind: str = "open") -> Transition:
    window = WindowStats(T0, 300, 12, 12.0, 1000.0)
    return Transition(
        incident, episode, "open" if kind == "open" else "resolve", T0 + MIN, "why", RULE, KEY,
        "scope_chat", window,
    )  # fmt: skip


class IncidentStoreContract:
    @pytest.fixture
    def store(self) -> IncidentStore:
        raise NotImplementedError

    @pytest.fixture
    def second(self) -> IncidentStore:
        raise NotImplementedError

    async def test_minute_counts_are_stored_once_per_write_and_read_by_minute_range(
        self, store, second
    ):
        await store.add_batch([], [counts(T0), counts(T0 + MIN)], token="b1")
        await store.add_batch([], [counts(T0, n=3)], token="b2")  # the same worker, later
        await store.add_batch([], [counts(T0, n=3)], token="b2")  # that write, retried
        await second.add_batch([], [counts(T0, "w2", 2)], token="b1")
        await second.add_batch([], [counts(T0 + 2 * MIN)], token="b3")

        def summed(found: list[WorkerMinute]) -> dict[tuple[dt.datetime, str], int]:
            total: dict[tuple[dt.datetime, str], int] = {}
            for c in found:
                where = (c.minute, c.worker)
                total[where] = total.get(where, 0) + c.groups["inc_a"].events
            return total

        assert {(T0, "w1"): 4, (T0, "w2"): 2, (T0 + MIN, "w1"): 1} == summed(
            await second.minute_counts(T0, T0 + MIN)
        )
        assert [counts(T0 + MIN)] == await store.minute_counts(T0 + MIN, T0 + MIN)
        assert [] == await store.minute_counts(T0 + 3 * MIN, T0 + 9 * MIN)

    async def test_each_worker_publishes_its_own_watermark(self, store, second):
        await store.publish_watermark("w1", WorkerMark(None, T0))
        await second.publish_watermark("w2", WorkerMark(T0 + MIN, T0 + 2 * MIN, T0))
        pruned = WorkerMark(T0 + 3 * MIN, T0 + 4 * MIN, T0 + MIN, pruned_before=T0)
        await store.publish_watermark("w1", pruned)
        assert {
            "w1": pruned,
            "w2": WorkerMark(T0 + MIN, T0 + 2 * MIN, T0),
        } == await second.watermarks()

    async def test_contributions_are_stored_once_per_batch_and_read_from_a_minute(
        self, store, second
    ):
        await store.add_batch([part(), part(minute=T0 + MIN)], [], token="b1")
        await second.add_batch([part()], [], token="b1")
        await second.add_batch([part(events=3, weight=4)], [], token="b2")
        await store.add_batch([part("inc_b")], [], token="b2")

        parts = await store.contributions("inc_a", T0)
        assert [(T0, 2), (T0, 3), (T0 + MIN, 2)] == sorted((p.minute, p.events) for p in parts)
        assert [T0 + MIN] == [p.minute for p in await second.contributions("inc_a", T0 + MIN)]

    async def test_a_contribution_reads_back_with_every_fact(self, store, second):
        written = part(users=("u1",), sessions=("s1", "s2"))
        await store.add_batch([written], [], token="b1")

        [read] = await second.contributions("inc_a", T0)
        assert written.to_doc() == read.to_doc()
        assert [] == await second.contributions("inc_a", T0 + MIN)

    async def test_members_are_counted_once_by_kind_from_when_they_were_first_seen(
        self, store, second
    ):
        await store.add_batch([part(users=("u1", "u2"), sessions=("s1",))], [], token="b1")
        await second.add_batch(
            [part(minute=T0 + 2 * MIN, users=("u2", "u3"), sessions=("s1", "s2"))], [], token="b2"
        )
        assert {"user": 3, "session": 2} == await store.member_counts("inc_a", T0)
        assert {"user": 1, "session": 1} == await store.member_counts("inc_a", T0 + MIN)
        assert {"user": 0, "session": 0} == await store.member_counts("inc_b", T0)

    async def test_a_transition_is_recorded_by_exactly_one_writer(self, store, second):
        assert await store.add_transition(step())
        assert not await second.add_transition(step())
        assert await second.add_transition(step(kind="resolve"))
        assert await store.add_transition(step("inc_b"))

        everything = await second.transitions()
        assert {"inc_a": 2, "inc_b": 1} == {k: len(v) for k, v in everything.items()}
        [read] = (await store.transitions(["inc_b"]))["inc_b"]
        assert step("inc_b") == read
        assert {} == await store.transitions([])

    async def test_explained_counts_and_facets_read_back(self, store, second):
        latency = GroupCount(
            "inc_b", "latency", KEY[1:], "scope_chat", 3, 3.0, {"inc_a": Tally(2, 2.0)}
        )
        minute = WorkerMinute(T0, "w1", {"scope_chat": 10.0}, {"inc_b": latency})
        await store.add_batch([], [minute], token="b1")
        assert [minute] == await second.minute_counts(T0, T0)

        facet = replace(step(), kind="facet", facet_id="inc_b")
        assert await store.add_transition(step())
        assert await store.add_transition(facet)
        assert not await second.add_transition(replace(facet, at=T0 + 2 * MIN))  # the first stands
        assert [step(), facet] == sorted(
            (await second.transitions(["inc_a"]))["inc_a"], key=lambda t: t.kind != "open"
        )

    async def test_concurrent_writers_of_one_step_have_one_winner(self, store, second):
        winners = await asyncio.gather(
            *(writer.add_transition(step(episode=2)) for writer in [store, second] * 10)
        )
        assert 1 == sum(winners)

    async def test_concurrent_batches_lose_no_count(self, store, second):
        async def batch(writer: IncidentStore, n: int) -> None:
            mine = counts(T0, f"w{n}")
            await writer.add_batch([part(events=1, weight=1.0)], [mine], token=f"b{n}")

        await asyncio.gather(*(batch(w, n) for n, w in enumerate([store, second] * 15)))
        found = await second.minute_counts(T0, T0)
        assert 30 == sum(c.groups["inc_a"].events for c in found)
        assert 30 == sum(p.events for p in await store.contributions("inc_a", T0))

    async def test_prune_keeps_opened_incidents_and_drops_old_counts_and_noise(self, store, second):
        await store.add_batch([], [counts(T0), counts(T0 + 9 * MIN)], token="b1")
        for incident in ("inc_opened", "inc_noise"):
            await store.add_batch(
                [part(incident, users=("u",)), part(incident, T0 + 9 * MIN)], [], token="b1"
            )
        await store.publish_watermark("gone", WorkerMark(T0, T0, T0))
        await store.publish_watermark("here", WorkerMark(T0 + 9 * MIN, T0 + 9 * MIN, T0))

        assert 1 == await second.prune(minutes_before=T0 + 5 * MIN)  # the minute, no facts
        assert 2 == len(await store.contributions("inc_noise", T0))
        assert {"gone", "here"} == set(await store.watermarks())
        deleted = await second.prune(
            minutes_before=T0, facts_before=T0 + 5 * MIN, keep=["inc_opened"]
        )
        assert 2 == deleted  # the noise's old facts and its member
        assert {"here"} == set(await store.watermarks())
        assert [T0 + 9 * MIN] == [c.minute for c in await store.minute_counts(T0, T0 + 9 * MIN)]
        assert 2 == len(await store.contributions("inc_opened", T0))
        assert 1 == len(await store.contributions("inc_noise", T0))
        assert {"user": 1, "session": 0} == await store.member_counts("inc_opened", T0)
        assert {"user": 0, "session": 0} == await store.member_counts("inc_noise", T0)
        assert ["here"] == list(await store.watermarks())

    async def test_clear_deletes_every_record(self, store, second):
        await store.add_batch([part(users=("u",))], [counts(T0)], token="b1")
        await store.add_transition(step())
        await store.publish_watermark("w1", WorkerMark(T0, T0))

        await second.clear()
        assert {} == await store.watermarks()
        assert [] == await store.minute_counts(T0, T0)
        assert {} == await store.transitions()
        assert [] == await store.contributions("inc_a", T0)
        assert {"user": 0, "session": 0} == await store.member_counts("inc_a", T0)
        assert await store.add_transition(step())  # and recording starts afresh

    async def test_the_store_answers_a_ping(self, store):
        await store.ping()


class TestInMemoryIncidentStore(IncidentStoreContract):
    @pytest.fixture
    def shared(self):
        from widelog.incidents.memory_store import InMemoryIncidentStore

        return InMemoryIncidentStore()

    @pytest.fixture
    def store(self, shared):
        return shared

    @pytest.fixture
    def second(self, shared):
        return shared


class TestSQLiteIncidentStore(IncidentStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path):
        from widelog.incidents.sqlite_store import SQLiteIncidentStore

        store = SQLiteIncidentStore(tmp_path / "incidents.sqlite3")
        yield store
        await store.close()

    @pytest.fixture
    async def second(self, tmp_path: Path):
        from widelog.incidents.sqlite_store import SQLiteIncidentStore

        store = SQLiteIncidentStore(tmp_path / "incidents.sqlite3")
        yield store
        await store.close()


@pytest.mark.mongo
class TestMongoIncidentStore(IncidentStoreContract):
    @pytest.fixture
    def database(self, live_services):
        from tests.live import unique

        return unique("widelog_test").replace("-", "_")

    @pytest.fixture
    async def store(self, database):
        from tests.live import mongo_url
        from widelog.incidents.mongo_store import MongoIncidentStore

        store = MongoIncidentStore(mongo_url(database))
        yield store
        await store._client.drop_database(database)
        await store.close()

    @pytest.fixture
    async def second(self, database):
        from tests.live import mongo_url
        from widelog.incidents.mongo_store import MongoIncidentStore

        store = MongoIncidentStore(mongo_url(database))
        yield store
        await store.close()


def test_a_sqlite_file_of_an_older_version_gains_the_new_mark_column(tmp_path):
    """Files made before `pruned_before` existed still open, and keep their marks."""
    import sqlite3

    from widelog.incidents.sqlite_store import SQLiteIncidentStore

    path = tmp_path / "incidents.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE incident_marks (worker TEXT PRIMARY KEY, newest TEXT,"
            " arrival TEXT NOT NULL, first TEXT) WITHOUT ROWID"
        )
        db.execute("INSERT INTO incident_marks VALUES ('w1', NULL, ?, NULL)", (T0.isoformat(),))

    async def check() -> None:
        store = SQLiteIncidentStore(path)
        assert {"w1": WorkerMark(None, T0)} == await store.watermarks()
        await store.publish_watermark("w2", WorkerMark(T0, T0, T0, pruned_before=T0))
        assert WorkerMark(T0, T0, T0, T0) == (await store.watermarks())["w2"]
        await store.close()

    asyncio.run(check())
