"""Single flight: concurrent identical misses share one call instead of each paying for it.

Without it, a popular question that is not cached yet sends every concurrent asker to the LLM
(a "thundering herd"), and each of them then writes the same answer back. With it, the first
caller for a key starts the call and the others await the same result, its error included.

The call runs in its own task and callers await it through `asyncio.shield`, so a caller that is
cancelled (its client went away) does not cancel the call the others are waiting for. Per
process only: instances sharing a cache each make at most one call per key at a time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[T]] = {}

    def in_flight(self, key: str) -> bool:
        return key in self._calls

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """The result of `call()`, or of the call already running for `key`."""
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Future[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            # Retrieved here, so an error nobody awaits any more is not logged as never retrieved.
            task.exception()
