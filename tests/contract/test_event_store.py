"""Contract for `EventStore`: every store adapter runs these (subclass and provide `store`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from widelog.events.ids import new_event_id
from widelog.pipeline.ports import DeadLetter, EventQuery, EventStore
from widelog.sampling.counts import CountRecord

MINUTE = dt.datetime(2026, 11, 27, 10, 1, tzinfo=dt.UTC)


def count_record(emitter: str = "api-1/7-abc", minute: dt.datetime = MINUTE, **routes: int):
    """A count record; `chat=5` is 5 requests of /v1/chat with status class 2xx."""
    counts = {(f"/v1/{r}", "2xx"): n for r, n in (routes or {"chat": 5}).items()}
    return CountRecord(emitter, minute, counts, instance="api-1", service="chat")


def make_event(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "request_id": "r",
        "timestamp": "2026-11-27T00:00:00Z",
        "http": {"route": "/v1/chat", "status": 200},
        **fields,
    }


class EventStoreContract:
    @pytest.fixture
    def store(self) -> EventStore:
        raise NotImplementedError

    @pytest.fixture
    def store_keeping_days(self) -> Callable[[int], EventStore]:
        """The same store, opened with a retention period in days."""
        raise NotImplementedError

    async def test_a_written_event_reads_back_unchanged_with_a_datetime_timestamp(self, store):
        event = make_event(llm={"model": "m", "input_tokens": 3}, tags=["a", "b"], ok=True)
        event["timestamp"] = "2026-11-27T10:11:12.345678Z"
        result = await store.write_batch([event])
        assert (1, 0, []) == (result.inserted, result.duplicates, result.rejected)
        stored = await store.get_event(event["event_id"])
        assert stored is not None
        written_at = dt.datetime(2026, 11, 27, 10, 11, 12, 345678, tzinfo=dt.UTC)
        assert abs(stored.pop("timestamp") - written_at) < dt.timedelta(milliseconds=1)
        assert {k: v for k, v in event.items() if k != "timestamp"} == stored

    async def test_writing_the_same_batch_twice_stores_each_event_once(self, store):
        batch = [make_event() for _ in range(50)]
        await store.write_batch(batch)
        again = await store.write_batch(batch)
        assert (0, 50) == (again.inserted, again.duplicates)
        assert 50 == await store.count_events()

    async def test_a_batch_with_some_duplicates_inserts_the_rest(self, store):
        old = [make_event() for _ in range(3)]
        await store.write_batch(old)
        result = await store.write_batch([make_event(), old[1], make_event(), old[0]])
        assert (2, [1, 3]) == (result.inserted, sorted(result.duplicate_indexes))
        assert 5 == await store.count_events()

    async def test_duplicates_inside_one_batch_are_stored_once(self, store):
        event = make_event()
        result = await store.write_batch([event, dict(event)])
        assert (1, 1) == (result.inserted, result.duplicates)

    async def test_a_duplicate_with_other_content_is_kept_as_a_conflict(self, store):
        first = make_event(http={"route": "/v1/chat", "status": 200})
        second = {**first, "http": {"route": "/v1/chat", "status": 500}}
        await store.write_batch([first])
        result = await store.write_batch([make_event(), second])
        assert (1, 0, [1]) == (result.inserted, result.duplicates, result.conflict_indexes)
        assert 200 == (await store.get_event(first["event_id"]))["http"]["status"]
        [conflict] = await store.find_conflicts(first["event_id"])
        assert ("conflicting duplicate", second["http"]) == (
            conflict["reason"],
            conflict["event"]["http"],
        )
        assert conflict["content_hash"] != conflict["stored_hash"]
        assert (1, 2) == (await store.count_conflicts(), await store.count_events())

    async def test_a_conflicting_version_delivered_again_is_kept_once(self, store):
        first = make_event()
        second = {**first, "request_id": "other"}
        await store.write_batch([first])
        await store.write_batch([second])
        again = await store.write_batch([second, first])
        assert (0, [0, 1], []) == (
            again.inserted,
            sorted(again.duplicate_indexes),
            again.conflict_indexes,
        )
        assert 1 == await store.count_conflicts()

    async def test_two_versions_in_one_batch_store_the_first_and_keep_the_second(self, store):
        first = make_event()
        second = {**first, "tags": ["changed"]}
        result = await store.write_batch([first, second])
        assert (1, [1]) == (result.inserted, result.conflict_indexes)
        assert "tags" not in await store.get_event(first["event_id"])

    async def test_the_same_content_in_another_field_order_is_a_duplicate(self, store):
        first = make_event(llm={"model": "m", "input_tokens": 3})
        reordered = dict(reversed(list(first.items())))
        reordered["llm"] = {"input_tokens": 3, "model": "m"}
        await store.write_batch([first])
        result = await store.write_batch([reordered])
        assert (1, 0, 0) == (result.duplicates, result.conflicts, await store.count_conflicts())

    async def test_errors_are_counted_by_error_code_or_5xx(self, store):
        await store.write_batch(
            [
                make_event(),
                make_event(error={"code": "LLM_TIMEOUT"}),
                make_event(http={"route": "/v1/chat", "status": 503}),
                make_event(http={"route": "/v1/chat", "status": 404}),
            ]
        )
        assert 4 == await store.count_events()
        assert 2 == await store.count_events(errors_only=True)

    async def test_counting_by_request_ids_counts_only_those_events(self, store):
        ours = [make_event(request_id=f"ours-{i}") for i in range(1200)]  # several queries' worth
        ours[7]["error"] = {"code": "LLM_TIMEOUT"}
        others = [make_event(request_id="other", error={"code": "LLM_TIMEOUT"})]
        await store.write_batch(ours + others)
        ids = {f"ours-{i}" for i in range(1300)}  # ids never stored count nothing
        assert (1200, 1) == (
            await store.count_events(request_ids=ids),
            await store.count_events(request_ids=ids, errors_only=True),
        )
        assert 0 == await store.count_events(request_ids=[])

    async def test_an_unknown_event_id_reads_as_none(self, store):
        assert await store.get_event("missing") is None

    async def test_dead_letters_are_kept_with_their_reason(self, store):
        await store.write_dead_letters([DeadLetter(b"\xff garbage", "not JSON", "test@1")])
        assert 1 == await store.count_dead_letters()

    async def test_a_dead_letter_with_a_position_is_kept_once_however_often_it_comes(self, store):
        letter = DeadLetter(b"\xff", "not JSON", "kafka@t/0@7", letter_id="kafka@t/0@7")
        anonymous = DeadLetter(b"\xff", "not JSON", "memory")
        await store.write_dead_letters([letter, anonymous])
        await store.write_dead_letters([letter, anonymous])
        assert 3 == await store.count_dead_letters()

    async def test_an_empty_batch_is_a_no_op(self, store):
        result = await store.write_batch([])
        assert (0, 0) == (result.inserted, result.duplicates)

    async def test_scan_returns_every_event_once_oldest_first(self, store):
        batch = [make_event() for _ in range(25)]
        await store.write_batch(batch[::-1])
        scanned = [doc async for doc in store.scan_events(batch_size=10)]
        assert [e["event_id"] for e in batch] == [d["event_id"] for d in scanned]

    async def test_ping_succeeds_on_a_healthy_store(self, store):
        await store.ping()

    async def test_find_filters_by_every_field_newest_first(self, store):
        def at(minute: int, **fields: Any) -> dict[str, Any]:
            return make_event(timestamp=f"2026-11-27T10:{minute:02d}:00.5Z", **fields)

        chat = {"route": "/v1/chat", "status": 200}
        events = [
            at(1, request_id="r1", session_id="s1", llm={"model": "m1"}, http=chat),
            at(2, request_id="r2", session_id="s1", llm={"model": "m2"}, http=chat),
            at(
                3,
                request_id="r3",
                http={"route": "/v1/chat", "status": 504},
                error={"code": "LLM_TIMEOUT"},
            ),
            at(4, request_id="r4", http={"route": "/healthz", "status": 200}),
        ]
        await store.write_batch(events)

        async def found(**filters: Any) -> list[str]:
            return [e["request_id"] for e in await store.find_events(EventQuery(**filters))]

        assert ["r4", "r3", "r2", "r1"] == await found()
        assert ["r3"] == await found(request_id="r3")
        assert ["r3", "r2", "r1"] == await found(route="/v1/chat")
        assert ["r3"] == await found(status=504)
        assert ["r3"] == await found(error_code="LLM_TIMEOUT")
        assert ["r2", "r1"] == await found(session_id="s1")
        assert ["r2"] == await found(model="m2")
        assert ["r4", "r3"] == await found(limit=2)
        since, until = (dt.datetime(2026, 11, 27, 10, m, tzinfo=dt.UTC) for m in (2, 4))
        assert ["r3", "r2"] == await found(since=since, until=until)
        assert [] == await found(session_id="s1", status=504)
        stored = (await store.find_events(EventQuery(request_id="r1")))[0]
        assert {"model": "m1"} == stored["llm"]

    async def test_expire_deletes_events_past_retention_and_keeps_the_rest(
        self, store_keeping_days
    ):
        store = store_keeping_days(1)
        old, recent = make_event(), make_event()
        old["timestamp"] = "2026-01-01T00:00:00Z"
        recent["timestamp"] = "2026-11-27T11:00:00Z"
        await store.write_batch([old, recent])
        deleted = await store.expire(now=dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC))
        by_the_server = getattr(store, "ttl_index", False)  # MongoDB deletes them itself
        assert (0 if by_the_server else 1) == deleted
        assert await store.get_event(recent["event_id"]) is not None
        await store.close()

    async def test_expire_without_a_retention_period_deletes_nothing(self, store):
        old = make_event()
        old["timestamp"] = "2001-01-01T00:00:00Z"
        await store.write_batch([old])
        assert 0 == await store.expire()
        assert 1 == await store.count_events()

    async def test_a_count_record_reads_back_in_its_own_place_not_as_an_event(self, store):
        record = count_record(chat=7, health=2)
        await store.write_request_counts([record])
        [stored] = await store.request_counts()
        assert (record.id, record.counts, 9) == (stored.id, stored.counts, stored.version)
        assert (MINUTE, "api-1", "chat") == (stored.minute, stored.instance, stored.service)
        assert 0 == await store.count_events()

    async def test_a_resent_count_record_replaces_and_never_adds(self, store):
        first, later = count_record(chat=5), count_record(chat=8)
        await store.write_request_counts([first, first])  # duplicated delivery
        await store.write_request_counts([later])  # the minute re-sent after a late request
        await store.write_request_counts([first])  # the old copy again (replay, re-delivery)
        assert [later.counts] == [r.counts for r in await store.request_counts()]

    async def test_count_records_are_read_by_minute_range_and_kept_per_emitter(self, store):
        later = MINUTE + dt.timedelta(minutes=1)
        records = [count_record("a"), count_record("b"), count_record("a", later)]
        await store.write_request_counts(records)
        in_first = await store.request_counts(since=MINUTE, until=later)
        assert ["a", "b"] == sorted(r.emitter for r in in_first)
        assert 3 == len(await store.request_counts(since=MINUTE))

    async def test_sampled_weights_are_those_of_the_events_in_scope_and_time(self, store):
        sampled = {"rate": 0.02, "weight": 50.0, "reason": "baseline"}
        at = "2026-11-27T10:01:30Z"
        await store.write_batch(
            [
                make_event(timestamp=at, emitter="a", sampling=sampled),
                make_event(timestamp=at, emitter="a", error={"code": "X"}),  # weight 1
                make_event(timestamp=at, http={"route": "/v1/other", "status": 200}),
                make_event(timestamp="2026-11-27T10:05:00Z", emitter="a"),
                make_event(timestamp=at, llm={"provider": "p"}),
            ]
        )
        until = MINUTE + dt.timedelta(minutes=1)
        chat = await store.sampled_weights({"http.route": "/v1/chat"}, since=MINUTE, until=until)
        assert [("a", 1.0), ("a", 50.0), (None, 1.0)] == sorted(
            ((e, w) for e, _, w in chat), key=str
        )
        assert {MINUTE + dt.timedelta(seconds=30)} == {t for _, t, _ in chat}
        by_provider = await store.sampled_weights({"llm.provider": "p"}, since=MINUTE)
        assert 1 == len(by_provider)

    async def test_expire_deletes_count_records_past_retention_too(self, store_keeping_days):
        store = store_keeping_days(30)
        try:
            old = count_record("a", dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
            await store.write_request_counts([old, count_record("b")])
            await store.expire(now=MINUTE)
            assert ["b"] == [r.emitter for r in await store.request_counts()]
        finally:
            await store.close()

    async def test_sampled_weights_leave_out_the_emitter_minutes_that_have_a_record(self, store):
        await store.write_batch(
            [
                make_event(timestamp="2026-11-27T10:01:30Z", emitter="a"),
                make_event(timestamp="2026-11-27T10:02:30Z", emitter="a"),
                make_event(timestamp="2026-11-27T10:01:40Z", emitter="b"),
                make_event(timestamp="2026-11-27T10:01:50Z"),  # no emitter: never recorded
            ]
        )
        rows = await store.sampled_weights({}, since=MINUTE, exclude=[("a", MINUTE)])
        at = {(emitter, moment.strftime("%H:%M:%S")) for emitter, moment, _ in rows}
        assert {("a", "10:02:30"), ("b", "10:01:40"), (None, "10:01:50")} == at


class TestSQLiteEventStore(EventStoreContract):
    @pytest.fixture
    def store(self, sqlite_store):
        return sqlite_store

    @pytest.fixture
    def store_keeping_days(self, tmp_path):
        from widelog.pipeline.sqlite_store import SQLiteEventStore

        return lambda days: SQLiteEventStore(tmp_path / "kept.sqlite3", retention_days=days)


@pytest.mark.mongo
class TestMongoEventStore(EventStoreContract):
    @pytest.fixture
    def database(self, live_services):
        from tests.live import unique

        return unique("widelog_test").replace("-", "_")

    @pytest.fixture
    async def store(self, database):
        from tests.live import mongo_url
        from widelog.pipeline.mongo_store import MongoEventStore

        store = MongoEventStore(mongo_url(database))
        yield store
        await store._client.drop_database(database)
        await store.close()

    @pytest.fixture
    def store_keeping_days(self, database):
        from tests.live import mongo_url
        from widelog.pipeline.mongo_store import MongoEventStore

        return lambda days: MongoEventStore(mongo_url(database), retention_days=days)

    async def test_an_event_bson_cannot_carry_is_rejected_and_the_rest_stored(self, store):
        too_big_for_int64 = make_event(counter=2**64 - 1)
        fine = [make_event(), make_event()]
        result = await store.write_batch([fine[0], too_big_for_int64, fine[1]])
        assert 2 == result.inserted
        assert [1] == [index for index, _ in result.rejected]
        assert "BSON" in result.rejected[0][1]
        assert 2 == await store.count_events()
