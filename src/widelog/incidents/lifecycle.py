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

Every step therefore falls on a minute boundary, and every worker that judges the same complete
minutes computes the same steps.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from widelog.incidents.model import (
    MINUTE,
    Tally,
    Transition,
    TransitionKind,
    WindowStats,
    crosses,
    describe_span,
    hm,
    minute_of,
    ordered,
    scope_pairs,
    why_open,
    window_at,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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

    def add(self, minute: dt.datetime, tally: Tally) -> None:
        known = self.series.get(minute)
        self.series[minute] = tally if known is None else known.plus(tally)
        if self.last_match is None or minute > self.last_match:
            self.last_match = minute

    def adopt(self, history: Sequence[Transition]) -> None:
        """Take the recorded lifecycle (another worker's, or the store's at start) as ours."""
        steps = ordered(history)
        if not steps:
            return
        last = steps[-1]
        self.episode = last.episode
        self.is_open = last.kind == "open"
        minute = step_minute(last)
        self.opened_minute = minute if self.is_open else None
        if self.judged is None or self.judged < minute:
            self.judged = minute

    def forget_before(self, minute: dt.datetime) -> None:
        for old in [m for m in self.series if m < minute]:
            del self.series[old]


def judge(
    state: GroupState, through: dt.datetime, scope: Mapping[dt.datetime, float]
) -> list[Transition]:
    """The steps the group's completed minutes up to `through` call for; updates `state`."""
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
        window = window_at(rule.window, minute, state.series, scope)
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
                    f"{rule.min_rate:.2%}, in the window to {hm(window.end)}"
                )
                step("resolve", minute, reason, window)
            elif minute - last >= quiet_minutes * MINUTE:
                quiet = dt.timedelta(seconds=rule.quiet)
                step("resolve", minute, f"no matching event for {describe_span(quiet)}", window)
        elif crosses(rule, window):
            step("open", minute, why_open(rule, window, scope_text), window)
        minute += MINUTE
    if state.judged is None or state.judged < through:
        state.judged = through
    return steps


def _last_match_by(matches: Sequence[dt.datetime], minute: dt.datetime) -> dt.datetime | None:
    at = bisect.bisect_right(matches, minute)
    return matches[at - 1] if at else None


def _not_after(moment: dt.datetime | None, minute: dt.datetime) -> dt.datetime | None:
    return moment if moment is not None and moment <= minute else None
