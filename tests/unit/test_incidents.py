"""Incidents: rules as data, masking, and the lifecycle on real event-time windows.

Time is injected through the events' own timestamps (and `now` for the sweep), so every scenario
runs in milliseconds whatever windows it spans. The store is the embedded SQLite adapter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from tests.incident_traffic import T0, batches, burst, request, spread
from tests.unit.test_batcher import RecordingSource
from widelog.cli.incidents import WIDE, incidents_app, incidents_table
from widelog.cli.main import main
from widelog.incidents.aggregator import IncidentAggregator, run_sweeper
from widelog.incidents.http_api import incidents_router
from widelog.incidents.lifecycle import GroupState, judge
from widelog.incidents.masking import MASKING_VERSION, mask
from widelog.incidents.memory_store import InMemoryIncidentStore
from widelog.incidents.model import (
    Contribution,
    Percentile,
    Tally,
    bucket_value,
    duration_bucket,
    percentile,
)
from widelog.incidents.ports import IncidentStore
from widelog.incidents.queries import get_incident, incident_summaries, list_incidents
from widelog.incidents.rules import (
    DEFAULT_RULES,
    IncidentRules,
    IncidentRulesError,
    incident_id,
    parse_duration,
    scope_id,
)
from widelog.incidents.sqlite_store import SQLiteIncidentStore
from widelog.incidents.summary import summarize
from widelog.pipeline.consumer import BatchConsumer
from widelog.pipeline.sqlite_store import SQLiteEventStore
from widelog.policies import load_incident_rules
from widelog.stats import percentile as nearest_rank

ROOT = Path(__file__).resolve().parents[2]
MIN = dt.timedelta(minutes=1)
deterministic = settings(derandomize=True, database=None, deadline=None, max_examples=300)


def rules(*overrides: dict[str, Any], **top: Any) -> IncidentRules:
    """The defaults, or exactly the given rules (each a dict as in the TOML file)."""
    if not overrides:
        return IncidentRules.model_validate(top)
    return IncidentRules.model_validate({**top, "rules": list(overrides)})


class World:
    """One incident store and aggregators on it; events go in as the consumer's batches would.

    Live: each batch arrives (wall clock) at its newest event's time. `feed` then lets wall time
    pass (a sweep `lateness` + 2 minutes after the newest event), so every fed minute is complete
    and judged; `settle=False` stops short of that (more events of the same minutes follow).
    """

    def __init__(
        self,
        path: Path,
        incident_rules: IncidentRules | None = None,
        store: IncidentStore | None = None,
    ) -> None:
        self.store = store or SQLiteIncidentStore(path)
        self.rules = incident_rules or IncidentRules()
        self.newest: dt.datetime | None = None
        # The wall clock: the newest event fed (live), for batches that come without a `now`.
        self.aggregator = IncidentAggregator(
            self.store, self.rules, clock=lambda: self.newest or T0
        )

    async def feed(
        self, events: list[dict[str, Any]], size: int = 100, *, settle: bool = True
    ) -> None:
        for batch in batches(events, size):
            arrival = max(dt.datetime.fromisoformat(e["timestamp"]) for e in batch)
            self.newest = arrival if self.newest is None else max(self.newest, arrival)
            await self.aggregator.observe(batch, now=self.newest)
        if settle:
            await self.settle()

    async def settle(self) -> None:
        """Wall time passes after the last batch: every minute fed so far is judged."""
        if self.newest is not None:
            lateness = dt.timedelta(seconds=self.rules.lateness)
            await self.aggregator.sweep(self.newest + lateness + 2 * MIN)

    async def summaries(self) -> list[dict[str, Any]]:
        return await incident_summaries(self.store)

    async def groups(self) -> list[tuple[str, str, tuple[tuple[str, str | None], ...]]]:
        return sorted(
            (s["rule"]["id"], s["status"], tuple(s["group"].items()))
            for s in await self.summaries()
        )


@pytest.fixture
async def world(tmp_path: Path):
    world = World(tmp_path / "incidents.sqlite3")
    yield world
    await world.store.close()


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """What must agree between two runs over the same events (samples may differ by batching)."""
    keep = (
        "id",
        "status",
        "group",
        "events",
        "first_seen",
        "last_seen",
        "opened_at",
        "first_opened_at",
        "resolved_at",
        "regressions",
        "affected",
        "duration_ms",
        "window",
    )
    return {k: summary[k] for k in keep}


# --- scenarios ---------------------------------------------------------------------------------


async def test_a_burst_of_llm_timeouts_on_chat_opens_one_incident(world):
    await world.feed(burst(T0, successes=1000, errors={"LLM_TIMEOUT": 30}))

    [incident] = await world.summaries()
    assert ("errors", "open") == (incident["rule"]["id"], incident["status"])
    assert {"error.code": "LLM_TIMEOUT", "http.route": "/v1/chat"} == incident["group"]
    assert 30 == incident["events"]
    assert 1030 == incident["window"]["requests"]


async def test_two_codes_open_two_incidents(world):
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30, "LLM_RATE_LIMITED": 25}))

    assert [
        ("errors", "open", (("error.code", "LLM_RATE_LIMITED"), ("http.route", "/v1/chat"))),
        ("errors", "open", (("error.code", "LLM_TIMEOUT"), ("http.route", "/v1/chat"))),
    ] == await world.groups()


async def test_noise_under_the_thresholds_opens_nothing(world):
    # 9 timeouts (min_count 10), 12 rate-limits among 5,000 requests (0.24% < 0.5%), 3 of 3
    # requests failing on a quiet route (the volume guard), and client errors at 2%.
    await world.feed(
        [
            *burst(T0, successes=5000, seconds=240, errors={"LLM_TIMEOUT": 9}),
            *burst(T0 + 10 * MIN, successes=5000, seconds=240, errors={"LLM_RATE_LIMITED": 12}),
            *burst(T0, successes=0, route="/v1/admin", errors={"UNHANDLED_EXCEPTION": 3}),
            *burst(T0 + 20 * MIN, successes=1000, errors={"VALIDATION_ERROR": 20}),
        ]
    )
    assert [] == await world.summaries()


async def test_the_volume_guard_needs_enough_requests_before_a_rate_can_open_an_incident(tmp_path):
    rate_only = rules({"id": "e", "match": {"error": True}, "min_rate": 0.5, "min_requests": 20})
    world = World(tmp_path / "i.sqlite3", rate_only)
    await world.feed(burst(T0, successes=0, route="/tiny", errors={"X": 3}))
    assert [] == await world.summaries()  # 100% of 3 requests: not an incident

    await world.feed(burst(T0 + 30 * MIN, successes=10, route="/small", errors={"X": 20}))
    assert [("e", "open", (("error.code", "X"), ("http.route", "/small")))] == await world.groups()
    await world.store.close()


async def test_a_quiet_period_resolves_at_the_minute_boundary_quiet_after_the_last_match(world):
    """Matches up to 10:01:59; quiet 15 min: resolved at 10:17:00, once the watermark (wall
    time less the lateness, in silence) has passed that minute, and not a second before."""
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    [open_] = await world.summaries()
    assert "2026-11-27T10:01:5" == open_["last_seen"][:18]
    lateness = dt.timedelta(seconds=world.rules.lateness)
    boundary = T0 + 17 * MIN

    await world.aggregator.sweep(boundary + lateness - dt.timedelta(seconds=1))
    assert "open" == (await world.summaries())[0]["status"]

    result = await world.aggregator.sweep(boundary + lateness)
    [resolved] = await world.summaries()
    assert 1 == result.resolved
    assert "resolved" == resolved["status"]
    assert boundary.isoformat(timespec="milliseconds") == resolved["resolved_at"]
    assert "no matching event for 15 min" == resolved["resolve_reason"]


async def test_a_new_burst_after_resolution_reopens_the_incident_as_a_regression(world, caplog):
    caplog.set_level(logging.INFO, "widelog.incidents")
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    await world.aggregator.sweep(T0 + 60 * MIN)
    await world.feed(burst(T0 + 90 * MIN, errors={"LLM_TIMEOUT": 40}))

    [incident] = await world.summaries()
    assert ("open", 1, 70) == (incident["status"], incident["regressions"], incident["events"])
    assert [1, 2] == [e["number"] for e in incident["episodes"]]
    assert incident["episodes"][0]["resolved_at"] is not None
    messages = [r.getMessage() for r in caplog.records]
    assert 1 == sum(" opened: rule errors" in m for m in messages)
    assert 1 == sum(" resolved: rule errors" in m for m in messages)
    assert 1 == sum("reopened (regression 1): rule errors" in m for m in messages)


async def test_the_lifecycle_follows_event_time_not_when_the_consumer_read_the_batch(tmp_path):
    """No sweep ran between the bursts (a consumer catching up on a backlog): same history."""
    swept = World(tmp_path / "swept.sqlite3")
    backlog = World(tmp_path / "backlog.sqlite3")
    first = burst(T0, errors={"LLM_TIMEOUT": 30})
    second = burst(T0 + 90 * MIN, errors={"LLM_TIMEOUT": 40})
    await swept.feed(first)
    await swept.aggregator.sweep(T0 + 60 * MIN)
    await swept.feed(second)
    await backlog.feed(first + second, size=700)  # batches spanning both bursts

    assert [comparable(s) for s in await swept.summaries()] == [
        comparable(s) for s in await backlog.summaries()
    ]
    for world in (swept, backlog):
        await world.store.close()


async def test_redelivered_batches_leave_every_count_unchanged(world):
    events = burst(T0, errors={"LLM_TIMEOUT": 30, "LLM_RATE_LIMITED": 20})
    await world.feed(events)
    before = await world.summaries()

    # The same batches again: an `on_stored` retried after a failure halfway. (A re-delivered
    # event in another batch never gets here: the store reports it as a duplicate, see below.)
    await world.feed(events)
    assert before == await world.summaries()


async def test_the_consumer_hands_only_newly_stored_events_to_the_aggregator(world, tmp_path):
    events = burst(T0, errors={"LLM_TIMEOUT": 30})
    payloads = [msgspec.json.encode(e) for e in events]
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    for redelivery in (False, True):
        source = RecordingSource(payloads)
        consumer = BatchConsumer(
            source, store, source_name="test", on_stored=world.aggregator.observe
        )
        for start in range(0, len(payloads), 100):
            await consumer.process(source.pending[start : start + 100])
        world.newest = T0 + 2 * MIN
        await world.settle()
        [incident] = await world.summaries()
        assert 30 == incident["events"], f"after a re-delivery: {redelivery}"
    await store.close()


async def test_two_workers_sharing_the_partitions_yield_one_incident_per_key(tmp_path, caplog):
    caplog.set_level(logging.INFO, "widelog.incidents")
    path = tmp_path / "shared.sqlite3"
    one, two = World(path), World(path)  # two processes' worth of connections to one store
    events = burst(T0, successes=2000, errors={"LLM_TIMEOUT": 40, "LLM_RATE_LIMITED": 30})
    partitions = [events[0::2], events[1::2]]  # each worker reads half of every minute

    await asyncio.gather(one.feed(partitions[0], 50), two.feed(partitions[1], 50))

    reference = World(tmp_path / "reference.sqlite3")
    await reference.feed(events)
    expected, shared = await reference.summaries(), await one.summaries()
    # When each opened may differ by the workers' lag: the evidence was split between them.
    exact = [{k: v for k, v in comparable(s).items() if "opened" not in k} for s in shared]
    assert [{k: v for k, v in comparable(s).items() if "opened" not in k} for s in expected] == (
        exact
    )
    assert 2 == len(shared)
    opened = [r.getMessage() for r in caplog.records if " opened: rule errors" in r.getMessage()]
    assert 2 + 2 == len(opened)  # the two workers' two incidents, then the reference run's two
    for world in (one, two, reference):
        await world.store.close()


async def test_streaming_and_rebuild_agree_on_the_same_events(world, tmp_path):
    events = [
        *burst(T0, errors={"LLM_TIMEOUT": 30}),
        *burst(T0 + 5 * MIN, seconds=60, successes=100, errors={"CONTENT_FILTERED": 15}),
        *burst(T0 + 90 * MIN, errors={"LLM_TIMEOUT": 45}),
        *burst(T0 + 100 * MIN, successes=500, errors={"VALIDATION_ERROR": 5}),
    ]
    now = T0 + 6 * 60 * MIN
    await world.feed(events)
    await world.aggregator.sweep(now)
    event_store = SQLiteEventStore(tmp_path / "events.sqlite3")
    await event_store.write_batch(events)
    rebuilt = World(tmp_path / "rebuilt.sqlite3")

    result = await rebuilt.aggregator.rebuild(event_store.scan_events(), T0 - MIN, now=now)
    streamed = await world.summaries()
    assert (len(events), 2) == (result.events, result.opened)
    assert [comparable(s) for s in streamed] == [comparable(s) for s in await rebuilt.summaries()]
    assert [0, 1] == sorted(s["regressions"] for s in streamed)
    await event_store.close()
    await rebuilt.store.close()


async def test_rebuild_replaces_what_was_there_and_ignores_events_before_since(world):
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    later = burst(T0 + 120 * MIN, errors={"LLM_RATE_LIMITED": 30})
    events = burst(T0, errors={"LLM_TIMEOUT": 30}) + later

    await world.aggregator.rebuild(events, T0 + 60 * MIN, now=T0 + 125 * MIN)
    assert [
        ("errors", "open", (("error.code", "LLM_RATE_LIMITED"), ("http.route", "/v1/chat")))
    ] == await world.groups()


async def test_sampled_out_successes_change_the_verdict_of_a_rate_threshold(tmp_path):
    """40 timeouts next to 10 kept successes: 80% of 50 stored events, but 7.4% of ~540 requests."""
    ten_percent = rules(
        {"id": "timeouts", "match": {"error_codes": ["LLM_TIMEOUT"]}, "min_rate": 0.1}
    )
    unsampled = World(tmp_path / "unsampled.sqlite3", ten_percent)
    sampled = World(tmp_path / "sampled.sqlite3", ten_percent)
    await unsampled.feed(burst(T0, successes=10, success_weight=1, errors={"LLM_TIMEOUT": 40}))
    await sampled.feed(burst(T0, successes=10, success_weight=50, errors={"LLM_TIMEOUT": 40}))

    assert 1 == len(await unsampled.summaries())
    assert [] == await sampled.summaries()
    for world in (sampled, unsampled):
        await world.store.close()


async def test_an_open_incident_resolves_when_its_rate_falls_well_under_the_threshold(world):
    await world.feed(burst(T0, seconds=60, successes=300, errors={"LLM_TIMEOUT": 30}))
    # then the timeouts keep trickling in (1 a minute) while traffic grows: 0.1% < 0.5 x 0.5%
    await world.feed(burst(T0 + 2 * MIN, seconds=600, successes=10_000, errors={"LLM_TIMEOUT": 10}))

    [incident] = await world.summaries()
    assert "resolved" == incident["status"]
    assert incident["resolve_reason"].startswith("the rate fell to 0.")


async def test_late_events_count_but_never_rewrite_a_resolved_incident(world):
    first = burst(T0, errors={"LLM_TIMEOUT": 30})
    await world.feed(first[:900], settle=False)
    await world.aggregator.sweep(T0 + 60 * MIN)
    await world.feed(first[900:])  # arrives an hour late

    [incident] = await world.summaries()
    assert ("resolved", 30, 0) == (incident["status"], incident["events"], incident["regressions"])
    tail = first[900:]
    assert len(tail) == world.aggregator.late_events  # counted in totals, flagged
    assert sum("error" in e for e in tail) == incident["late_events"] > 0


async def test_a_worker_restart_keeps_open_incidents_and_carries_on(world, tmp_path):
    events = burst(T0, errors={"LLM_TIMEOUT": 30})
    await world.feed(events[:600])
    await world.store.close()

    restarted = World(world.store._db.path)
    await restarted.feed(events[600:])
    [incident] = await restarted.summaries()
    assert ("open", 30, 0) == (incident["status"], incident["events"], incident["regressions"])
    await restarted.store.close()


async def test_a_worker_restarted_under_the_same_name_mid_minute_keeps_what_it_counted():
    """A container restarted in place has the same host name and pid, so the same worker name.
    Its counts of the minutes not judged yet were written before it stopped; the new process
    adds to them (each write is its own record), so the history and its windows are the ones
    an uninterrupted worker records."""
    events = burst(T0, successes=1000, errors={"LLM_TIMEOUT": 60})
    cut = len(events) // 3 // 50  # the batch from which on the restarted process counts
    assert dt.datetime.fromisoformat(events[cut * 50]["timestamp"]) < T0 + MIN

    async def run(restart: bool) -> list[Any]:
        store = InMemoryIncidentStore()
        clock = {"now": T0}

        def worker() -> IncidentAggregator:
            return IncidentAggregator(
                store, IncidentRules(), clock=lambda: clock["now"], worker="chat-worker-1"
            )

        aggregator = worker()
        for n, batch in enumerate(batches(events, 50)):
            if restart and n == cut:
                await aggregator.flush()  # its sweeper's last write; then the process is gone
                aggregator = worker()
            clock["now"] = dt.datetime.fromisoformat(batch[-1]["timestamp"])
            await aggregator.observe(batch)
        await aggregator.sweep(
            clock["now"] + dt.timedelta(seconds=aggregator.rules.lateness) + 2 * MIN
        )
        return sorted(
            (s for steps in (await store.transitions()).values() for s in steps),
            key=lambda s: s.record_id,
        )

    uninterrupted = await run(restart=False)
    assert {"open"} <= {s.kind for s in uninterrupted}
    assert uninterrupted == await run(restart=True)


async def test_latency_and_llm_provider_rules_open_on_their_own_thresholds(world):
    """No open `errors` incident explains these signals, so each opens by itself: slow
    successes, and a provider failing on every route, under the errors rule's bar on each."""
    slow = [request(at, duration_ms=2500) for at in spread(T0, 120, 80)]
    failing = [
        event
        for n in range(8)
        for event in burst(
            T0 + 30 * MIN, successes=40, route=f"/v1/r{n}", errors={"LLM_UNAVAILABLE": 8}
        )
    ]
    await world.feed(sorted([*burst(T0, successes=900), *slow], key=lambda e: e["timestamp"]))
    await world.feed(sorted(failing, key=lambda e: e["timestamp"]))

    # The slow minutes ended at 10:02: by 10:30 the latency incident resolved in the silence.
    assert [
        ("latency", "resolved", (("http.route", "/v1/chat"),)),
        ("llm_provider", "open", (("llm.provider", "fake"), ("llm.model", "fake-chat-1"))),
    ] == await world.groups()


