"""Blocking librdkafka calls made from asyncio, each bounded by a timeout."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable


log = logging.getLogger("widelog.kafka")

_T = TypeVar("_T")


async def _bounded(call: Callable[[], _T], timeout: float) -> _T:
    """`call()` in a daemon thread, waited for at most `timeout` s.

    Not `asyncio.to_thread`: a librdkafka call that never returns would pin a thread of the
    default executor, and `asyncio.run` waits for those at exit, so the process could not stop.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="widelog-kafka-bounded", daemon=True).start()
    return await asyncio.wait_for(asyncio.shield(done), timeout)


def _settle(future: asyncio.Future[_T], result: _T | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]  # None only with an exception
