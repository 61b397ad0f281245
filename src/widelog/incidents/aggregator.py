"""The incident aggregator: stored events in, incidents (open → update → resolve → reopen) out.

`observe` is the consumer's `on_stored` hook: it gets each batch's newly stored events (never a
re-delivery) and writes what they add to the shared store, about once a second: facts
(`Contribution`) and this worker's counts of each minute (`WorkerMinute`), both insert-only, keyed
by write. Nothing is judged on a partial minute: once the watermark (`watermark.py`) has passed a
minute, the aggregator reads that minute's counts of every worker (one `_id` range), keeps the
complete minutes in memory (a window's worth), and judges every group on them (`lifecycle.py`).
Judging costs one read per step of the watermark, however many batches or scopes, and the history
is the same however the events were batched, split between workers, replayed by `rebuild` or
read as a backlog.

`sweep` advances the watermark when no batch comes (on wall time, see `watermark.py`), so silence
resolves, and prunes old records; run it every minute or so in every process that consumes.
`rebuild` recomputes everything from stored events, through the same code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from widelog.incidents.lifecycle import GroupState, judge, step_minute
from widelog.incidents.model import (
    MINUTE,
    Contribution,
    GroupCount,
    RouteCounts,
    Tally,
    Transition,
    WorkerMinute,
    describe_key,
    event_time,
    minute_of,
    ordered,
)
from widelog.incidents.request_totals import annotate, as_floats, recorded_route
from widelog.incidents.rules import (
    CompiledRule,
    Key,
    field_value,
    incident_id,
    judging_order,
    scope_id,
)
from widelog.incidents.watermark import (
    WorkerMark,
    global_watermark,
    last_complete_minute,
    pruned_before,
    pruned_from,
)
from widelog.sampling.reweighting import weight_of
from widelog.sampling.totals import Total

if TYPE_CHECKING:
    from collections.abc import Sequence

    from widelog.incidents.ports import IncidentStore
    from widelog.incidents.request_totals import RequestTotals
    from widelog.incidents.rules import IncidentRules
    from widelog.sampling.counts import CountRecord

log = logging.getLogger("widelog.incidents")
FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
Clock = Callable[[], dt.datetime]
TOKENS_REMEMBERED = 1000  # batches counted lately: a retried `on_stored` counts nothing twice
WRITE_FACTS_EVERY_S = 1.0  # a batch's facts reach the store this late at most, while batches come
NO_REQUESTS = Total(estimated=True)
# Pruning facts deletes by minute and incident: FerretDB scans every fact for that (5.5 s with a
# day of an open incident's), so it runs once per hour of judged event time, from an hour after
# this worker started judging. The minutes (a small collection, read per judged minute) every
# sweep, and while a backlog is judged faster than sweeps come, every few judged minutes: each
# read scans them all on FerretDB, so they must not pile up between sweeps.
PRUNE_FACTS_EVERY = dt.timedelta(hours=1)
PRUNE_MINUTES_EVERY = dt.timedelta(minutes=5)
MEMBERS_REMEMBERED = 100_000  # members known to be written, so not written again (then forgotten)


def batch_token(events: Sequence[Mapping[str, Any]]) -> str:
    """The same batch gives the same token, so a retried `on_stored` counts nothing."""
    ids = sorted(
        str(doc.get("event_id") or doc.get("request_id") or i) for i, doc in enumerate(events)
    )
    return hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _OutOfRangeError(ValueError):
    """An event time too close to the ends of `datetime` for window and quiet arithmetic."""


@dataclass(slots=True)
class _Batch:
    """What one batch adds: on-time counts by minute, facts by (incident, minute)."""

    minutes: dict[dt.datetime, WorkerMinute]
    parts: dict[tuple[str, dt.datetime], Contribution]
    late: int = 0


@dataclass(slots=True, frozen=True)
class _Write:
    """Counts and facts gathered since the last write; a failed write is retried as it was."""

    token: str
    parts: list[Contribution]
    minutes: list[WorkerMinute]


@dataclass(slots=True)
class SweepResult:
    resolved: int = 0
    opened: int = 0
    pruned: int = 0


@dataclass(slots=True)
class RebuildResult:
    events: int = 0  # events at or after `since` that were replayed
    opened: int = 0  # incidents (by id) that have at least one opening
    transitions: int = 0


class IncidentAggregator:
    """Groups stored events into incidents by rules; shared state in an `IncidentStore`.

    `clock` is the wall clock (injectable for tests); `worker` names this aggregator's watermark
    in the store (one per process); `idle_after` (default: the rules' lateness) is how long a
    worker may get no batch before it stops holding the others' watermark back.
    """

    def __init__(
        self,
        store: IncidentStore,
        rules: IncidentRules,
        *,
        clock: Clock | None = None,
        worker: str | None = None,
        idle_after: dt.timedelta | None = None,
        on_recorded: Callable[[Transition], Awaitable[None]] | None = None,
        totals: RequestTotals | None = None,
        write_every_s: float = WRITE_FACTS_EVERY_S,
    ) -> None:
        self._store = store
        self.write_every_s = write_every_s
        # Called with each step this aggregator recorded (first), after its log line: the
        # notifications' outbox insert. It must not raise (the consumer would retry the batch).
        self._on_recorded = on_recorded
        # Exact-or-estimated scope requests (count records); None: the minute records' estimates.
        self._totals = totals
        self.rules = rules
        self._clock = clock or _wall_clock
        self.worker = worker or f"worker-{uuid.uuid4().hex[:12]}"
        self._compiled = [CompiledRule(rule) for rule in rules.active]
        self._by_id = {c.rule.id: c.rule for c in self._compiled}
        # Explaining rules' groups are judged first: the groups they explain ask if they are open.
        self._rank = {rid: n for n, rid in enumerate(judging_order(rules.active))}
        self._scope_fields = sorted({c.scope_fields for c in self._compiled})
        self._lateness = dt.timedelta(seconds=rules.lateness)
        self._idle_after = idle_after if idle_after is not None else self._lateness
        # What it counted must be in the store before the others may take it for idle and judge
        # without it (the sweeper writes every `write_every_s`).
        self.write_every_s = min(self.write_every_s, self._idle_after.total_seconds() / 2)
        longest = max((max(r.window, r.quiet) for r in rules.active), default=0)
        # Whole minutes kept in memory behind the last judged one: the longest window or quiet
        # period; the store keeps every worker's minute counts `lateness` longer (`_prune`).
        self._keep = dt.timedelta(minutes=math.ceil(longest / 60) + 1)
        self._max_window = dt.timedelta(seconds=max((r.window for r in rules.active), default=0))
        # The facts of groups that never opened are pruned by `sweep` after this.
        self._retention = self._keep + self._lateness + dt.timedelta(seconds=rules.count_retention)
        # Event times this code can do date arithmetic on: windows, quiet periods and retention
        # reach this far either side of an event, and `datetime` ends at years 1 and 9999.
        margin = self._retention + self._max_window + dt.timedelta(days=1)
        quiet = dt.timedelta(seconds=max((r.quiet for r in rules.active), default=0))
        self._earliest = dt.datetime.min.replace(tzinfo=dt.UTC) + margin
        self._latest = FAR_FUTURE - margin - quiet
        # What `observe` could not count or judge, by reason (each logged once); the events are
        # stored all the same, and `rebuild` reads them again.
        self.skipped_by_reason: collections.Counter[str] = collections.Counter()
        # Events that arrived after their minute was judged: in the totals, never in a window.
        self.late_events = 0
        self.late_count_records = 0
        self._starting = asyncio.Lock()
        # The sweeper and the consumer run as two tasks: one judges (or prunes) at a time, and
        # one writes at a time (a write in flight is what a retry, or a judge, waits for).
        self._judging = asyncio.Lock()
        self._writing = asyncio.Lock()
        self._reset()

    def _reset(self) -> None:
        self._started = False
        self._groups: dict[str, GroupState] = {}
        self._scopes: dict[str, dict[dt.datetime, float]] = {}
        # What the completed minutes' scope requests are made of, every worker's together: the
        # estimates and count records behind exact totals (`_scope_totals`).
        self._makeup: dict[dt.datetime, WorkerMinute] = {}
        self._judged: dt.datetime | None = None  # every minute up to this one is judged
        self._sealed: dt.datetime | None = None  # ... or being judged: no longer counted
        self._pruned_at: dt.datetime | None = None  # `_judged` at the last facts prune
        self._pruned_before: dt.datetime | None = None  # minute counts deleted before this
        self._newest: dt.datetime | None = None  # the newest event time this worker has seen
        self._arrival: dt.datetime | None = None  # wall time of this worker's last batch
        self._published: WorkerMark | None = None
        self._members_written: set[str] = set()
        self._first: dt.datetime | None = None  # the first minute this worker counted
        self._tokens: collections.deque[str] = collections.deque(maxlen=TOKENS_REMEMBERED)
        self._marks: dict[str, WorkerMark] = {}  # every worker's, as last read
        # Counted but not written yet: counts by minute, facts by (incident, minute);
        # `_unsent`: a write that failed, retried as it was (`_write`).
        self._counts: dict[dt.datetime, WorkerMinute] = {}
        self._facts: dict[tuple[str, dt.datetime], Contribution] = {}
        self._unsent: _Write | None = None
        self._write_due = 0.0  # monotonic time

    @property
    def skipped(self) -> int:
        """Events (and groups) `observe` skipped because this code cannot handle them."""
        return self.skipped_by_reason.total()

    @property
    def judged_through(self) -> dt.datetime | None:
        """The last minute judged: the complete minutes, as far as this worker knows."""
        return self._judged

    def _skip(self, reason: str, *, exc_info: bool = False) -> None:
        """Count a skip; log the first of each reason (poison arrives in floods)."""
        self.skipped_by_reason[reason] += 1
        if self.skipped_by_reason[reason] == 1:
            log.warning("incidents: skipped %s (stored all the same)", reason, exc_info=exc_info)

    # --- start: register, and seed the memory from the store ---------------------------------

    async def start(self) -> None:
        """Register this worker's watermark and load the recent minutes and the lifecycles.

        Called by the first `observe` or `sweep` if not before. The look-back read is bounded:
        the longest window or quiet period before the watermark, in one `_id` range read.
        """
        if self._started:
            return
        async with self._starting:  # the sweeper and the first batch may both call it
            if not self._started:
                await self._start()

    async def _start(self) -> None:
        now = self._clock()
        # Not the live watermark: wall time since a stopped worker's last batch says nothing
        # about a backlog waiting for this one. The oldest mark is safe: re-judging a minute
        # someone judged already records nothing new (the same counts give the same steps).
        marks = await self._store.watermarks()
        seen = [mark.newest for mark in marks.values() if mark.newest is not None]
        self._marks = dict(marks)
        mine = marks.get(self.worker)  # restarted under the same name: what it pruned still is
        self._pruned_before = None if mine is None else mine.pruned_before
        mark = WorkerMark(None, now, pruned_before=self._pruned_before)
        self._marks[self.worker] = self._published = mark
        await self._store.publish_watermark(self.worker, self._published)
        self._arrival = now
        through = last_complete_minute(min(seen) - self._lateness) if seen else None
        await self._seed(through)
        self._started = True  # last: nothing may judge or count before the look-back is in

    async def _seed(self, through: dt.datetime | None) -> None:
        """Take up the recorded lifecycles and the counts of the window up to `through`, as judged.

        At start, and when minute counts this worker had not judged yet were pruned by a worker
        that had (this one fell behind; that one's steps stand). Never before what was pruned:
        the worker that pruned it judged a window past it (`through` None: just past it, or
        nothing to load when no worker has counted yet).
        """
        while True:
            pruned = pruned_before(self._marks)
            if pruned is not None and (through is None or through - self._keep < pruned):
                through = pruned + self._keep
            self._groups, self._scopes, self._makeup = {}, {}, {}
            for iid, steps in (await self._store.transitions()).items():
                latest = ordered(steps)[-1]
                rule = self._by_id.get(str(latest.rule.get("id")))
                if rule is not None:
                    state = GroupState(rule, iid, latest.key, latest.scope_id)
                    state.adopt(steps)
                    self._groups[iid] = state
            if through is None:
                return
            if await self._load(through - self._keep, through):
                break
        self._judged = through
        for state in self._groups.values():
            state.judged = max(state.judged or through, through)

    async def _load(self, start: dt.datetime | None, end: dt.datetime) -> bool:
        """Fold every worker's counts of the minutes [start, end] into memory (one read).

        This worker's own are read back too: they were written before judging (`_advance`),
        and so were those of an earlier process under the same name. False, with nothing
        folded, if the marks say some of them may have been pruned, before the read or after
        it (a worker that had judged them pruned meanwhile): `_seed` past them instead.
        """
        if start is None:  # the first judging: from the first minute any worker counted
            firsts = [mark.first for mark in self._marks.values()] + [self._first]
            start = min((first for first in firsts if first is not None), default=end)
        if pruned_from(self._marks, start):
            return False
        counts = await self._store.minute_counts(start, end)
        self._marks = await self._store.watermarks()
        if pruned_from(self._marks, start):
            return False
        for worker_minute in counts:
            self._fold(worker_minute)
        return True

    def _fold(self, counts: WorkerMinute) -> None:
        for sid, weight in counts.scopes.items():
            series = self._scopes.setdefault(sid, {})
            series[counts.minute] = series.get(counts.minute, 0.0) + weight
        if counts.estimates or counts.records:
            known = self._makeup.get(counts.minute)
            parts = WorkerMinute(
                counts.minute, "", estimates=counts.estimates, records=counts.records
            )
            self._makeup[counts.minute] = parts if known is None else known.plus(parts)
        for group in counts.groups.values():
            state = self._groups.get(group.incident_id)
            if state is None:
                rule = self._by_id.get(group.rule_id)
                if rule is None:
                    continue  # a rule since disabled or removed
                state = GroupState(rule, group.incident_id, group.key, group.scope_id)
                state.judged = self._judged
                self._groups[group.incident_id] = state
            state.add(counts.minute, Tally(group.events, group.weight), group.explained)

    # --- observe: count a batch, then judge the minutes it completed ---------------------------

    async def observe(
        self, new_events: Sequence[Mapping[str, Any]], *, now: dt.datetime | None = None
    ) -> None:
        """Count a batch of newly stored events and judge every minute that is now complete.

        The signature of `BatchConsumer`'s `on_stored`. `now` (default: the clock) is when the
        batch arrived, and stands in for the time of an event without a `timestamp`.
        """
        await self._observe(new_events, now)

    async def _observe(
        self, new_events: Sequence[Mapping[str, Any]], now: dt.datetime | None
    ) -> int:
        """`observe`, returning how many lifecycle steps this call recorded."""
        if not new_events or not self._compiled:
            return 0
        await self.start()
        now = now or self._clock()
        token = batch_token(new_events)
        if token in self._tokens:  # a retried `on_stored` of a batch already counted
            await self._write(due=False)  # what failed to go out the first time
            return 0
        batch = _Batch({}, {})
        for doc in new_events:
            try:
                self._count(doc, now, batch)
            except _OutOfRangeError:
                self._skip("an event whose time is out of range")
            except Exception as exc:  # noqa: BLE001 - see below
                # `on_stored` is retried: an event this code cannot read would block every batch
                # behind it. Skip it (it is stored; `rebuild` sees it again).
                self._skip(f"an event this code cannot count ({type(exc).__name__})", exc_info=True)
        for delta in batch.minutes.values():
            self._remember(delta)
        self._keep_facts(batch.parts)
        self._tokens.append(token)
        if batch.late:
            if not self.late_events:
                log.warning(
                    "incidents: %d events arrived after their minute was judged (later than the"
                    " lateness of %s); they count in totals, never in a judged window",
                    batch.late,
                    self._lateness,
                )
            self.late_events += batch.late
        self._arrival = now
        await self._write(due=time.monotonic() >= self._write_due)
        result = await self._advance(now)
        return result.opened + result.resolved

    def _keep_facts(self, parts: Mapping[tuple[str, dt.datetime], Contribution]) -> None:
        """Gather a batch's facts, to be written with the counts (`_write`)."""
        for where, part in parts.items():
            known = self._facts.get(where)
            if known is None:
                self._facts[where] = part
            else:
                known.merge(part)

    def _remember(self, delta: WorkerMinute) -> None:
        """Gather a batch's counts of a minute, to be written with the facts (`_write`)."""
        known = self._counts.get(delta.minute)
        self._counts[delta.minute] = delta if known is None else known.add(delta)
        if self._first is None or delta.minute < self._first:
            self._first = delta.minute

    async def _write(self, *, due: bool, through: dt.datetime | None = None) -> None:
        """Write the counts and facts gathered since the last write, when due.

        They wait up to `write_every_s` in memory and go out together, inserted under one new
        token: with thousands of scopes a minute, writing a minute's counts after every batch was
        most of what aggregation cost. Counts of a minute that someone may judge (at or before
        `through`; default: what this worker's next mark completes) go out at once, before the
        mark that lets them judge it. A failed write is retried as it was (same token), so a
        partial insert never counts anything twice.
        """
        async with self._writing:
            through = through or self._complete_through()
            while True:
                if self._unsent is None:
                    urgent = through is not None and any(m <= through for m in self._counts)
                    if not (due or urgent) or not (self._counts or self._facts):
                        return
                    token = uuid.uuid4().hex[:24]
                    facts, counts = list(self._facts.values()), list(self._counts.values())
                    self._unsent = _Write(token, facts, counts)
                    self._facts, self._counts = {}, {}
                write = self._unsent
                written = self._known_members(write.parts)
                await self._store.add_batch(write.parts, write.minutes, token=write.token)
                self._members_written |= written
                self._unsent = None
                self._write_due = time.monotonic() + self.write_every_s

    async def flush(self) -> None:
        """Write the counts and facts gathered since the last write (sweep, `settle`, shutdown)."""
        await self.start()
        await self._write(due=True)

    def _known_members(self, parts: Sequence[Contribution]) -> set[str]:
        """Leave out the members this worker already wrote; return the ones left.

        A duplicate insert costs the store a failed write; the ones left are remembered once
        they are written.
        """
        if len(self._members_written) > MEMBERS_REMEMBERED:
            self._members_written.clear()
        fresh: set[str] = set()
        for part in parts:
            for kind, hashes in (("user", part.users), ("session", part.sessions)):
                for h in list(hashes):
                    member = f"{part.incident_id}|{kind}|{h}"
                    if member in self._members_written:
                        hashes.discard(h)
                    else:
                        fresh.add(member)
        return fresh

    def _complete_through(self) -> dt.datetime | None:
        """Minutes up to this one are complete as far as this worker knows (late after it).

        By its own newest event, or because they are judged or being judged.
        """
        own = None if self._newest is None else last_complete_minute(self._newest - self._lateness)
        return max((m for m in (own, self._judged, self._sealed) if m is not None), default=None)

    def _count(self, doc: Mapping[str, Any], now: dt.datetime, batch: _Batch) -> None:
        """Add one event to its scopes' counts and to every group whose rule matches it."""
        moment = event_time(doc, now)
        if not self._earliest <= moment <= self._latest:
            raise _OutOfRangeError
        minute = minute_of(moment)
        complete = self._complete_through()
        late = complete is not None and minute <= complete
        if self._newest is None or moment > self._newest:
            self._newest = moment
        weight = weight_of(doc)
        matched = [
            (compiled, incident_id(compiled.rule.id, key), key)
            for compiled in self._compiled
            if compiled.matches(doc)
            for key in [compiled.key(doc)]
        ]
        counts = None
        if not late:
            counts = batch.minutes.get(minute)
            if counts is None:
                counts = batch.minutes[minute] = WorkerMinute(minute, self.worker)
            emitter = doc.get("emitter")
            emitter = emitter if isinstance(emitter, str) else ""
            for fields in self._scope_fields:
                sid = scope_id(tuple((f, field_value(doc, f)) for f in fields))
                counts.scopes[sid] = counts.scopes.get(sid, 0.0) + weight
                if self._totals is not None:
                    by = counts.estimates.setdefault(sid, {})
                    by[emitter] = by.get(emitter, NO_REQUESTS).plus_weight(weight)
        batch.late += late
        for compiled, iid, key in matched:
            rid = compiled.rule.id
            explainers = [e_iid for e, e_iid, _ in matched if rid in e.rule.explains]
            self._match(
                compiled,
                iid,
                key,
                doc,
                moment=moment,
                weight=weight,
                batch=batch,
                counts=counts,
                explainers=explainers,
            )

    @staticmethod
    def _match(
        compiled: CompiledRule,
        iid: str,
        key: Key,
        doc: Mapping[str, Any],
        *,
        moment: dt.datetime,
        weight: float,
        batch: _Batch,
        counts: WorkerMinute | None,
        explainers: Sequence[str],
    ) -> None:
        """Add a matching event to its group's facts, and (on time: `counts`) to its count.

        `explainers`: the groups of rules that explain this one which the event matched too.
        """
        minute = minute_of(moment)
        part = batch.parts.get((iid, minute))
        if part is None:
            sid = scope_id(compiled.scope_key(doc))
            part = batch.parts[(iid, minute)] = Contribution(
                iid, compiled.rule.id, key, sid, minute
            )
        part.add(doc, moment, weight, late=counts is None)
        if counts is not None:
            one = Tally(1, weight)
            group = GroupCount(
                iid, compiled.rule.id, key, part.scope_id, 1, weight, dict.fromkeys(explainers, one)
            )
            known = counts.groups.get(iid)
            counts.groups[iid] = group if known is None else known.plus(group)

    # --- advancing the watermark ---------------------------------------------------------------

    async def _publish(self, now: dt.datetime) -> None:
        """Tell the other workers how far this one has read.

        After writing the counts that the mark lets them judge (waiting for a write in flight
        first): the mark is taken right after, with no await in between.
        """
        await self._write(due=False)
        arrival = self._arrival or now
        mark = WorkerMark(self._newest, arrival, self._first, self._pruned_before)
        published = self._published
        newer_minute = (
            published is None
            or mark.pruned_before != published.pruned_before
            or (mark.newest is not None and published.newest is None)
            or (
                mark.newest is not None
                and published.newest is not None
                and minute_of(mark.newest) > minute_of(published.newest)
            )
        )
        # Refresh the arrival well within `idle_after`, so no one takes this worker for idle.
        stale = published is None or arrival - published.arrival >= self._idle_after / 4
        if newer_minute or stale:
            await self._store.publish_watermark(self.worker, mark)
            self._published = self._marks[self.worker] = mark

    async def _advance(
        self, now: dt.datetime, *, ask: bool = False, floor: dt.datetime | None = None
    ) -> SweepResult:
        """Publish this worker's mark; judge every minute the (global) watermark completed.

        After a batch, the others are asked only when this worker's own events completed a
        minute not judged yet (`ask` forces it: the sweep, where wall time may have done so).
        """
        async with self._judging:
            result = await self._advance_locked(now, ask=ask, floor=floor)
            # A backlog judges faster than sweeps come: prune the minute counts as it goes (any
            # worker's prune will do). A failure is the next prune's to retry, not the batch's.
            horizon, pruned = self._prune_horizon(), pruned_before(self._marks)
            if horizon is not None and (pruned is None or horizon - pruned >= PRUNE_MINUTES_EVERY):
                try:
                    result.pruned += await self._prune_locked(now, facts=False)
                except Exception:
                    log.warning("incidents: pruning minute counts failed", exc_info=True)
            return result

    async def _advance_locked(
        self, now: dt.datetime, *, ask: bool, floor: dt.datetime | None
    ) -> SweepResult:
        await self._publish(now)
        result = SweepResult()
        own = self._complete_through()
        mine = own is not None and (self._judged is None or own > self._judged)
        if not (ask or mine or floor is not None):
            return result
        self._marks = marks = await self._store.watermarks()
        watermark = global_watermark(
            marks, now=now, lateness=self._lateness, idle_after=self._idle_after
        )
        if floor is not None and (watermark is None or watermark < floor):
            watermark = floor
        if watermark is None:
            return result
        through = last_complete_minute(watermark)
        if self._judged is not None and through <= self._judged:
            return result
        # From here on an event of these minutes is late: the verdict reads the store once.
        self._sealed = through if self._sealed is None else max(self._sealed, through)
        await self._write(due=False, through=through)  # what is judged now is in the store
        while True:
            if self._judged is not None and through <= self._judged:
                return result
            start = None if self._judged is None else self._judged + MINUTE
            if await self._load(start, through):
                break
            await self._seed(None)  # past what another worker judged and pruned meanwhile
        for iid in sorted(self._groups, key=lambda i: (self._rank[self._groups[i].rule.id], i)):
            state = self._groups[iid]
            scope: Mapping[dt.datetime, float] = self._scopes.get(state.scope_id, {})
            exact = None
            if self._totals is not None:
                # The windows ending at the minutes judged now; asked once per completed minute.
                pairs = tuple((f, v) for f, v in state.key if f in state.rule.rate_scope)
                first = (start or through - self._keep) - dt.timedelta(seconds=state.rule.window)
                exact = self._scope_totals(pairs, state.scope_id, first + MINUTE, through)
                scope = {**scope, **as_floats(exact)}
            for step in await self._judge(state, through, scope, exact):
                result.opened += step.kind == "open"
                result.resolved += step.kind == "resolve"
        self._judged = through
        self._forget(through)
        return result

    async def _judge(
        self,
        state: GroupState,
        through: dt.datetime,
        scope: Mapping[dt.datetime, float],
        exact: Mapping[dt.datetime, Total] | None = None,
    ) -> list[Transition]:
        """Judge one group and record its steps; another worker's recorded steps win.

        `exact`: the request totals behind `scope`, so each step's window says which figures
        are exact and which estimated (with their interval).
        """
        recorded: list[Transition] = []
        for _ in range(8):
            try:
                steps = judge(state, through, scope, self._open_episode)
            except Exception as exc:  # noqa: BLE001 - pure code: only the data can make it fail
                self._skip(f"a group this code cannot judge ({type(exc).__name__})", exc_info=True)
                state.judged = through
                return recorded
            if exact is not None:
                steps = [
                    s if s.window is None else replace(s, window=annotate(s.window, exact))
                    for s in steps
                ]
            conflict = None
            for step in steps:
                if await self._store.add_transition(step):
                    recorded.append(step)
                    _log_step(step)
                    if self._on_recorded is not None and step.kind != "facet":
                        await self._on_recorded(step)  # notifications: lifecycle steps only
                    continue
                if step.kind == "facet":
                    continue  # recorded before (by another worker, or before a restart): it stands
                stored = (await self._store.transitions([state.incident_id])).get(
                    state.incident_id, []
                )
                same = [s for s in stored if s.record_id == step.record_id]
                if same and (same[0].kind, same[0].at) == (step.kind, step.at):
                    continue  # another worker judged the same minutes the same way first
                conflict = stored
                break
            if conflict is None:
                return recorded
            # Another worker's history differs (it judged on other counts): it wins; go on
            # from its latest step.
            state.adopt(conflict)
            state.judged = step_minute(ordered(conflict)[-1])
        return recorded

    def _open_episode(self, iid: str, minute: dt.datetime) -> int | None:
        state = self._groups.get(iid)
        return None if state is None else state.open_episode_at(minute)

    def _scope_totals(
        self, scope: Key, sid: str, start: dt.datetime, end: dt.datetime
    ) -> dict[dt.datetime, Total]:
        """Per completed minute in [start, end], the scope's requests, from memory.

        An emitter's count record, where this worker holds one, is exact (records are per route,
        so only scopes of `http.route` or of nothing); otherwise the emitter's kept events are
        re-weighted into an estimate with what its interval needs.
        """
        by_route, route = recorded_route(dict(scope))
        totals: dict[dt.datetime, Total] = {}
        minute = start
        while minute <= end:
            makeup = self._makeup.get(minute)
            minute, this = minute + MINUTE, minute
            if makeup is None:
                continue
            recorded = makeup.records if by_route else {}
            parts = [Total.exact(counts.requests(route)) for counts in recorded.values()]
            by_emitter = makeup.estimates.get(sid, {})
            parts += [est for emitter, est in by_emitter.items() if emitter not in recorded]
            if parts:
                totals[this] = sum(parts, Total())
        return totals

    async def observe_counts(self, records: Sequence[CountRecord]) -> None:
        """Keep the count records a batch brought, for exact totals (`BatchConsumer.on_counts`).

        A record of a minute already judged comes too late to change its verdict (its copy in
        the event store still serves the readers); it is counted in `late_count_records`.
        """
        if self._totals is None or not records:
            return
        await self.start()
        minutes: dict[dt.datetime, WorkerMinute] = {}
        for record in records:
            minute = record.minute
            if self._judged is not None and minute <= self._judged:
                self.late_count_records += 1
                continue
            delta = minutes.setdefault(minute, WorkerMinute(minute, self.worker))
            delta.records[record.emitter] = RouteCounts.of(record)
        for delta in minutes.values():
            self._remember(delta)
        await self._write(due=False)

    def _forget(self, through: dt.datetime) -> None:
        """Keep a window's worth of completed minutes; drop groups over and never opened."""
        horizon = through - self._keep
        for series in self._scopes.values():
            for minute in [m for m in series if m < horizon]:
                del series[minute]
        self._scopes = {sid: series for sid, series in self._scopes.items() if series}
        for minute in [m for m in self._makeup if m < horizon]:
            del self._makeup[minute]
        for iid in list(self._groups):
            state = self._groups[iid]
            state.forget_before(horizon)
            if not state.series and not state.is_open and state.episode == 0:
                del self._groups[iid]

    # --- sweep and rebuild -----------------------------------------------------------------------

    async def sweep(self, now: dt.datetime | None = None) -> SweepResult:
        """Judge the minutes that wall time completed (silence), then prune old records.

        With no batch for `idle_after`, event time is taken to flow with wall time from the
        newest event seen (see `watermark.py`), so a quiet group resolves and a rate that fell
        during silence is judged, without waiting for the next matching event.
        """
        await self.flush()
        now = now or self._clock()
        result = await self._advance(now, ask=True)
        result.pruned += await self._prune(now)
        return result

    def _prune_horizon(self) -> dt.datetime | None:
        """The minute before which no worker starting now, or a little behind, needs counts.

        A window and the lateness before the last judged minute. Minute counts are read per
        judged minute and, on FerretDB, every read scans them all, so they are kept few.
        """
        if self._judged is None:
            return None
        return minute_of(self._judged - self._keep - self._lateness)

    async def _prune(self, now: dt.datetime) -> int:
        """Delete the records no worker needs any more; how many."""
        async with self._judging:
            return await self._prune_locked(now, facts=True)

    async def _prune_locked(self, now: dt.datetime, *, facts: bool) -> int:
        """Delete the minute counts no worker needs; how many records.

        With `facts` (the sweep), hourly, also the facts of groups that never opened and the
        marks of workers gone.
        """
        judged, horizon = self._judged, self._prune_horizon()
        if judged is None or horizon is None:
            return 0
        # Say so in the mark before deleting: a worker further behind, which reads the marks
        # again after the minutes, then starts over (`_seed`) instead of judging on holes. Only
        # what the published mark says is deleted (the publish may fail).
        if self._pruned_before is None or horizon > self._pruned_before:
            self._pruned_before = horizon
        await self._publish(now)
        published = None if self._published is None else self._published.pruned_before
        if published is None:
            return 0
        # The hour between fact prunes runs from the first sweep's prune (a `rebuild` never
        # gets there), not from the first judging.
        due = facts and judged - (self._pruned_at or judged) >= PRUNE_FACTS_EVERY
        opened = [iid for iid, state in self._groups.items() if state.episode > 0]
        pruned = await self._store.prune(
            minutes_before=published,
            facts_before=judged - self._retention if due else None,
            keep=opened,
        )
        if facts and (due or self._pruned_at is None):
            self._pruned_at = judged
        return pruned

    async def settle(self) -> SweepResult:
        """Judge every minute up to the newest event, as if wall time had run on in silence.

        For the end of a demo or a test's traffic: a sweep `idle_after` + `lateness` + a minute
        after the last batch. A running worker never needs it (its sweeper does this in time).
        """
        await self.start()
        arrival = self._arrival or self._clock()
        return await self.sweep(arrival + self._idle_after + self._lateness + MINUTE)

    async def rebuild(
        self,
        events: AsyncIterable[Mapping[str, Any]] | Iterable[Mapping[str, Any]],
        since: dt.datetime,
        *,
        now: dt.datetime | None = None,
        chunk_size: int = 1000,
    ) -> RebuildResult:
        """Replace every incident with what the stored events from `since` on say.

        Clears the incident store, replays the events in time order through `observe` (in chunks,
        like batches), then judges every minute up to `now` − lateness: with the workers stopped,
        every event before that is in the store. Run it with the workers stopped: events they
        store meanwhile would be counted by both.
        """
        now = now or self._clock()
        await self._store.clear()
        self._reset()
        result = RebuildResult()
        if self._totals is not None:  # the count records of the same time, before the events
            await self.observe_counts(await self._totals.count_records(since))
        replay: list[tuple[dt.datetime, str, Mapping[str, Any]]] = []
        async for doc in _iterate(events):
            moment = event_time(doc, now)
            if moment >= since:
                replay.append((moment, str(doc.get("event_id", "")), doc))
        replay.sort(key=lambda item: (item[0], item[1]))
        result.events = len(replay)
        for start in range(0, len(replay), chunk_size):
            chunk = [doc for _, _, doc in replay[start : start + chunk_size]]
            result.transitions += await self._observe(chunk, now)
        await self.start()
        newest = self._newest or now
        final = await self._advance(now, floor=max(now, newest) - self._lateness)
        result.transitions += final.opened + final.resolved
        await self.flush()
        await self._prune(now)  # as the sweeps of a live worker would have
        history = await self._store.transitions()
        result.opened = len(history)
        return result


async def _iterate(
    events: AsyncIterable[Mapping[str, Any]] | Iterable[Mapping[str, Any]],
) -> AsyncIterable[Mapping[str, Any]]:
    if isinstance(events, AsyncIterable):
        async for doc in events:
            yield doc
    else:
        for doc in events:
            yield doc


def _log_step(step: Transition) -> None:
    rule = step.rule.get("id")
    key = describe_key(step.key)
    if step.kind == "facet":
        log.info("Incident %s also explains %s", step.incident_id, step.reason)
    elif step.kind == "open":
        what = "opened" if step.episode == 1 else f"reopened (regression {step.episode - 1})"
        log.warning(
            "Incident %s %s: rule %s, %s: %s", step.incident_id, what, rule, key, step.reason
        )
    else:
        log.info("Incident %s resolved: rule %s, %s: %s", step.incident_id, rule, key, step.reason)


async def run_sweeper(
    aggregator: IncidentAggregator, stop: asyncio.Event, *, interval: float | None = None
) -> None:
    """Sweep every `interval` s until `stop`; a failed sweep is logged and tried again later.

    By default every half of the rules' lateness, between 1 and 60 s: in silence a minute is
    judged once wall time passed it by the lateness, and the sweep adds at most half that again.
    In between, the facts of the last batches are written within `write_every_s`, so a summary
    never waits for the next batch or sweep to show them.
    """
    if interval is None:
        interval = min(max(aggregator.rules.lateness / 2, 1.0), 60.0)
    next_sweep = time.monotonic()
    while not stop.is_set():
        try:
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + interval
                await aggregator.sweep()
            else:
                await aggregator.flush()
        except Exception:
            log.exception("incident sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(interval, aggregator.write_every_s))