# --- one root cause, one incident: facets ------------------------------------------------------


def fault_traffic(
    start: dt.datetime, minutes: int, *, failing: int = 15, slow_ok: int = 0
) -> list[dict[str, Any]]:
    """Per minute on /v1/chat with openai/gpt-x: 100 fast successes, `failing` LLM_TIMEOUTs after
    30 s and `slow_ok` successes after 2.5 s (a slowness of its own)."""
    llm: dict[str, Any] = {"provider": "openai", "model": "gpt-x"}
    events = []
    for n in range(minutes):
        minute = start + n * MIN
        events += [request(at, **llm) for at in spread(minute, 60, 100)]
        events += [
            request(at, code="LLM_TIMEOUT", duration_ms=30_000.0, **llm)
            for at in spread(minute + dt.timedelta(seconds=1), 58, failing)
        ]
        events += [
            request(at, duration_ms=2500.0, **llm)
            for at in spread(minute + dt.timedelta(seconds=2), 57, slow_ok)
        ]
    return sorted(events, key=lambda e: (e["timestamp"], e["event_id"]))


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_fault_that_fails_slows_and_hits_one_provider_opens_one_incident(tmp_path, kind):
    store = InMemoryIncidentStore() if kind == "memory" else None
    world = World(tmp_path / "i.sqlite3", store=store)
    await world.feed(fault_traffic(T0, 5))

    [summary] = await world.summaries()
    assert ("errors", "open") == (summary["rule"]["id"], summary["status"])
    assert [
        ("latency", {"http.route": "/v1/chat"}, "2026-11-27T10:01:00.000+00:00", 0.130435),
        (
            "llm_provider",
            {"llm.provider": "openai", "llm.model": "gpt-x"},
            "2026-11-27T10:01:00.000+00:00",
            0.130435,
        ),
    ] == [(f["rule"], f["group"], f["at"], f["rate"]) for f in summary["facets"]]
    assert summary["facets"][0]["reason"].startswith(
        "latency on http.route=/v1/chat: 15 matching requests (at least 10), 13.04% of the"
        " requests (at least 5.00%), out of ~115 requests with http.route=/v1/chat (at least 50)"
        " in the 5-minute window to 2026-11-27 10:01 UTC; 15 of them explained by this incident"
    )
    assert summary["text"].endswith(
        " Also: latency with http.route = /v1/chat since 2026-11-27 10:01:00 UTC (15 of about 115"
        " requests, 13.0%; p95 30,000 ms); llm_provider with llm.provider = openai and"
        " llm.model = gpt-x since 2026-11-27 10:01:00 UTC (15 of about 115 requests, 13.0%;"
        " p95 30,000 ms)."
    )
    await world.store.close()


