"""Issue 11 item 5: does incident aggregation keep up with the store, with and without history?

`widelog worker` drains the same pre-filled Kafka topic (6 partitions, batches of 100) into
FerretDB with incidents off, incidents on over an empty incident store, and incidents on over a
store that already holds 24 h of per-minute records (what a day of the same traffic, about 2,000
requests a minute, leaves behind), off again with that history present, and off and on over
2,000 routes (thousands of scopes a minute), also as a 45-minute backlog (90,000 events: judging
runs far ahead of the sweeper, whose prunes then come too late); and inserts the same documents
by plain
`insert_many`, batches of 100 (the store's own rate). It reports events/s, the ratios to
incidents off and to `insert_many`, and the mean ms per batch in each quarter of the drain:
a store query that scans a growing collection shows as a rising ms per batch. The events' times
are spread at 2,000 a minute up to now, so minutes complete (and are judged) during the drain.

    python bench/incident_aggregation.py [--events 20000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from typing import Any

import msgspec

from bench_common import Services, log
from widelog.incidents.model import (
    Contribution,
    GroupCount,
    Transition,
    WorkerMinute,
    minute_of,
)
from widelog.incidents.mongo_store import MongoIncidentStore
from widelog.incidents.rules import DEFAULT_RULES, incident_id, scope_id
from widelog.incidents.watermark import WorkerMark
from worker_drain import ceiling, drain, realistic_records

MANY_ROUTES = 2000  # distinct routes in the case of thousands of scopes a minute
LONG_BACKLOG = 90_000  # events in the longest case: 45 minutes of event time, drained in ~30 s
BATCHES_PER_MINUTE = 20  # ~2,000 requests a minute in batches of 100
ROUTE = (("http.route", "/v1/chat"),)
PROVIDER = (("llm.provider", "openai-compatible"), ("llm.model", "gpt-4o-mini"))
TIMEOUTS = (("error.code", "LLM_TIMEOUT"), ("http.route", "/v1/chat"))


async def _seed(url: str, hours: int, end: dt.datetime) -> int:
    """Per-minute records for `hours` before `end`, as a worker fed that traffic would write.

    `end` is where the drained events begin: the worker that wrote the history stopped there,
    so the new one judges every drained event on time, after a day of state.

    The group opened an incident at the start, so its records are kept (the records of a group
    that never opened are pruned after `count_retention`: a history of those is a backlog that
    the first sweep deletes, not state that stays).
    """
    store = MongoIncidentStore(url, timeout_ms=20_000)
    end = minute_of(end)
    written = 0
    iid = incident_id("errors", TIMEOUTS)
    errors = next(rule for rule in DEFAULT_RULES if rule.id == "errors")
    opened = end - dt.timedelta(hours=hours) + dt.timedelta(minutes=5)
    await store.add_transition(
        Transition(iid, 1, "open", opened, "seeded", errors.snapshot(), TIMEOUTS, scope_id(ROUTE))
    )
    for m in range(hours * 60, 0, -1):
        minute = end - dt.timedelta(minutes=m)
        writes = []
        for b in range(BATCHES_PER_MINUTE):  # a batch of facts every 3 s, as the errors came
            part = Contribution(iid, "errors", TIMEOUTS, scope_id(ROUTE), minute)
            part.events, part.weight = 2, 2.0
            part.first = minute + dt.timedelta(seconds=3 * b)
            part.last = minute + dt.timedelta(seconds=3 * b + 1)
            writes.append(store.add_batch([part], [], token=f"hist{m:05d}{b:03d}"))
        group = GroupCount(iid, "errors", TIMEOUTS, scope_id(ROUTE), 40, 40.0)
        counts = WorkerMinute(minute, "previous", {scope_id(k): 2000.0 for k in (ROUTE, PROVIDER)})
        counts.groups[iid] = group
        writes.append(store.add_batch([], [counts], token=f"hist{m:05d}"))
        written += BATCHES_PER_MINUTE + 1
        await asyncio.gather(*writes)
    # The worker that wrote that history, stopped an hour ago: a new one starts from its mark
    # (reading back only the last window's minutes), as after a deploy.
    newest = end - dt.timedelta(seconds=1)
    stopped = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    first = end - dt.timedelta(hours=hours)
    await store.publish_watermark("previous", WorkerMark(newest, stopped, first))
    await store.close()
    return written


def seed_history(hours: int, end: dt.datetime) -> Any:
    def prepare(url: str) -> None:
        written = asyncio.run(_seed(url, hours, end))
        log(f"seeded {hours} h of incident history: {written} records")

    return prepare


def spread_in_time(records: list[tuple[str, bytes]], per_minute: int) -> list[tuple[str, bytes]]:
    """Event times `per_minute` a minute up to now (not all in one second), so minutes complete
    while the worker drains and get judged: what live traffic does."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=len(records) / per_minute)
    spread = []
    for i, (key, payload) in enumerate(records):
        doc = msgspec.json.decode(payload)
        at = start + dt.timedelta(seconds=60 * i / per_minute)
        doc["timestamp"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        spread.append((key, msgspec.json.encode(doc)))
    return spread


def spread_over_routes(records: list[tuple[str, bytes]], routes: int) -> list[tuple[str, bytes]]:
    """The same events over `routes` distinct `http.route`s: as many scopes every minute."""
    spread = []
    for i, (key, payload) in enumerate(records):
        doc = msgspec.json.decode(payload)
        doc["http"]["route"] = f"/v1/tenant-{i % routes}/chat"
        spread.append((key, msgspec.json.encode(doc)))
    return spread


def run(services: Services, *, events: int, quick: bool) -> dict[str, Any]:
    records = spread_in_time(realistic_records(events), BATCHES_PER_MINUTE * 100)
    first = msgspec.json.decode(records[0][1])["timestamp"]
    begin = dt.datetime.fromisoformat(first.replace("Z", "+00:00"))
    inputs = {(events, 1): records}
    rows = []
    # (incidents, hours of history, routes, events): thousands of scopes a minute, then over a
    # backlog long enough that judging prunes while it drains (minute counts pile up otherwise)
    cases = [(False, 0, 1, events), (True, 0, 1, events), (True, 24, 1, events)]
    if not quick:
        cases += [(False, 24, 1, events)]
        cases += [(inc, 0, MANY_ROUTES, n) for n in (events, LONG_BACKLOG) for inc in (False, True)]
    for incidents, hours, routes, count in cases:
        if (count, routes) not in inputs:
            timed = spread_in_time(realistic_records(count), BATCHES_PER_MINUTE * 100)
            inputs[count, routes] = spread_over_routes(timed, routes)
        row = drain(
            services,
            inputs[count, routes],
            transport="kafka",
            workers=1,
            batch=100,
            incidents=incidents,
            timeout=600.0,
            prepare=seed_history(hours, begin) if hours else None,
        )
        row["history_h"], row["routes"], row["events"] = hours, routes, count
        rows.append(row)
        log(
            f"incidents {'on' if incidents else 'off'}, {hours} h history, {routes} routes, "
            f"{count} events: {row['events_per_s']:.0f} ev/s, ms/batch by quarter "
            f"{row['ms_per_batch']}"
        )
    # The floor of the store itself: the same documents by plain `insert_many`, batches of 100.
    plain = ceiling(services, records, 100)
    log(f"plain insert_many, batches of 100: {plain['events_per_s']:.0f} ev/s")
    for row in rows:  # against incidents off over an empty store with the same input
        off = next(
            r
            for r in rows
            if not r["incidents"]
            and (r["routes"], r["events"], r["history_h"]) == (row["routes"], row["events"], 0)
        )
        row["vs_off"] = row["events_per_s"] / off["events_per_s"] if off["events_per_s"] else 0.0
        row["vs_insert_many"] = row["events_per_s"] / plain["events_per_s"]
    return {"events": events, "batch": 100, "insert_many": plain, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(Services.from_env(), events=args.events, quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
