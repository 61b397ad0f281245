"""Contract for `IncidentStore`: every adapter runs these (subclass and provide `store`/`second`).

`second` is another client of the same storage (another worker process, in effect): what one
records, the other reads, and concurrent writers never lose or duplicate a record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from widelog.incidents.model import Contribution, MessageStat, ScopeCount, Transition, WindowStats
from widelog.incidents.ports import IncidentStore

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
    item.durations = {400: events}
    item.dims = {"llm.model": {"m.1": events}, "http.status": {"504": events}}
    item.messages = {
        "k1": MessageStat("timed out after <num> ms", "timed out after 3 ms", first, 2)
    }
    item.samples = [(item.last, "req-2"), (first, "req-1")]
    item.users, item.sessions = set(users), set(sessions)
    return item


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

    async def test_scope_counts_sum_per_minute_and_a_batch_counts_once(self, store, second):
        counts = [ScopeCount("scope_chat", T0, 10, 250.0), ScopeCount("scope_chat", T0 + MIN, 1, 1)]
        await store.add_scope_counts(counts, token="b1")
        await second.add_scope_counts(counts, token="b1")  # the same batch, retried elsewhere
        await second.add_scope_counts([ScopeCount("scope_chat", T0, 3, 3.5)], token="b2")
        await store.add_scope_counts([ScopeCount("scope_other", T0, 7, 7.0)], token="b2")

        series = await store.scope_series(["scope_chat", "scope_x"], T0, T0 + 5 * MIN)
        assert {"scope_chat": {T0: 253.5, T0 + MIN: 1.0}} == series
        assert {"scope_chat": {T0 + MIN: 1.0}} == await second.scope_series(
            ["scope_chat"], T0 + MIN, T0 + MIN
        )
        assert {} == await store.scope_series([], T0, T0)

    async def test_contributions_add_up_per_minute_and_a_batch_counts_once(self, store, second):
        await store.add_contributions([part(), part(minute=T0 + MIN)], token="b1")
        await second.add_contributions([part()], token="b1")
        await second.add_contributions(
            [part(first_s=1.5, last_s=59.999, events=3, weight=4)], token="b2"
        )

        series = await store.group_series(["inc_a", "inc_b"], T0, T0 + MIN)
        minute0 = series["inc_a"][T0]
        assert ["inc_a"] == list(series)
        assert (5, 6.0) == (minute0.events, minute0.weight)
        assert (T0 + dt.timedelta(seconds=1.5), T0 + dt.timedelta(seconds=59.999)) == (
            minute0.first,
            minute0.last,
        )
        assert 2 == series["inc_a"][T0 + MIN].events

    async def test_a_contribution_reads_back_with_every_fact(self, store, second):
        written = part(users=("u1",), sessions=("s1", "s2"))
        await store.add_contributions([written], token="b1")

        [read] = await second.contributions("inc_a", T0)
        assert written.to_doc() == read.to_doc()
        assert [] == await second.contributions("inc_a", T0 + MIN)

    async def test_members_are_counted_once_by_kind_from_when_they_were_first_seen(
        self, store, second
    ):
        await store.add_contributions([part(users=("u1", "u2"), sessions=("s1",))], token="b1")
        await second.add_contributions(
            [part(minute=T0 + 2 * MIN, users=("u2", "u3"), sessions=("s1", "s2"))], token="b2"
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

    async def test_concurrent_writers_of_one_step_have_one_winner(self, store, second):
        winners = await asyncio.gather(
            *(writer.add_transition(step(episode=2)) for writer in [store, second] * 10)
        )
        assert 1 == sum(winners)

    async def test_concurrent_batches_lose_no_count(self, store, second):
        async def batch(writer: IncidentStore, n: int) -> None:
            await writer.add_scope_counts([ScopeCount("scope_chat", T0, 1, 1.0)], token=f"b{n}")
            await writer.add_contributions([part(events=1, weight=1.0)], token=f"b{n}")

        await asyncio.gather(*(batch(w, n) for n, w in enumerate([store, second] * 15)))
        assert {T0: 30.0} == (await store.scope_series(["scope_chat"], T0, T0))["scope_chat"]
        assert 30 == (await second.group_series(["inc_a"], T0, T0))["inc_a"][T0].events

    async def test_the_last_event_before_a_minute(self, store, second):
        await store.add_contributions([part(), part(minute=T0 + 3 * MIN, last_s=10)], token="b1")
        assert T0 + dt.timedelta(seconds=50.5) == await second.last_event_before("inc_a", T0 + MIN)
        assert T0 + 3 * MIN + dt.timedelta(seconds=10) == await second.last_event_before(
            "inc_a", T0 + 9 * MIN
        )
        assert await second.last_event_before("inc_a", T0) is None

    async def test_prune_keeps_opened_incidents_and_drops_old_counts_and_noise(self, store, second):
        await store.add_scope_counts([ScopeCount("scope_chat", T0, 1, 1.0)], token="b1")
        await store.add_scope_counts([ScopeCount("scope_chat", T0 + 9 * MIN, 1, 1.0)], token="b1")
        for incident in ("inc_opened", "inc_noise"):
            await store.add_contributions(
                [part(incident, users=("u",)), part(incident, T0 + 9 * MIN)], token="b1"
            )

        deleted = await second.prune(before=T0 + 5 * MIN, keep=["inc_opened"])
        assert 3 == deleted  # one scope count, the noise's old facts and its member
        assert [T0 + 9 * MIN] == list(
            (await store.scope_series(["scope_chat"], T0, T0 + 9 * MIN))["scope_chat"]
        )
        assert 2 == len(await store.contributions("inc_opened", T0))
        assert 1 == len(await store.contributions("inc_noise", T0))

    async def test_clear_deletes_every_record(self, store, second):
        await store.add_scope_counts([ScopeCount("scope_chat", T0, 1, 1.0)], token="b1")
        await store.add_contributions([part(users=("u",))], token="b1")
        await store.add_transition(step())

        await second.clear()
        assert {} == await store.transitions()
        assert [] == await store.contributions("inc_a", T0)
        assert {} == await store.scope_series(["scope_chat"], T0, T0)
        assert {"user": 0, "session": 0} == await store.member_counts("inc_a", T0)
        assert await store.add_transition(step())  # and recording starts afresh

    async def test_the_store_answers_a_ping(self, store):
        await store.ping()


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