async def test_only_latency_regressing_opens_one_latency_incident(world):
    await world.feed(fault_traffic(T0, 5, failing=0, slow_ok=10))

    [summary] = await world.summaries()
    assert ("latency", "open", []) == (summary["rule"]["id"], summary["status"], summary["facets"])


async def test_a_slowness_of_its_own_opens_latency_while_errors_are_open(world):
    await world.feed(fault_traffic(T0, 5, slow_ok=10))

    assert [
        ("errors", "open", (("error.code", "LLM_TIMEOUT"), ("http.route", "/v1/chat"))),
        ("latency", "open", (("http.route", "/v1/chat"),)),
    ] == await world.groups()
    latency = next(s for s in await world.summaries() if s["rule"]["id"] == "latency")
    assert latency["reason"].endswith(
        ", leaving out 15 requests open incidents of other rules explain"
    )


async def test_latency_opens_on_its_own_once_the_requests_stop_failing_but_stay_slow(world):
    await world.feed(fault_traffic(T0, 3) + fault_traffic(T0 + 3 * MIN, 10, failing=0, slow_ok=10))

    errors, latency = sorted(await world.summaries(), key=lambda s: s["rule"]["id"])
    # while only the failing requests were slow
    assert ["latency", "llm_provider"] == [f["rule"] for f in errors["facets"]]
    assert ("latency", 0) == (latency["rule"]["id"], latency["regressions"])
    assert latency["opened_at"] > (T0 + 3 * MIN).isoformat()  # on the slow successes alone


def test_a_muted_group_is_a_facet_then_opens_once_its_explaining_incident_closes():
    """Inhibition in the pure lifecycle: every match is explained by `inc_e`, open until 10:03."""
    [rule] = rules({"id": "slow", "match": {"duration_ms_over": 1}, "min_count": 3}).rules
    state = GroupState(rule, "inc_r", (("http.route", "/x"),), "scope_x")
    for n in range(5):
        state.add(T0 + n * MIN, Tally(5, 5.0), {"inc_e": Tally(5, 5.0)})
    open_until = T0 + 3 * MIN

    steps = judge(
        state,
        T0 + 4 * MIN,
        {T0 + n * MIN: 50.0 for n in range(5)},
        lambda iid, minute: 2 if iid == "inc_e" and minute < open_until else None,
    )
    assert [
        ("inc_e|000002|facet|inc_r", T0 + MIN),
        ("inc_r|000001|open", open_until + MIN),
    ] == [(s.record_id, s.at) for s in steps]
    assert 20 == steps[1].window.events if steps[1].window else None  # the whole window again


async def test_a_facet_recorded_again_after_a_restart_is_no_conflict(world, tmp_path):
    events = fault_traffic(T0, 8)
    await world.feed(events[:500])
    before = await world.store.transitions()
    restarted = World(world.store._db.path)
    await restarted.feed(events[500:])

    [summary] = await restarted.summaries()
    assert ["latency", "llm_provider"] == [f["rule"] for f in summary["facets"]]
    assert sum(map(len, before.values())) == 3  # the open and two facets, recorded once
    assert 3 == sum(map(len, (await restarted.store.transitions()).values()))
    await restarted.store.close()


