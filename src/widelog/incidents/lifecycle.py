"""The lifecycle, judged minute by minute on *completed* minutes only (pure; no I/O).

A minute is complete once the watermark (see `watermark.py`) has passed its end: every event of
it that will ever be judged is in the store. Each completed minute is judged once, in order, for
every group whose window holds a match (and every open group), so the history is a function of
the per-minute counts alone, not of how the events were batched or when a sweep ran:

- closed → **open** at the end of minute *m* when the window ending with *m* crosses the
  thresholds (a reopening is episode n+1, a regression);
- open → **resolved** at the end of minute *m* when the window's rate fell under
  `resolve_below × min_rate` (with at least `min_requests` to judge), or when no matching event
  came for `quiet` (rounded up to whole minutes) after the last minute with one.

**Inhibition** (`Rule.explains`, as Alertmanager mutes a target alert while its source fires):
a group is judged on its *unexplained* window: its matches less those that also matched a group
of an explaining rule whose incident is open after that minute was judged (explaining rules are
judged first). A closed group whose full window crosses but whose unexplained one does not opens
nothing: it is recorded once as a **facet** of the explaining incident's episode (the one that
explains the most of it; ties by id).

Every step therefore falls on a minute boundary, and every worker that judges the same complete
minutes computes the same steps.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from widelog.incidents.model import (
    MINUTE,
    Tally,
    Transition,
    TransitionKind,
    WindowStats,
    crosses,
    describe_key,
    describe_span,
    hm,
    minute_of,
    ordered,
    scope_pairs,
    why_open,
    window_at,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    from widelog.incidents.rules import Key, Rule


def step_minute(step: Transition) -> dt.datetime:
    """The completed minute a step was judged at (its window's last minute)."""
    if step.window is not None:
        return step.window.end_minute
    return minute_of(step.at - dt.timedelta(milliseconds=1))


@dataclass(slots=True)
class GroupState:
    """One group as an aggregator keeps it in memory: its completed minutes and its lifecycle."""

    rule: Rule
    incident_id: str
    key: Key
    scope_id: str
    series: dict[dt.datetime, Tally] = field(default_factory=dict)  # completed, on time
    episode: int = 0
    is_open: bool = False
    opened_minute: dt.datetime | None = None
    last_match: dt.datetime | None = None  # the latest completed minute with a match
    judged: dt.datetime | None = None  # every minute up to this one is judged
    # Of `series`, what matched an explaining group too: minute -> explaining group -> tally.
    explained: dict[dt.datetime, dict[str, Tally]] = field(default_factory=dict)
    # (judged minute, episode, open after it) for each step, so explained groups can ask whether
    # this one was open at a minute; pruned like the series, keeping the state before them.
    changes: list[tuple[dt.datetime, int, bool]] = field(default_factory=list)
    facet_of: dict[str, int] = field(default_factory=dict)  # explaining group -> episode recorded

    def add(self, minute: dt.datetime, tally: Tally, explained: Mapping[str, Tally]) -> None:
        known = self.series.get(minute)
        self.series[minute] = tally if known is None else known.plus(tally)
        if self.last_match is None or minute > self.last_match:
            self.last_match = minute
        if explained:
            mine = self.explained.setdefault(minute, {})
            for iid, part in explained.items():
                mine[iid] = mine[iid].plus(part) if iid in mine else part

    def open_episode_at(self, minute: dt.datetime) -> int | None:
        """The episode open once `minute` was judged, or None (closed)."""
        at = bisect.bisect_right(self.changes, minute, key=lambda change: change[0])
        if not at:
            return None
        _, episode, is_open = self.changes[at - 1]
        return episode if is_open else None

    def adopt(self, history: Sequence[Transition]) -> None:
        """Take the recorded lifecycle (another worker's, or the store's at start) as ours."""
        steps = ordered(history)
        if not steps:
            return
        last = steps[-1]
        self.changes = [(step_minute(s), s.episode, s.kind == "open") for s in steps]
        self.episode = last.episode
        self.is_open = last.kind == "open"
        minute = step_minute(last)
        self.opened_minute = minute if self.is_open else None
        if self.judged is None or self.judged < minute:
            self.judged = minute

    def forget_before(self, minute: dt.datetime) -> None:
        for old in [m for m in self.series if m < minute]:
            del self.series[old]
            self.explained.pop(old, None)
        older = bisect.bisect_left(self.changes, minute, key=lambda change: change[0])
        del self.changes[: max(older - 1, 0)]


def _never_open(_incident_id: str, _minute: dt.datetime) -> int | None:
    return None


def _explained_by_open(
    state: GroupState,
    minute: dt.datetime,
    window_minutes: int,
    open_episode: Callable[[str, dt.datetime], int | None],
) -> dict[str, tuple[int, Tally]]:
    """What each explaining group open at `minute` explains of the window ending with it."""
    episodes: dict[str, int | None] = {}
    found: dict[str, tuple[int, Tally]] = {}
    if not state.explained:
        return found  # no explaining rule, or none of them matched lately
    for back in range(window_minutes):
        for iid, tally in state.explained.get(minute - back * MINUTE, {}).items():
            if iid not in episodes:
                episodes[iid] = open_episode(iid, minute)
            episode = episodes[iid]
            if episode is not None:
                known = found.get(iid)
                found[iid] = (episode, tally if known is None else known[1].plus(tally))
    return found


def judge(
    state: GroupState,
    through: dt.datetime,
    scope: Mapping[dt.datetime, float],
    open_episode: Callable[[str, dt.datetime], int | None] = _never_open,
) -> list[Transition]:
    """The steps the group's completed minutes up to `through` call for; updates `state`.

    `open_episode(group, minute)`: the episode of an explaining group open once `minute` was
    judged (None: closed), so those groups must be judged through `through` first.
    """
    rule = state.rule
    window_minutes = rule.window // 60
    quiet_minutes = math.ceil(rule.quiet / 60)
    matches = sorted(state.series)
    pairs = scope_pairs(rule, state.key)
    scope_text = " with " + " and ".join(f"{f}={v}" for f, v in pairs) if pairs else ""
    steps: list[Transition] = []

    def step(kind: TransitionKind, minute: dt.datetime, reason: str, window: WindowStats) -> None:
        state.episode += kind == "open"
        state.is_open = kind == "open"
        state.opened_minute = minute if kind == "open" else None
        state.changes.append((minute, state.episode, state.is_open))
        steps.append(
            Transition(
                state.incident_id,
                state.episode,
                kind,
                minute + MINUTE,
                reason,
                rule.snapshot(),
                state.key,
                state.scope_id,
                window,
            )
        )

    minute = state.judged + MINUTE if state.judged is not None else (matches or [through])[0]
    while minute <= through:
        if not state.is_open:
            # The next minute whose window holds a match; nothing can open before it.
            at = bisect.bisect_left(matches, minute - (window_minutes - 1) * MINUTE)
            if at == len(matches):
                break
            minute = max(minute, matches[at])
            if minute > through:
                break
        full = window_at(rule.window, minute, state.series, scope)
        explained = _explained_by_open(state, minute, window_minutes, open_episode)
        window, muted = _unexplained(full, explained.values())
        if state.is_open:
            last = _last_match_by(matches, minute) or _not_after(state.last_match, minute)
            last = last or state.opened_minute or minute
            if (
                rule.min_rate is not None
                and state.opened_minute is not None
                and minute > state.opened_minute
                and window.requests >= rule.min_requests
                and window.rate < rule.min_rate * rule.resolve_below
            ):
                reason = (
                    f"the rate fell to {window.rate:.2%}, under {rule.resolve_below:g} x "
                    f"{rule.min_rate:.2%}, in the window to {hm(window.end)}{muted}"
                )
                step("resolve", minute, reason, window)
            elif minute - last >= quiet_minutes * MINUTE:
                quiet = dt.timedelta(seconds=rule.quiet)
                step("resolve", minute, f"no matching event for {describe_span(quiet)}", window)
        elif crosses(rule, window):
            step("open", minute, why_open(rule, window, scope_text) + muted, window)
        elif explained and crosses(rule, full):
            # The most explaining open group owns the facet (ties: the smaller id).
            owner, (episode, tally) = min(explained.items(), key=lambda e: (-e[1][1].weight, e[0]))
            if state.facet_of.get(owner) != episode:
                state.facet_of[owner] = episode
                reason = (
                    f"{rule.id} on {describe_key(state.key)}: {why_open(rule, full, scope_text)};"
                    f" {tally.weight:,.0f} of them explained by this incident"
                )
                steps.append(
                    Transition(
                        owner,
                        episode,
                        "facet",
                        minute + MINUTE,
                        reason,
                        rule.snapshot(),
                        state.key,
                        state.scope_id,
                        full,
                        facet_id=state.incident_id,
                    )
                )
        minute += MINUTE
    if state.judged is None or state.judged < through:
        state.judged = through
    return steps


def _unexplained(
    window: WindowStats, explained: Collection[tuple[int, Tally]]
) -> tuple[WindowStats, str]:
    """The window less what open explaining incidents explain, and a note saying so ("": none).

    An event two explaining groups both explain is left out twice: at worst nothing is left.
    """
    events = sum(tally.events for _, tally in explained)
    if not events:
        return window, ""
    weight = sum(tally.weight for _, tally in explained)
    rest = replace(
        window,
        events=max(window.events - events, 0),
        matched=max(window.matched - weight, 0.0),
    )
    return rest, f", leaving out {weight:,.0f} requests open incidents of other rules explain"


def _last_match_by(matches: Sequence[dt.datetime], minute: dt.datetime) -> dt.datetime | None:
    at = bisect.bisect_right(matches, minute)
    return matches[at - 1] if at else None


def _not_after(moment: dt.datetime | None, minute: dt.datetime) -> dt.datetime | None:
    return moment if moment is not None and moment <= minute else None
