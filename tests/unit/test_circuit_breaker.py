"""The circuit breaker: opens after failures in a row, probes after a pause, closes on success."""

from __future__ import annotations

import pytest

from tests.cache_fakes import FakeClock
from widelog.cache.circuit_breaker import CircuitBreaker


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock) -> CircuitBreaker:
    return CircuitBreaker(name="test", failure_threshold=3, reset_timeout_s=2.0, clock=clock)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_failure("boom")


def test_a_new_breaker_is_closed_and_lets_calls_through(breaker):
    assert ("closed", True) == (breaker.state, breaker.allow())


def test_it_opens_after_the_threshold_of_failures_in_a_row(breaker):
    fail(breaker, 2)
    assert "closed" == breaker.state
    fail(breaker, 1)
    assert ("open", False, 1) == (breaker.state, breaker.allow(), breaker.opened)


def test_a_success_resets_the_count_of_failures(breaker):
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert "closed" == breaker.state


def test_after_the_reset_timeout_exactly_one_probe_goes_through(breaker, clock):
    fail(breaker, 3)
    clock.advance(1.9)
    assert breaker.allow() is False
    clock.advance(0.2)
    assert [True, False, False] == [breaker.allow() for _ in range(3)]
    assert "half_open" == breaker.state


def test_a_successful_probe_closes_the_circuit(breaker, clock):
    fail(breaker, 3)
    clock.advance(2)
    assert breaker.allow()
    breaker.record_success()
    assert ("closed", True) == (breaker.state, breaker.allow())


def test_a_failed_probe_opens_it_for_another_period(breaker, clock):
    fail(breaker, 3)
    clock.advance(2)
    assert breaker.allow()
    breaker.record_failure("still down")
    assert ("open", False) == (breaker.state, breaker.allow())
    clock.advance(2)
    assert breaker.allow()
    assert 1 == breaker.opened  # re-opening from half-open is the same outage


def test_a_probe_that_never_reports_is_replaced_after_the_reset_timeout(breaker, clock):
    fail(breaker, 3)
    clock.advance(2)
    assert breaker.allow()  # this caller was cancelled and never reports
    clock.advance(2)
    assert breaker.allow()


def test_nonsense_parameters_are_refused():
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(name="x", failure_threshold=0)