async def test_every_incident_records_why_it_was_grouped(world):
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    [summary] = await world.summaries()

    assert {
        "rule": "errors",
        "fields": ["error.code", "http.route"],
        "rate_of": {"http.route": "/v1/chat"},
    } == summary["grouped_by"]
    assert re.match(
        r"\d+ matching requests \(at least 10\), \d+\.\d\d% of the requests \(at least 0\.50%\),"
        r" out of ~\d+ requests with http\.route=/v1/chat \(at least 20\) in the 5-minute window"
        r" to 2026-11-27 10:01 UTC$",
        summary["reason"],
    ), summary["reason"]
    assert {"window_s": 300, "quiet_s": 900, "min_count": 10, "min_rate": 0.005} == {
        k: summary["rule"]["thresholds"][k]
        for k in ("window_s", "quiet_s", "min_count", "min_rate")
    }
    assert MASKING_VERSION == summary["message"]["masking"]


async def test_an_event_without_a_timestamp_counts_at_the_batch_time(world):
    events = burst(T0, errors={"LLM_TIMEOUT": 30})
    for event in events:
        del event["timestamp"]
    await world.aggregator.observe(events, now=T0 + 5 * MIN)
    await world.aggregator.sweep(T0 + 10 * MIN)

    [incident] = await world.summaries()
    assert (T0 + 5 * MIN).isoformat(timespec="milliseconds") == incident["first_seen"]


# --- summary snapshots -------------------------------------------------------------------------


def snapshot_traffic() -> list[dict[str, Any]]:
    """Fixed ids, durations and messages, so the summary text is exactly reproducible."""
    events = []
    for i, at in enumerate(spread(T0 + dt.timedelta(seconds=5), 60, 400)):
        events.append(request(at, weight=5.0, request_id=f"ok-{i:03d}", session=f"sess-{i % 40}"))
    for i, at in enumerate(spread(T0 + dt.timedelta(seconds=10), 50, 24)):
        events.append(
            request(
                at,
                code="LLM_TIMEOUT",
                request_id=f"req-{i:03d}",
                duration_ms=3000.0 + 40 * i,
                session=f"sess-{i % 9}",
                user=f"user-{i % 4}",
                prompt_version="v3" if i % 3 else "v2",
                message=f"upstream 10.0.3.{i % 7}:443 timed out after {3000 + i} ms",
            )
        )
    return sorted(events, key=lambda e: (e["timestamp"], e["event_id"]))


async def test_the_summary_of_an_open_incident_reads_as_one_paragraph(world):
    await world.feed(snapshot_traffic())
    [summary] = await world.summaries()

    assert (
        'OPEN since 2026-11-27 10:01:00 UTC: 24 events matched rule "errors" (requests failing'
        " with the same error code on the same route) with error.code = LLM_TIMEOUT and"
        " http.route = /v1/chat. First seen 2026-11-27 10:00:10 UTC, last seen"
        " 2026-11-27 10:00:57 UTC. In the 5 minutes up to 2026-11-27 10:01:00 UTC: 24 of about"
        " 1,859 requests with http.route = /v1/chat (1.29%). Duration p50 3,440 ms, p95 3,880 ms."
        " Affected: 4 users, 9 sessions. Top models: fake-chat-1 (24). Prompt versions: v3 (16),"
        ' v2 (8). Message: "upstream <ip> timed out after <num> ms" (for example "upstream'
        ' 10.0.3.0:443 timed out after 3000 ms"). Request ids to look up: req-023, req-022,'
        " req-021, req-020, req-019."
    ) == summary["text"]


async def test_the_summary_of_a_resolved_and_regressed_incident_says_so(world):
    await world.feed(snapshot_traffic())
    await world.aggregator.sweep(T0 + 60 * MIN)
    second = [
        request(at, request_id=f"ok2-{i}", session="sess-0")
        for i, at in enumerate(spread(T0 + 120 * MIN, 30, 200))
    ] + [
        request(
            at,
            code="LLM_TIMEOUT",
            request_id=f"again-{i}",
            session=f"again-{i % 3}",
            duration_ms=100.0,
            message="timed out",
        )
        for i, at in enumerate(spread(T0 + 120 * MIN + dt.timedelta(seconds=1), 30, 12))
    ]
    await world.feed(sorted(second, key=lambda e: (e["timestamp"], e["event_id"])))
    await world.aggregator.sweep(T0 + 180 * MIN)
    [summary] = await world.summaries()

    assert (
        "RESOLVED at 2026-11-27 12:16:00 UTC (no matching event for 15 min), after opening at"
        ' 2026-11-27 12:01:00 UTC: 36 events matched rule "errors" (requests failing with the'
        " same error code on the same route) with error.code = LLM_TIMEOUT and http.route ="
        " /v1/chat. First seen 2026-11-27 10:00:10 UTC, last seen 2026-11-27 12:00:28 UTC. It"
        " came back after being resolved 1 time. In the 5 minutes up to 2026-11-27 12:01:00 UTC:"
        " 12 of about 212 requests with http.route = /v1/chat (5.66%). Duration p50 3,200 ms,"
        " p95 3,880 ms. Affected: 4 users, 12 sessions. Top models: fake-chat-1 (36). Prompt"
        ' versions: v3 (28), v2 (8). Message: "upstream <ip> timed out after <num> ms" (for'
        ' example "upstream 10.0.3.0:443 timed out after 3000 ms"). Request ids to look up:'
        " again-11, again-10, again-9, again-8, again-7."
    ) == summary["text"]


async def test_the_structured_summary_has_every_field_an_operator_needs(world):
    await world.feed(snapshot_traffic())
    [summary] = await world.summaries()

    assert {
        "status": "open",
        "events": 24,
        "affected": {"users": 4, "sessions": 9},
        "duration_ms": {"p50": 3440.0, "p95": 3880.0, "exact": True},
        "top_models": [{"value": "fake-chat-1", "count": 24}],
        "top_prompt_versions": [{"value": "v3", "count": 16}, {"value": "v2", "count": 8}],
        "message": "upstream <ip> timed out after <num> ms",
        "samples": ["req-023", "req-022", "req-021", "req-020", "req-019"],
        "window": {"events": 24, "requests": 1859.0, "rate": 0.01291, "minutes": 5},
    } == {
        "status": summary["status"],
        "events": summary["events"],
        "affected": summary["affected"],
        "duration_ms": summary["duration_ms"],
        "top_models": summary["top"]["models"],
        "top_prompt_versions": summary["top"]["prompt_versions"],
        "message": summary["message"]["normalized"],
        "samples": summary["sample_request_ids"],
        "window": {k: summary["window"][k] for k in ("events", "requests", "rate", "minutes")},
    }
    json.dumps(summary)  # JSON-ready as it is


async def test_durations_that_share_a_bucket_read_as_about_a_figure(world):
    events = [
        *(request(at) for at in spread(T0 + dt.timedelta(seconds=5), 50, 400)),
        *(
            request(at, code="LLM_TIMEOUT", duration_ms=3000.0 + i)
            for i, at in enumerate(spread(T0 + dt.timedelta(seconds=10), 50, 24))
        ),
    ]
    await world.feed(sorted(events, key=lambda e: (e["timestamp"], e["event_id"])))
    [summary] = await world.summaries()

    assert {"p50": 3011.0, "p95": 3022.0, "exact": False} == summary["duration_ms"]
    assert "Duration p50 about 3,011 ms, p95 about 3,022 ms." in summary["text"]


# --- duration percentiles ----------------------------------------------------------------------


def _facts(durations: list[float]) -> Contribution:
    facts = Contribution("inc_a", "latency", (), "scope", T0)
    for ms in durations:
        facts.add({"duration_ms": ms}, T0, 1.0)
    return facts


