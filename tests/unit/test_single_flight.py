"""Single flight: identical concurrent calls share one, errors included; later calls start anew."""

from __future__ import annotations

import asyncio

import pytest

from widelog.cache.single_flight import SingleFlight


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.calls += 1
        await self.release.wait()
        return self.calls


async def test_concurrent_calls_for_one_key_share_a_single_call():
    flights: SingleFlight[int] = SingleFlight()
    call = Counter()
    waiting = [asyncio.create_task(flights.run("k", call)) for _ in range(10)]
    await asyncio.sleep(0)
    assert flights.in_flight("k")
    call.release.set()
    assert [1] * 10 == await asyncio.gather(*waiting)
    assert (1, False) == (call.calls, flights.in_flight("k"))


async def test_different_keys_do_not_share():
    flights: SingleFlight[int] = SingleFlight()
    call = Counter()
    call.release.set()
    await asyncio.gather(flights.run("a", call), flights.run("b", call))
    assert 2 == call.calls


async def test_a_call_after_the_first_finished_starts_a_new_one():
    flights: SingleFlight[int] = SingleFlight()
    call = Counter()
    call.release.set()
    assert (1, 2) == (await flights.run("k", call), await flights.run("k", call))


async def test_every_waiter_gets_the_error_of_the_shared_call():
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def failing() -> int:
        await release.wait()
        raise RuntimeError("LLM down")

    waiting = [asyncio.create_task(flights.run("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert ["LLM down"] * 3 == [str(r) for r in results]


async def test_a_cancelled_waiter_does_not_cancel_the_call_others_wait_for():
    flights: SingleFlight[int] = SingleFlight()
    call = Counter()
    first = asyncio.create_task(flights.run("k", call))
    second = asyncio.create_task(flights.run("k", call))
    await asyncio.sleep(0)
    first.cancel()
    call.release.set()
    assert 1 == await second
    with pytest.raises(asyncio.CancelledError):
        await first
