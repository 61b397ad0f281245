"""The incident aggregator: stored events in, incidents (open → update → resolve → reopen) out.

`observe` is the consumer's `on_stored` hook: it gets each batch's newly stored events (never a
re-delivery), adds them to the shared store as insert-only records keyed by batch, then judges
every group the batch touched on event time and records any lifecycle step. Because the state is
in the store and every write is idempotent, several workers produce one incident per group key, a
retried hook changes nothing twice, and a restarted worker carries on where the store is.

`sweep` resolves incidents that got no event for their quiet period (a silent group has no batch
to judge it) and prunes old records; run it every minute or so in every process that consumes.
`rebuild` recomputes everything from stored events, through the same code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from widelog.incidents.model import (
    MINUTE,
    Contribution,
    GroupView,
    ScopeCount,
    Transition,
    describe_key,
    describe_span,
    event_time,
    minute_of,
    ordered,
    plan,
    window_at,
)
from widelog.incidents.request_totals import annotate, as_floats
from widelog.incidents.rules import (
    CompiledRule,
    Key,
    field_value,
    incident_id,
    scope_id,
)
from widelog.sampling.reweighting import weight_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from widelog.incidents.ports import IncidentStore
    from widelog.incidents.request_totals import RequestTotals
    from widelog.incidents.rules import IncidentRules, Rule

log = logging.getLogger("widelog.incidents")
FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def batch_token(events: Sequence[Mapping[str, Any]]) -> str:
    """The same batch gives the same token (so a retry inserts nothing new); another, another."""
    ids = sorted(
        str(doc.get("event_id") or doc.get("request_id") or i) for i, doc in enumerate(events)
    )
    return hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:24]


class _OutOfRangeError(ValueError):
    """An event time too close to the ends of `datetime` for window and quiet arithmetic."""


@dataclass(slots=True)
class _Group:
    rule: Rule
    key: Key
    scope_id: str
    minutes: set[dt.datetime]


@dataclass(slots=True)
class SweepResult:
    resolved: int = 0
    pruned: int = 0


@dataclass(slots=True)
class RebuildResult:
    events: int = 0  # events at or after `since` that were replayed
    opened: int = 0  # incidents (by id) that have at least one opening
    transitions: int = 0


class IncidentAggregator:
    """Groups stored events into incidents by rules; all state in an `IncidentStore`."""

    def __init__(
        self,
        store: IncidentStore,
        rules: IncidentRules,
        *,
        on_recorded: Callable[[Transition], Awaitable[None]] | None = None,
        totals: RequestTotals | None = None,
    ) -> None:
        self._store = store
        # Called with each step this aggregator recorded (first), after its log line: the
        # notifications' outbox insert. It must not raise (the consumer would retry the batch).
        self._on_recorded = on_recorded
        # Exact-or-estimated scope requests (count records); None: the scope counts' estimates.
        self._totals = totals
        self.rules = rules
        self._compiled = [CompiledRule(rule) for rule in rules.active]
        self._scope_fields = sorted({c.scope_fields for c in self._compiled})
        longest = max((max(r.window, r.quiet) for r in rules.active), default=0)
        self._lookback = dt.timedelta(seconds=longest) + MINUTE
        self._max_window = dt.timedelta(seconds=max((r.window for r in rules.active), default=0))
        # Scope counts and never-opened groups' records are pruned by `sweep` after this.
        self._retention = self._lookback + dt.timedelta(
            seconds=rules.lateness + rules.count_retention
        )
        # Event times this code can do date arithmetic on: windows, quiet periods and retention
        # reach this far either side of an event, and `datetime` ends at years 1 and 9999.
        margin = self._retention + self._max_window + dt.timedelta(days=1)
        quiet = dt.timedelta(seconds=max((r.quiet for r in rules.active), default=0))
        self._earliest = dt.datetime.min.replace(tzinfo=dt.UTC) + margin
        self._latest = FAR_FUTURE - margin - quiet
        # What `observe` could not count or judge, by reason (each logged once); the events are
        # stored all the same, and `rebuild` reads them again.
        self.skipped_by_reason: collections.Counter[str] = collections.Counter()

    @property
    def skipped(self) -> int:
        """Events (and groups) `observe` skipped because this code cannot handle them."""
        return self.skipped_by_reason.total()

    def _skip(self, reason: str, *, exc_info: bool = False) -> None:
        """Count a skip; log the first of each reason (poison arrives in floods)."""
        self.skipped_by_reason[reason] += 1
        if self.skipped_by_reason[reason] == 1:
            log.warning("incidents: skipped %s (stored all the same)", reason, exc_info=exc_info)

    async def observe(
        self, new_events: Sequence[Mapping[str, Any]], *, now: dt.datetime | None = None
    ) -> None:
        """Count a batch of newly stored events and record the lifecycle steps they call for.

        The signature of `BatchConsumer`'s `on_stored`. `now` (default: the wall clock) only
        stands in for the time of an event without a `timestamp`.
        """
        await self._observe(new_events, now)

    async def _observe(
        self, new_events: Sequence[Mapping[str, Any]], now: dt.datetime | None
    ) -> int:
        """`observe`, returning how many lifecycle steps this call recorded."""
        if not new_events or not self._compiled:
            return 0
        now = now or dt.datetime.now(dt.UTC)
        token = batch_token(new_events)
        scopes: dict[tuple[str, dt.datetime], list[float]] = {}
        parts: dict[tuple[str, dt.datetime], Contribution] = {}
        groups: dict[str, _Group] = {}
        for doc in new_events:
            try:
                self._count(doc, now, scopes, parts, groups)
            except _OutOfRangeError:
                self._skip("an event whose time is out of range")
            except Exception as exc:  # noqa: BLE001 - see below
                # `on_stored` is retried: an event this code cannot read would block every batch
                # behind it. Skip it (it is stored; `rebuild` sees it again).
                self._skip(f"an event this code cannot count ({type(exc).__name__})", exc_info=True)
        counts = [ScopeCount(s, m, int(n), w) for (s, m), (n, w) in scopes.items()]
        await self._store.add_scope_counts(counts, token=token)
        if not groups:
            return 0
        await self._store.add_contributions(list(parts.values()), token=token)
        return await self._judge(groups)

    def _count(
        self,
        doc: Mapping[str, Any],
        now: dt.datetime,
        scopes: dict[tuple[str, dt.datetime], list[float]],
        parts: dict[tuple[str, dt.datetime], Contribution],
        groups: dict[str, _Group],
    ) -> None:
        """Add one event to its scopes' counts and to every group whose rule matches it."""
        moment = event_time(doc, now)
        if not self._earliest <= moment <= self._latest:
            raise _OutOfRangeError
        minute = minute_of(moment)
        weight = weight_of(doc)
        matched = [
            (compiled, compiled.key(doc)) for compiled in self._compiled if compiled.matches(doc)
        ]
        for fields in self._scope_fields:
            key = tuple((f, field_value(doc, f)) for f in fields)
            count = scopes.setdefault((scope_id(key), minute), [0, 0.0])
            count[0] += 1
            count[1] += weight
        for compiled, key in matched:
            iid = incident_id(compiled.rule.id, key)
            group = groups.get(iid)
            if group is None:
                sid = scope_id(compiled.scope_key(doc))
                group = groups[iid] = _Group(compiled.rule, key, sid, set())
            group.minutes.add(minute)
            part = parts.get((iid, minute))
            if part is None:
                part = parts[(iid, minute)] = Contribution(
                    iid, compiled.rule.id, key, group.scope_id, minute
                )
            part.add(doc, moment, weight)

    async def _judge(self, groups: Mapping[str, _Group]) -> int:
        minutes = [m for group in groups.values() for m in group.minutes]
        start, end = min(minutes) - self._lookback, max(minutes)
        series = await self._store.group_series(groups.keys(), start, end)
        scopes = await self._store.scope_series(
            {g.scope_id for g in groups.values()}, start - self._max_window, end
        )
        history = await self._store.transitions(groups.keys())
        recorded = 0
        for iid, group in sorted(groups.items()):
            steps = ordered(history.get(iid, []))
            earlier: dt.datetime | None = None
            if steps and steps[-1].kind == "open":
                group_series = series.get(iid, {})
                first = min(group.minutes)
                if not any(m < first for m in group_series):
                    earlier = await self._store.last_event_before(iid, first)
            scope = scopes.get(group.scope_id, {})
            exact = None
            if self._totals is not None:
                pairs = tuple((f, v) for f, v in group.key if f in group.rule.rate_scope)
                # The windows ending at the batch's minutes; other minutes keep the scope counts.
                first = min(group.minutes) - dt.timedelta(seconds=group.rule.window) + MINUTE
                exact = await self._totals.scope_totals(pairs, first, max(group.minutes))
                scope = {**scope, **as_floats(exact)}
            view = GroupView(
                rule=group.rule,
                incident_id=iid,
                key=group.key,
                scope_id=group.scope_id,
                transitions=steps,
                series=series.get(iid, {}),
                scope=scope,
                earlier_last=earlier,
            )
            try:
                planned = plan(view, group.minutes)
            except Exception as exc:  # noqa: BLE001 - pure code: only the data can make it fail
                self._skip(f"a group this code cannot judge ({type(exc).__name__})", exc_info=True)
                continue
            if exact is not None:
                planned = [
                    step
                    if step.window is None
                    else replace(step, window=annotate(step.window, exact))
                    for step in planned
                ]
            recorded += await self._record(planned)
        return recorded

    async def _record(self, steps: Iterable[Transition]) -> int:
        """Record steps in order; stop at one another worker recorded first (its view wins)."""
        recorded = 0
        for step in steps:
            if not await self._store.add_transition(step):
                break
            recorded += 1
            _log_step(step)
            if self._on_recorded is not None:
                await self._on_recorded(step)
        return recorded

    async def sweep(
        self, now: dt.datetime | None = None, *, lateness: dt.timedelta | None = None
    ) -> SweepResult:
        """Resolve open incidents quiet for their rule's period by `now` - lateness; prune.

        `lateness` (default: the rules') is how late an event may still arrive: an incident is
        resolved only once its quiet period ended that long ago, so a consumer that lags a little
        does not resolve and then reopen (a false regression) what it has not read yet.
        """
        now = now or dt.datetime.now(dt.UTC)
        horizon = now - (
            lateness if lateness is not None else dt.timedelta(seconds=self.rules.lateness)
        )
        result = SweepResult()
        history = await self._store.transitions()
        for iid, steps in sorted(history.items()):
            latest = ordered(steps)[-1]
            if latest.kind != "open":
                continue
            quiet = dt.timedelta(seconds=int(latest.rule.get("quiet_s", 900)))
            last = await self._store.last_event_before(iid, FAR_FUTURE)
            if last is None or last + quiet > horizon or last + quiet <= latest.at:
                continue
            window_s = int(latest.rule.get("window_s", 300))
            end = minute_of(last)
            start = end - dt.timedelta(seconds=window_s)
            series = (await self._store.group_series([iid], start, end)).get(iid, {})
            scope = (await self._store.scope_series([latest.scope_id], start, end)).get(
                latest.scope_id, {}
            )
            exact = None
            if self._totals is not None:
                pairs = tuple((f, v) for f, v in latest.key if f in latest.rule.get("scope", []))
                exact = await self._totals.scope_totals(pairs, start, end)
                scope = as_floats(exact)
            window = window_at(window_s, end, series, scope)
            if exact is not None:
                window = annotate(window, exact)
            step = Transition(
                iid,
                latest.episode,
                "resolve",
                last + quiet,
                f"no matching event for {describe_span(quiet)}",
                latest.rule,
                latest.key,
                latest.scope_id,
                window,
            )
            result.resolved += await self._record([step])
        result.pruned = await self._store.prune(
            before=horizon - self._retention, keep=history.keys()
        )
        return result

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
        like batches), then sweeps at `now`. Run it with the workers stopped: events they store
        meanwhile would be counted by both.
        """
        now = now or dt.datetime.now(dt.UTC)
        await self._store.clear()
        result = RebuildResult()
        chunk: list[tuple[dt.datetime, str, Mapping[str, Any]]] = []

        async def flush() -> None:
            chunk.sort(key=lambda item: (item[0], item[1]))
            result.transitions += await self._observe([doc for _, _, doc in chunk], now)
            chunk.clear()

        async for doc in _iterate(events):
            moment = event_time(doc, now)
            if moment < since:
                continue
            result.events += 1
            chunk.append((moment, str(doc.get("event_id", "")), doc))
            if len(chunk) >= chunk_size:
                await flush()
        if chunk:
            await flush()
        sweep = await self.sweep(now)
        result.transitions += sweep.resolved
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
    if step.kind == "open":
        what = "opened" if step.episode == 1 else f"reopened (regression {step.episode - 1})"
        log.warning(
            "Incident %s %s: rule %s, %s: %s", step.incident_id, what, rule, key, step.reason
        )
    else:
        log.info("Incident %s resolved: rule %s, %s: %s", step.incident_id, rule, key, step.reason)


async def run_sweeper(
    aggregator: IncidentAggregator, stop: asyncio.Event, *, interval: float = 60.0
) -> None:
    """Sweep every `interval` s until `stop`; a failed sweep is logged and tried again later."""
    while not stop.is_set():
        try:
            await aggregator.sweep()
        except Exception:
            log.exception("incident sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