@deterministic
@given(
    durations=st.lists(
        st.one_of(
            st.sampled_from([0.25, 12.0, 2500.0, 30_000.0]),  # repeated, like timeouts
            st.floats(min_value=0, max_value=120_000, allow_nan=False),
        ),
        min_size=1,
        max_size=60,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=5),
    order=st.randoms(use_true_random=False),
)
def test_a_percentile_is_the_exact_nearest_rank_or_says_it_is_not(durations, cuts, order):
    bounds = sorted({0, len(durations), *(min(c, len(durations)) for c in cuts)})
    parts = [_facts(durations[a:b]) for a, b in itertools.pairwise(bounds)]
    order.shuffle(parts)
    merged = Contribution("inc_a", "latency", (), "scope", T0)
    for part in parts:
        merged.merge(Contribution.from_doc(msgspec.json.decode(msgspec.json.encode(part.to_doc()))))

    assert _facts(durations).to_doc()["durations"] == merged.to_doc()["durations"]
    for q in (50, 95):
        shown = percentile(merged.durations, q)
        true = nearest_rank(durations, q)
        assert shown is not None
        if shown.exact:
            assert true == shown.ms
        else:  # between the least and greatest durations of the true value's bucket
            same = [d for d in durations if duration_bucket(d) == duration_bucket(true)]
            assert min(same) <= shown.ms <= max(same)
        if len({d for d in durations if duration_bucket(d) == duration_bucket(true)}) == 1:
            assert shown.exact


def test_a_contribution_stored_before_bounds_were_kept_loads_and_says_its_figures_are_blurred():
    old = _facts([30_000.0] * 20).to_doc()
    old["durations"] = [{"b": d["b"], "n": d["n"]} for d in old["durations"]]

    facts = Contribution.from_doc(old)
    facts.merge(_facts([30_000.0]))

    assert [(1 + 20, None)] == [(b.count, b.bounds) for b in facts.durations.values()]
    midpoint = bucket_value(duration_bucket(30_000.0))
    assert Percentile(midpoint, exact=False) == percentile(facts.durations, 95)


# --- rules as data -----------------------------------------------------------------------------


def test_the_default_rules_are_valid_and_the_example_file_spells_them_out():
    example = load_incident_rules(ROOT / "incidents.example.toml")
    assert IncidentRules().fingerprint == example.fingerprint
    assert ["errors", "client_errors", "latency", "llm_provider"] == [r.id for r in DEFAULT_RULES]


def test_a_bad_rule_fails_naming_the_rule_and_the_key(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nid = "slow"\nmatch = { duration_ms_over = 100 }\nwindow = "90s"\n'
        "min_count = 5\n"
    )
    with pytest.raises(IncidentRulesError) as caught:
        load_incident_rules(path)
    assert "rules[0] (slow).window: Value error, window must be whole minutes" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("rule", "complaint"),
    [
        ({"id": "x", "match": {}, "min_count": 1}, "a rule must match something"),
        ({"id": "x", "match": {"error": True}}, "set min_count, min_rate or both"),
        ({"id": "x", "match": {"error": True}, "min_count": 1, "quiet": "1m"}, "quiet must be"),
        (
            {"id": "x", "match": {"error": True}, "min_count": 1, "scope": ["llm.model"]},
            "scope fields must be group_by fields too",
        ),
        ({"id": "X Y", "match": {"error": True}, "min_count": 1}, "String should match pattern"),
        (
            {"id": "x", "match": {"error": True}, "min_count": 1, "group_by": ["a..b"]},
            "String should match pattern",
        ),
        ({"id": "x", "match": {"error": True}, "min_rate": 1.5}, "less than or equal to 1"),
    ],
)
def test_invalid_rules_are_rejected_at_startup(rule, complaint):
    with pytest.raises(IncidentRulesError, match=complaint):
        _load_rules([rule])


@pytest.mark.parametrize(
    ("explains", "complaint"),
    [
        ({"a": ["nope"]}, r"rule 'a' explains unknown rules \['nope'\]"),
        ({"a": ["a"]}, "a rule cannot explain itself"),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, "explains must not form a cycle"),
    ],
)
def test_explains_names_other_known_rules_without_a_cycle(explains, complaint):
    rule_list = [
        {"id": rid, "match": {"error": True}, "min_count": 1, "explains": explains.get(rid, [])}
        for rid in "abc"
    ]
    with pytest.raises(IncidentRulesError, match=complaint):
        _load_rules(rule_list)


def _load_rules(rule_list: list[dict[str, Any]]) -> IncidentRules:
    try:
        return IncidentRules.model_validate({"rules": rule_list})
    except ValueError as exc:
        raise IncidentRulesError(str(exc)) from None


def test_environment_overrides_switch_rules_off_and_set_the_lateness():
    loaded = load_incident_rules(
        None,
        {
            "WIDELOG_INCIDENTS_DISABLED_RULES": "latency, client_errors",
            "WIDELOG_INCIDENTS_LATENESS": "5m",
            "HOME": "/ignored",
        },
    )
    assert (["errors", "llm_provider"], 300) == ([r.id for r in loaded.active], loaded.lateness)
    assert () == load_incident_rules(None, {"WIDELOG_INCIDENTS_ENABLED": "false"}).active


def test_an_unknown_incident_variable_or_rule_is_an_error_not_a_silent_default():
    with pytest.raises(IncidentRulesError, match="unknown setting WIDELOG_INCIDENTS_QUIET"):
        load_incident_rules(None, {"WIDELOG_INCIDENTS_QUIET": "5m"})
    with pytest.raises(IncidentRulesError, match=r"WIDELOG_INCIDENTS_DISABLED_RULES"):
        load_incident_rules(None, {"WIDELOG_INCIDENTS_DISABLED_RULES": "nope"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), (90, 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("2d", 172_800)],
)
def test_durations_read_as_an_operator_writes_them(text, seconds):
    assert seconds == parse_duration(text)


@pytest.mark.parametrize("text", ["", "5 minutes", "-5m", "1.5", True, 1.5, "m"])
def test_unreadable_durations_are_rejected(text):
    with pytest.raises(ValueError, match=r"duration|seconds"):
        parse_duration(text)


async def test_a_rule_can_group_by_the_normalized_message(tmp_path):
    by_message = rules(
        {
            "id": "by-message",
            "match": {"error": True},
            "group_by": ["error.code", "message"],
            "min_count": 5,
            "min_requests": 0,
        }
    )
    world = World(tmp_path / "m.sqlite3", by_message)
    events = [
        request(at, code="DB_ERROR", message=f"row {i} locked by txn 0x{i + 4096:x}")
        for i, at in enumerate(spread(T0, 60, 10))
    ] + [
        request(at, code="DB_ERROR", message=f"disk /dev/sd{i} full")
        for i, at in enumerate(spread(T0, 60, 3))
    ]
    await world.feed(sorted(events, key=lambda e: e["timestamp"]))

    [incident] = await world.summaries()
    assert {"error.code": "DB_ERROR", "message": "row <num> locked by txn <hex>"} == (
        incident["group"]
    )
    await world.store.close()


# --- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("timeout after 3012 ms for user 'bob'", "timeout after <num> ms for user '<str>'"),
        ("GET https://api.example.com/v1/x?id=5 failed", "GET <url> failed"),
        ("user john.doe+x@example.co.uk not found", "user <email> not found"),
        (
            "request 3f2a9c1b-7d4e-4a5b-9c8d-0123456789ab failed at 2026-11-27T10:11:12.345Z",
            "request <uuid> failed at <ts>",
        ),
        (
            "connect 10.0.0.1:8080 and [fe80::1] and 2001:db8::8a2e:370:7334",
            "connect <ip> and [<ip>] and <ip>",
        ),
        ("ptr 0xDEADBEEF sha 9f86d081884c7d659a2feaa0c55ad015", "ptr <hex> sha <hex>"),
        ("req_8f3k2a9z and user-12345 took 3012ms", "<id> and <id> took <num>ms"),
        ("the user's \"name\" isn't valid", "the user's \"<str>\" isn't valid"),
        ("gpt-4o-mini said HTTP/1.1 429 at 10:11:12", "gpt-4o-mini said HTTP/<num> <num> at <ts>"),
        ("응답 시간 초과 3000ms\n  at line 12", "응답 시간 초과 <num>ms at line <num>"),
    ],
)
def test_masking_replaces_the_variable_parts_of_a_message(raw, masked):
    assert masked == mask(raw)


def _words() -> st.SearchStrategy[str]:
    return st.sampled_from(["connect", "to", "failed", "user", "after", "ms", "retry", "at", "on"])


def _email(name: str) -> str:
    return f"{name.strip('.') or 'x'}@example.com"


