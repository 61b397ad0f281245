"""Watermarks: when is a minute of event time complete, across every worker (pure; no I/O).

Each worker publishes, after writing a batch's counts, the newest event time it has seen and the
wall time of its last batch (`WorkerMark`). The **watermark** is how far event time is known to be
complete:

- while workers are receiving events, it is the *oldest* of their newest event times, less
  `lateness` (the disorder allowed): no worker can still write an on-time event before it;
- a worker that got no batch for `idle_after` of wall time (its partitions are quiet, or it
  stopped) no longer holds the others back;
- when every worker is idle (silence), event time is taken to flow with wall time from each
  one's newest event: `newest + (now − last batch) − lateness`. This is how silence resolves
  incidents; a consumer reading a backlog keeps receiving batches, so wall time never overtakes
  the events it has not read yet;
- a worker that registered but has not seen an event yet holds the watermark back (it may be
  about to read the oldest events) until it is idle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from widelog.incidents.model import MINUTE, minute_of

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(slots=True, frozen=True)
class WorkerMark:
    """What one worker has seen: its newest event time (None: none yet) and its last batch."""

    newest: dt.datetime | None
    arrival: dt.datetime  # wall time of the worker's last batch (or of its registration)
    first: dt.datetime | None = None  # the first minute it counted (where judging can start)
    # Before this minute, the worker deleted every worker's minute counts (it had judged them):
    # another worker that has not judged them yet starts over from the lifecycles instead.
    pruned_before: dt.datetime | None = None


def global_watermark(
    marks: Mapping[str, WorkerMark],
    *,
    now: dt.datetime,
    lateness: dt.timedelta,
    idle_after: dt.timedelta,
) -> dt.datetime | None:
    """Event time before which every worker has written every on-time event; None: unknown."""
    active = [mark for mark in marks.values() if now - mark.arrival <= idle_after]
    if active:
        newest = [mark.newest for mark in active]
        if any(moment is None for moment in newest):
            return None
        return min(m for m in newest if m is not None) - lateness
    flowing = [m.newest + (now - m.arrival) for m in marks.values() if m.newest is not None]
    return min(flowing) - lateness if flowing else None


def pruned_before(marks: Mapping[str, WorkerMark]) -> dt.datetime | None:
    """The minute before which some worker may have deleted the minute counts; None: none did."""
    return max((m.pruned_before for m in marks.values() if m.pruned_before), default=None)


def pruned_from(marks: Mapping[str, WorkerMark], start: dt.datetime) -> bool:
    """Whether some minute counts from `start` on may have been deleted (a window has holes).

    Read the marks again after the counts too, in case a prune ran meanwhile.
    """
    pruned = pruned_before(marks)
    return pruned is not None and start < pruned


def last_complete_minute(watermark: dt.datetime) -> dt.datetime:
    """The latest minute whose end the watermark has passed."""
    return minute_of(watermark) - MINUTE