PARAMETERS: dict[str, st.SearchStrategy[str]] = {
    "int": st.integers(-(10**12), 10**12).map(str),
    "float": st.floats(0, 1e6, allow_nan=False).map(lambda x: f"{x:.3f}"),
    "uuid": st.uuids().map(str),
    "ipv4": st.ip_addresses(v=4).map(str),
    "email": st.text("abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=12).map(_email),
    "hex": st.integers(0, 2**64).map(lambda n: f"0x{n:x}"),
    "quoted": st.text("abcdefghij klmnop0123456789-", max_size=30).map(lambda t: f"'{t}'"),
    "url": st.integers(0, 10**6).map(lambda n: f"https://svc{n}.example.com/v1/items/{n}"),
}
KINDS = sorted(PARAMETERS)


@st.composite
def templated_pair(draw: st.DrawFn) -> tuple[str, str]:
    """The same message template filled twice with different parameters."""
    parts = draw(st.lists(st.one_of(_words(), st.sampled_from(KINDS)), min_size=1, max_size=8))
    one, two = [], []
    for part in parts:
        if part in KINDS:
            one.append(draw(PARAMETERS[part]))
            two.append(draw(PARAMETERS[part]))
        else:
            one.append(part)
            two.append(part)
    return " ".join(one), " ".join(two)


@deterministic
@given(pair=templated_pair())
def test_the_same_message_with_different_parameters_masks_the_same(pair):
    one, two = pair
    assert mask(one) == mask(two)


@deterministic
@given(text=st.text(max_size=3000))
def test_masking_is_idempotent_and_bounded(text):
    once = mask(text)
    assert once == mask(once)
    assert len(once) <= 500


@deterministic
@given(text=st.text(alphabet=st.characters(codec="ascii"), max_size=300))
def test_masking_is_deterministic_and_never_leaves_a_standalone_number(text):
    masked = mask(text)
    assert masked == mask(text)
    for token in masked.split():
        assert not token.strip("'\"()[],;:").isdigit()


# --- access: CLI and HTTP ----------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {"WIDELOG_STORE": "sqlite", "WIDELOG_SQLITE_PATH": str(tmp_path / "w.sqlite3")}


async def test_the_cli_rebuilds_from_stored_events_then_lists_and_shows_incidents(tmp_path):
    env = _env(tmp_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    events = burst(now - 5 * MIN, errors={"LLM_TIMEOUT": 30})
    store = SQLiteEventStore(env["WIDELOG_SQLITE_PATH"])
    await store.write_batch(events)
    await store.close()
    runner = CliRunner()

    rebuilt = await asyncio.to_thread(
        runner.invoke, incidents_app, ["rebuild", "--since", "24h", "--json"], env=env
    )
    assert 0 == rebuilt.exit_code, rebuilt.output
    assert {"events": 1030, "incidents": 1} == {
        k: json.loads(rebuilt.stdout)[k] for k in ("events", "incidents")
    }
    listed = await asyncio.to_thread(runner.invoke, incidents_app, ["list", "--json"], env=env)
    [summary] = json.loads(listed.stdout)["incidents"]
    shown = await asyncio.to_thread(runner.invoke, incidents_app, ["show", summary["id"]], env=env)
    assert 0 == shown.exit_code
    assert "OPEN since" in shown.stdout
    assert "error.code = LLM_TIMEOUT" in shown.stdout
    table = await asyncio.to_thread(
        runner.invoke, incidents_app, ["list"], env={**env, "COLUMNS": "80"}
    )
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    [row] = [line for line in lines if summary["id"] in line]
    assert ["open", "errors:", "30"] == row.split()[1:4]
    assert "error.code=LLM_TIMEOUT" in table.stdout


LISTED = [
    {
        "id": "inc_e8f1d471b1bd3ea6",
        "status": "open",
        "regressions": 1,
        "rule": {"id": "llm_provider"},
        "group": {"llm.provider": "openai", "llm.model": "gpt-4o-mini-2024-07-18"},
        "events": 12_345,
        "window": {"rate": 0.0135, "requests_estimated": True, "rate_interval95": [0.0101, 0.0179]},
        "last_seen": "2026-11-27T10:00:57.000+00:00",
    },
    {
        "id": "inc_0123456789abcdef",
        "status": "resolved",
        "regressions": 0,
        "rule": {"id": "errors"},
        "group": {"error.code": "LLM_TIMEOUT", "http.route": "/v1/[chat]/completions"},
        "events": 24,
        "window": {"rate": 0.02, "requests_estimated": False},
        "last_seen": "2026-11-27T09:00:57.000+00:00",
    },
]


@pytest.mark.parametrize("width", [80, 140])
def test_the_incident_list_reads_in_an_80_column_terminal(width):
    console = Console(width=width, record=True)
    console.print(incidents_table(LISTED, width=width))
    lines = console.export_text().splitlines()

    assert max(len(line) for line in lines) <= width
    [first] = [line for line in lines if "inc_e8f1d471b1bd3ea6" in line]
    assert ["open", "+1", "llm_provider:", "12,345", "~1.35%"] == first.split()[1:6]
    text = " ".join(lines)
    for fact in (
        "llm.provider=openai",
        "inc_0123456789abcdef  resolved  errors:",
        "error.code=LLM_TIMEOUT",
        "http.route=/v1/[chat]",  # never read as markup
        "1.01%-1.79%",
        "2.00%",
    ):
        assert fact in text
    assert ("2026-11-27 10:00:57" in text) == (width >= WIDE)


def test_the_cli_says_when_there_is_no_such_incident(tmp_path):
    result = CliRunner().invoke(incidents_app, ["show", "inc_nope"], env=_env(tmp_path))
    assert 1 == result.exit_code
    assert "no incident inc_nope" in result.output


def test_the_cli_checks_the_rules_and_names_a_bad_variable(tmp_path, capsys, monkeypatch):
    ok = CliRunner().invoke(incidents_app, ["check", "--json"], env=_env(tmp_path))
    assert IncidentRules().fingerprint == json.loads(ok.stdout)["fingerprint"]
    monkeypatch.setenv("WIDELOG_INCIDENTS_LATENESS", "soon")
    with pytest.raises(SystemExit) as exited:
        main(["incidents", "check"])  # as a user runs it: failures become exit codes there
    assert 2 == exited.value.code
    assert "WIDELOG_INCIDENTS_LATENESS (lateness)" in capsys.readouterr().err


async def test_the_http_api_lists_and_shows_incidents(world):
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    app = FastAPI()
    app.include_router(incidents_router(world.store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        listed = await client.get("/v1/incidents")
        [summary] = listed.json()["incidents"]
        shown = await client.get(f"/v1/incidents/{summary['id']}")
        missing = await client.get("/v1/incidents/inc_nope")
        resolved = await client.get("/v1/incidents", params={"status": "resolved"})
        bad = await client.get("/v1/incidents", params={"status": "maybe"})

    assert (200, 200, 404, 422) == (
        listed.status_code,
        shown.status_code,
        missing.status_code,
        bad.status_code,
    )
    assert summary == shown.json()
    assert [] == resolved.json()["incidents"]


async def test_queries_read_what_the_aggregator_wrote(world):
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    [incident] = await list_incidents(world.store)
    again = await get_incident(world.store, incident.id)
    assert again is not None
    assert summarize(incident) == summarize(again)
    assert await get_incident(world.store, f"inc_{uuid.uuid4().hex[:16]}") is None
    assert [] == await list_incidents(world.store, status="resolved")


async def test_odd_events_are_counted_or_skipped_but_never_stall_the_consumer(world, caplog):
    class Unreadable(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("a field this code cannot read")

    odd = [
        {"event_id": "odd-1", "timestamp": 12, "http": "not a mapping", "duration_ms": "slow"},
        {"event_id": "odd-2", "error": ["LLM_TIMEOUT"], "sampling": {"weight": "heavy"}},
        {"event_id": "odd-3", "error": {"code": 7, "message": {"nested": True}}, "user_id": []},
        {"event_id": "odd-4", "http": Unreadable(route="/v1/chat")},
    ]
    await world.aggregator.observe([*burst(T0, errors={"LLM_TIMEOUT": 30}), *odd], now=T0)
    world.newest = T0 + 2 * MIN
    await world.settle()

    assert 1 == world.aggregator.skipped
    assert "skipped an event this code cannot count" in caplog.text
    [incident] = await world.summaries()
    assert 30 == incident["events"]


async def test_judging_looks_up_each_complete_minute_once_per_other_worker_and_never_scans():
    """Two workers, 12 minutes of traffic in batches of 50: each looks up the other's counts
    of each complete minute once (by `_id`), whatever the number of batches."""
    from widelog.incidents.memory_store import InMemoryIncidentStore

    store = InMemoryIncidentStore()
    clock = {"now": T0}
    one, two = (
        IncidentAggregator(store, IncidentRules(), clock=lambda: clock["now"]) for _ in "12"
    )
    await one.start()
    await two.start()
    events = burst(T0, seconds=720, successes=2400, errors={"LLM_TIMEOUT": 120})
    for n, batch in enumerate(batches(events, 50)):
        clock["now"] = dt.datetime.fromisoformat(batch[-1]["timestamp"])
        await (one if n % 2 else two).observe(batch)

    judged = one.judged_through
    assert judged is not None
    assert two.judged_through is not None
    minutes = (max(judged, two.judged_through) - T0) // MIN + 1
    assert 9 <= minutes <= 12  # the last minutes wait for the lateness
    assert store.minutes_read <= 2 * minutes  # each worker reads each minute once, not per batch


async def test_a_worker_started_by_its_sweeper_and_first_batch_at_once_reads_back_one_window():
    """`widelog worker` runs the sweeper and the consumer at once: both start the aggregator.
    The second must wait for the first's look-back, not judge from nothing (which read a day of
    another worker's minutes back, one lookup each, and folded the look-back twice)."""
    from widelog.incidents.memory_store import InMemoryIncidentStore
    from widelog.incidents.watermark import WorkerMark

    class NetworkedStore(InMemoryIncidentStore):  # every read yields, as over a network
        async def watermarks(self) -> dict[str, WorkerMark]:
            await asyncio.sleep(0)
            return await super().watermarks()

        async def minute_counts(self, start: Any, end: Any) -> Any:
            await asyncio.sleep(0)
            return await super().minute_counts(start, end)

    store = NetworkedStore()
    newest = T0 + 24 * 60 * MIN
    await store.publish_watermark("previous", WorkerMark(newest, newest, T0))  # a day's worth
    now = newest + 10 * MIN
    aggregator = IncidentAggregator(store, IncidentRules(), clock=lambda: now)
    events = burst(newest, seconds=60, successes=20)
    await asyncio.gather(aggregator.sweep(now), aggregator.observe(events, now=now))
    assert store.minutes_read <= 20  # the longest window or quiet period, not 1,440 minutes


async def test_a_worker_behind_the_one_that_pruned_takes_up_the_recorded_steps_again():
    """Minute counts are deleted a window and the lateness after they are judged (FerretDB scans
    them at every read). A worker whose partitions went quiet falls behind the one that pruned:
    it starts over from the recorded steps and the last window, rather than judging an hour of
    minutes with holes (and looking each one up), and the history is the one a single worker
    records."""
    from widelog.incidents.memory_store import InMemoryIncidentStore

    def traffic() -> list[list[dict[str, Any]]]:
        steady = [burst(T0 + m * MIN, seconds=60, successes=60) for m in range(2, 120)]
        steady[60] += burst(T0 + 62 * MIN, seconds=60, errors={"LLM_TIMEOUT": 30})  # regression
        return [burst(T0, seconds=120, successes=400, errors={"LLM_TIMEOUT": 40}), *steady]

    async def history(store: InMemoryIncidentStore) -> list[tuple[str, int, str, dt.datetime]]:
        steps = [s for steps in (await store.transitions()).values() for s in steps]
        return sorted((s.incident_id, s.episode, s.kind, s.at) for s in steps)

    async def run(workers: int) -> tuple[InMemoryIncidentStore, IncidentAggregator | None]:
        store = InMemoryIncidentStore()
        clock = {"now": T0}
        ahead, behind = (
            IncidentAggregator(store, IncidentRules(), clock=lambda: clock["now"], worker=name)
            for name in ("ahead", "behind")
        )
        first, *rest = traffic()
        for n, batch in enumerate(batches(first, 50)):  # both read the first burst
            clock["now"] = dt.datetime.fromisoformat(batch[-1]["timestamp"])
            await (behind if workers == 2 and n % 2 else ahead).observe(batch)
        for minute, events in enumerate(rest):  # then only `ahead` gets events
            clock["now"] = dt.datetime.fromisoformat(events[-1]["timestamp"])
            await ahead.observe(events)
            if minute % 5 == 4:
                await ahead.sweep()
        return store, behind if workers == 2 else None

    reference, _ = await run(workers=1)
    store, behind = await run(workers=2)
    assert behind is not None
    expected = await history(reference)
    assert 4 == len(expected)  # opened, resolved, reopened, resolved (the steady traffic is ok)
    assert expected == await history(store)
    [mark] = [m for w, m in (await store.watermarks()).items() if w == "ahead"]
    assert mark.pruned_before is not None
    assert mark.pruned_before > T0 + 90 * MIN  # an hour and a half of minute counts deleted

    store.minutes_read = 0
    await behind.sweep()
    assert store.minutes_read <= 2 * 20  # one window per worker, not the two hours it missed
    assert expected == await history(store)
    assert behind.judged_through is not None
    assert behind.judged_through >= mark.pruned_before


async def test_a_write_failing_while_another_is_in_flight_loses_no_count():
    """The consumer and the sweeper both write (two tasks). A write still in flight when the
    other task's write fails must not drop the failed one's counts: it is retried as it was."""

    class SlowThenFailingStore(InMemoryIncidentStore):
        calls = 0
        gate = asyncio.Event()

        async def add_batch(self, contributions: Any, minutes: Any, *, token: str) -> None:
            self.calls += 1
            if self.calls == 1:
                await self.gate.wait()  # a slow round trip
            elif self.calls == 3:
                raise ConnectionError("the store went away")
            await super().add_batch(contributions, minutes, token=token)

    store = SlowThenFailingStore()
    now = T0 + 30 * dt.timedelta(seconds=1)
    aggregator = IncidentAggregator(store, IncidentRules(), clock=lambda: now, write_every_s=0)
    first, second = batches(burst(T0, seconds=30, successes=100), 50)
    slow = asyncio.create_task(aggregator.observe(first))
    while store.calls < 1:
        await asyncio.sleep(0)
    failing = asyncio.create_task(aggregator.observe(second))
    for _ in range(20):
        await asyncio.sleep(0)
    store.gate.set()
    outcomes = await asyncio.gather(slow, failing, return_exceptions=True)
    for batch, outcome in zip((first, second), outcomes, strict=True):
        if isinstance(outcome, ConnectionError):
            await aggregator.observe(batch)  # the consumer retries `on_stored`
    await aggregator.flush()
    counted = await store.minute_counts(T0, T0)
    assert 100 == sum(c.scopes[scope_id((("http.route", "/v1/chat"),))] for c in counted)


async def test_a_worker_judges_a_minute_on_its_own_counts_even_with_a_write_in_flight():
    """The sweeper's write is in flight when a batch completes a minute: the consumer's judging
    waits for it, then writes its own counts, and only then reads the minute back."""

    class SlowStore(InMemoryIncidentStore):
        calls = 0

        async def add_batch(self, contributions: Any, minutes: Any, *, token: str) -> None:
            self.calls += 1
            await asyncio.sleep({2: 0.05, 3: 0.10, 4: 0.30}.get(self.calls, 0))
            await super().add_batch(contributions, minutes, token=token)

    store = SlowStore()
    now = T0 + 10 * MIN
    aggregator = IncidentAggregator(
        store,
        IncidentRules(),
        clock=lambda: now,
        write_every_s=100,
        idle_after=dt.timedelta(hours=1),
    )
    lateness = dt.timedelta(seconds=aggregator.rules.lateness)
    early, middle, late = (
        [request(T0 + dt.timedelta(seconds=start + i)) for i in range(10)] for start in (1, 20, 40)
    )
    late.append(request(T0 + lateness + 2 * MIN))  # completes minute T0
    await aggregator.observe(early, now=now)  # written at once (the first write is due)
    await aggregator.observe(middle, now=now)  # waits in memory
    sweeper = asyncio.create_task(aggregator.flush())  # writes `middle`, slowly
    await asyncio.sleep(0.01)
    await aggregator.observe(late, now=now)  # the consumer: counts, writes, judges T0
    await sweeper
    chat = scope_id((("http.route", "/v1/chat"),))
    stored = sum(c.scopes.get(chat, 0) for c in await store.minute_counts(T0, T0))
    assert aggregator.judged_through is not None
    assert aggregator.judged_through >= T0
    assert (30, 30) == (stored, aggregator._scopes[chat][T0])


async def test_an_event_of_a_minute_being_judged_is_late_not_counted_apart_from_the_verdict():
    """A stalled consumer's batch arrives while the sweeper reads a minute that wall time
    completed: its events are late (in the totals, flagged), not on-time counts of a minute
    judged without them (a later reader would then see another total than the verdict's)."""

    class SlowRead(InMemoryIncidentStore):
        slow = False

        async def minute_counts(self, start: Any, end: Any) -> Any:
            found = await super().minute_counts(start, end)
            if self.slow:
                await asyncio.sleep(0.1)
            return found

    store = SlowRead()
    then = T0 + dt.timedelta(seconds=30)
    aggregator = IncidentAggregator(store, IncidentRules(), clock=lambda: then, write_every_s=0)
    await aggregator.observe([request(T0 + dt.timedelta(seconds=i)) for i in range(10)], now=then)
    store.slow = True
    later = then + 10 * MIN  # silence: wall time completes T0
    sweep = asyncio.create_task(aggregator.sweep(later))
    await asyncio.sleep(0.05)  # the sweep is reading the minute
    stalled = [request(T0 + dt.timedelta(seconds=40 + i)) for i in range(5)]
    await aggregator.observe(stalled, now=later)
    await sweep
    await aggregator.flush()
    chat = scope_id((("http.route", "/v1/chat"),))
    stored = sum(c.scopes.get(chat, 0) for c in await store.minute_counts(T0, T0))
    assert (10, 10, 5) == (stored, aggregator._scopes[chat][T0], aggregator.late_events)


async def test_a_backlog_judged_between_sweeps_keeps_the_minute_counts_to_a_window():
    """Draining a backlog judges an hour of minutes in seconds, long before the next sweep.
    Every judging step reads the minute counts (a scan of all of them on FerretDB), so they are
    pruned as judging goes, not left to pile up until the sweep."""
    store = InMemoryIncidentStore()
    aggregator = IncidentAggregator(store, IncidentRules(), clock=lambda: T0 + 70 * MIN)
    events = burst(T0, seconds=3600, successes=3600, errors={"LLM_TIMEOUT": 120})
    for batch in batches(events, 100):  # no sweep in between
        await aggregator.observe(batch)
    kept = {counts.minute for counts in store._minutes.values()}
    assert aggregator.judged_through is not None
    assert aggregator.judged_through >= T0 + 55 * MIN
    assert len(kept) <= 30  # a window, the lateness and a few minutes, not the hour


async def test_a_prune_failing_while_a_batch_is_judged_fails_nothing_and_is_retried(caplog):
    class FlakyPrune(InMemoryIncidentStore):
        failures = 1

        async def prune(self, **kwargs: Any) -> int:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("the store went away")
            return await super().prune(**kwargs)

    store = FlakyPrune()
    aggregator = IncidentAggregator(store, IncidentRules(), clock=lambda: T0 + 70 * MIN)
    for batch in batches(burst(T0, seconds=3600, successes=3600), 100):
        await aggregator.observe(batch)  # raises nothing
    assert "pruning minute counts failed" in caplog.text
    assert len({counts.minute for counts in store._minutes.values()}) <= 30


async def test_minutes_pruned_while_a_worker_reads_them_are_not_taken_for_silence():
    """A worker far behind reads the marks, then the minute counts; if the one ahead prunes in
    between, the holes must not read as silence (which resolved an incident whose errors went
    on, and reopened it as a regression)."""
    from widelog.incidents.memory_store import InMemoryIncidentStore

    class RacingStore(InMemoryIncidentStore):
        meanwhile: Any = None

        async def minute_counts(self, start: Any, end: Any) -> Any:
            meanwhile, self.meanwhile = self.meanwhile, None
            if meanwhile is not None:
                await meanwhile()
            return await super().minute_counts(start, end)

    store = RacingStore()
    clock = {"now": T0}
    ahead, behind = (
        IncidentAggregator(store, IncidentRules(), clock=lambda: clock["now"], worker=name)
        for name in ("ahead", "behind")
    )
    for n, batch in enumerate(batches(burst(T0, successes=400, errors={"LLM_TIMEOUT": 40}), 50)):
        clock["now"] = dt.datetime.fromisoformat(batch[-1]["timestamp"])
        await (behind if n % 2 else ahead).observe(batch)

    async def drain(first: int, last: int) -> None:  # errors go on: the incident stays open
        for n, minute in enumerate(range(first, last)):
            events = burst(T0 + minute * MIN, seconds=60, successes=60, errors={"LLM_TIMEOUT": 30})
            clock["now"] = dt.datetime.fromisoformat(events[-1]["timestamp"])
            await ahead.observe(events)
            if n % 5 == 4:
                await ahead.sweep()

    await drain(2, 60)
    store.meanwhile = lambda: drain(60, 80)
    await behind.sweep()
    steps = [step for steps in (await store.transitions()).values() for step in steps]
    assert ["open"] == sorted({s.kind for s in steps} - {"facet"})


async def test_old_records_are_pruned_once_per_hour_of_judged_time_not_at_every_sweep():
    """Pruning facts scans them all on FerretDB (seconds with a day of them): once an hour, not
    at start; the minutes (a small collection) at every sweep."""

    class CountingStore(InMemoryIncidentStore):
        prunes = 0

        async def prune(self, **kwargs: Any) -> int:
            self.prunes += kwargs.get("facts_before") is not None
            return await super().prune(**kwargs)

    store = CountingStore()
    now = T0
    aggregator = IncidentAggregator(store, IncidentRules(), clock=lambda: now)
    sweeps = []
    for minute in range(0, 150, 5):
        now = T0 + minute * MIN
        await aggregator.observe(burst(now, seconds=60, successes=10), now=now)
        await aggregator.sweep(now)
        sweeps.append(store.prunes)
    assert sweeps[0] == 0  # not at start
    assert sweeps[-1] == 2  # about 140 minutes judged: twice
    assert sweeps.count(0) >= 12  # not before an hour of judged time


async def test_every_recorded_step_is_handed_to_the_on_recorded_hook_once(tmp_path):
    """The seam for notifications: the one place steps are recorded calls the hook."""
    seen = []

    async def record(step: Any) -> None:
        seen.append((step.kind, step.episode))

    world = World(tmp_path / "i.sqlite3")
    world.aggregator = IncidentAggregator(
        world.store, world.rules, clock=lambda: world.newest or T0, on_recorded=record
    )
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    await world.aggregator.sweep(T0 + 60 * MIN)
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))  # late: records nothing
    assert [("open", 1), ("resolve", 1)] == seen
    await world.store.close()


async def test_the_facts_of_the_last_batches_are_written_soon_without_another_batch():
    """Facts wait for a later batch's write (one round trip instead of two), but never longer
    than `write_every_s`: the sweeper writes them when no batch comes."""
    store = InMemoryIncidentStore()
    aggregator = IncidentAggregator(store, IncidentRules(), clock=lambda: T0, write_every_s=0.05)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(run_sweeper(aggregator, stop, interval=3600))
    await asyncio.sleep(0.01)  # its first sweep is done
    events = burst(T0, seconds=30, successes=50, errors={"LLM_TIMEOUT": 40})
    for batch in batches(events, 10):
        await aggregator.observe(batch, now=T0)

    iid = incident_id("errors", (("error.code", "LLM_TIMEOUT"), ("http.route", "/v1/chat")))

    async def stored() -> int:
        return sum(p.events for p in await store.contributions(iid, T0 - MIN))

    written_at_once = await stored()
    await asyncio.sleep(0.3)
    written_later = await stored()
    stop.set()
    await sweeper
    assert written_at_once < 40 == written_later
