import asyncio
import json
import math
import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from widelog.cli.sampling import sampling_app
from widelog.pipeline.sqlite_store import SQLiteEventStore
from widelog.sampling.policy import SamplingPolicy, TailSampler
from widelog.sampling.reweighting import (
    Estimate,
    counts_as_error,
    estimate,
    estimate_from_store,
    weight_of,
)

deterministic = settings(derandomize=True, database=None, deadline=None, max_examples=25)
SIGMAS = 5  # a 5-sigma miss happens once in ~1.7 million honest runs: a failure means a bug

# route → (share of traffic, baseline rate, error probability, slow probability)
TRAFFIC = {
    "/v1/chat": (0.70, 0.05, 0.03, 0.02),
    "/v1/sessions/{session_id}": (0.20, 0.02, 0.01, 0.0),
    "/healthz": (0.10, 0.01, 0.0, 0.0),
}


def policy_for(rates: dict[str, float], *, dry_run: bool = False) -> SamplingPolicy:
    return SamplingPolicy.model_validate(
        {"dry_run": dry_run, "slow": {"threshold_ms": 2000}, "baseline": {"routes": rates}}
    )


def stream(n: int, seed: int, shares: dict[str, float]) -> list[dict[str, Any]]:
    """`n` finished events with known truth: routes by share, errors and slow ones by chance."""
    rng = random.Random(seed)
    routes, weights = list(shares), list(shares.values())
    docs = []
    for i in range(n):
        route = rng.choices(routes, weights)[0]
        _, _, p_error, p_slow = TRAFFIC.get(route, (0, 0, 0.02, 0.01))
        doc: dict[str, Any] = {
            "event_id": f"{seed:08x}-{i:08d}",
            "request_id": f"{rng.getrandbits(96):024x}",
            "http": {"route": route, "status": 200},
            "duration_ms": 5000.0 if rng.random() < p_slow else 40.0,
        }
        if rng.random() < p_error:
            doc["http"]["status"] = 503
            doc["error"] = {"code": "LLM_UNAVAILABLE"}
        docs.append(doc)
    return docs


def sample(docs: list[dict[str, Any]], policy: SamplingPolicy) -> list[dict[str, Any]]:
    """What reaches the store: the kept events, annotated the way `LoggingService` does it."""
    sampler = TailSampler(policy)
    kept = []
    for doc in docs:
        decision = sampler.decide(doc)
        if decision.keep:
            sampler.apply(doc, decision)
            kept.append(doc)
    return kept


def truth(docs: list[dict[str, Any]]) -> tuple[Counter[str], Counter[str]]:
    requests = Counter(d["http"]["route"] for d in docs)
    errors = Counter(d["http"]["route"] for d in docs if "error" in d)
    return requests, errors


def sigma(docs: list[dict[str, Any]], route: str, rate: float) -> float:
    """The true standard deviation of the estimate: only baseline events were left to chance."""
    baseline = sum(
        1
        for d in docs
        if d["http"]["route"] == route and "error" not in d and d["duration_ms"] <= 2000
    )
    return math.sqrt(baseline * (1 - rate) / rate)


def assert_within_bounds(
    docs: list[dict[str, Any]], stored: list[dict[str, Any]], rates: dict[str, float]
) -> Estimate:
    requests, errors = truth(docs)
    result = estimate(stored)
    for route, true_requests in requests.items():
        got = result.routes[route]
        bound = SIGMAS * sigma(docs, route, rates[route])
        assert abs(got.requests - true_requests) <= bound, (route, got.requests, true_requests)
        assert errors[route] == got.errors == got.sampled_errors  # errors are kept, weight 1
        if errors[route]:
            lowest, highest = (
                errors[route] / (true_requests + bound),
                errors[route] / max(true_requests - bound, 1),
            )
            assert lowest <= got.error_rate <= highest
    bound = SIGMAS * math.sqrt(sum(sigma(docs, r, rates[r]) ** 2 for r in requests))
    assert abs(result.total.requests - len(docs)) <= bound
    return result


def test_reweighted_totals_of_a_sampled_stream_are_within_5_sigma_of_the_truth():
    rates = {route: rate for route, (_, rate, _, _) in TRAFFIC.items()}
    docs = stream(60_000, seed=1, shares={r: s for r, (s, _, _, _) in TRAFFIC.items()})
    stored = sample([dict(d) for d in docs], policy_for(rates))
    assert len(stored) < 0.15 * len(docs)  # the point of sampling: most events are not stored
    result = assert_within_bounds(docs, stored, rates)
    chat = result.routes["/v1/chat"]
    # The reported standard error is itself an estimate of the true one.
    assert 0.8 < chat.requests_stderr / sigma(docs, "/v1/chat", 0.05) < 1.25


@deterministic
@given(
    seed=st.integers(0, 2**32),
    rates=st.lists(st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.5, 1.0]), min_size=3, max_size=3),
    shares=st.lists(st.integers(1, 10), min_size=3, max_size=3),
)
def test_reweighted_totals_are_within_bounds_for_any_rates_and_traffic_mix(seed, rates, shares):
    routes = list(TRAFFIC)
    route_rates = dict(zip(routes, rates, strict=True))
    docs = stream(20_000, seed=seed, shares=dict(zip(routes, shares, strict=True)))
    stored = sample([dict(d) for d in docs], policy_for(route_rates))
    assert_within_bounds(docs, stored, route_rates)


def test_a_dry_run_store_reweights_to_the_exact_counts():
    docs = stream(5000, seed=3, shares={"/v1/chat": 1.0})
    stored = sample([dict(d) for d in docs], policy_for({"/v1/chat": 0.05}, dry_run=True))
    assert len(docs) == len(stored)
    result = estimate(stored)
    assert (5000.0, 0.0) == (result.total.requests, result.total.requests_stderr)
    assert sum(1 for d in docs if "error" in d) == result.total.errors


def test_the_weight_comes_from_the_event_itself():
    assert 50.0 == weight_of({"sampling": {"weight": 50.0, "rate": 0.5}})
    assert 20.0 == weight_of({"sampling": {"rate": 0.05}})
    assert 1.0 == weight_of({"sampling": {"rate": 0.05, "dry_run": True}})
    assert 1.0 == weight_of({})
    for junk in ({"weight": "x"}, {"weight": 0.5, "rate": 0}, {"rate": True}, {"rate": math.nan}):
        assert 1.0 == weight_of({"sampling": junk})


def test_errors_are_what_the_sampler_called_errors_else_the_domain_definition():
    assert counts_as_error({"sampling": {"reason": "error"}, "http": {"status": 429}})
    assert not counts_as_error({"sampling": {"reason": "slow"}, "http": {"status": 200}})
    assert counts_as_error({"http": {"status": 502}})
    assert counts_as_error({"error": {"code": "X"}})
    assert not counts_as_error({"http": {"status": 404}})


def test_estimate_reports_which_policies_and_reasons_the_events_came_from():
    docs: list[dict[str, Any]] = [
        {"http": {"route": "/a"}, "sampling": {"reason": "error", "policy": "1:aa", "rate": 1.0}},
        {
            "http": {"route": "/a"},
            "sampling": {"reason": "baseline", "policy": "2:bb", "rate": 0.5},
        },
        {"http": "not a mapping"},
    ]
    report = estimate(docs).as_dict()
    assert {"1:aa": 1, "2:bb": 1, "unsampled": 1} == report["by_policy"]
    assert {"baseline": 1, "error": 1, "unsampled": 1} == report["by_reason"]
    assert ["/a", "unknown"] == [r["route"] for r in report["routes"]]
    assert {"requests": 3.0, "errors": 1.0} == {
        k: v for k, v in report["routes"][0].items() if k in {"requests", "errors"}
    }
    json.dumps(report)


async def test_estimate_from_store_reads_every_stored_event(sqlite_store):
    docs = stream(3000, seed=5, shares={"/v1/chat": 3, "/healthz": 1})
    stored = sample(docs, policy_for({"/v1/chat": 0.05, "/healthz": 0.01}))
    await sqlite_store.write_batch(stored)
    from_store = await estimate_from_store(sqlite_store, batch_size=7)
    assert estimate(stored).as_dict() == from_store.as_dict()


def test_the_estimate_command_reads_the_configured_store(tmp_path, monkeypatch):
    path = tmp_path / "events.sqlite3"
    docs = stream(2000, seed=9, shares={"/v1/chat": 1.0})
    stored = sample(docs, policy_for({"/v1/chat": 0.1}))

    async def fill() -> None:
        store = SQLiteEventStore(path)
        await store.write_batch(stored)
        await store.close()

    asyncio.run(fill())
    monkeypatch.setenv("WIDELOG_SQLITE_PATH", str(path))
    runner = CliRunner()
    result = runner.invoke(sampling_app, ["estimate", "--json"])
    assert 0 == result.exit_code, result.output
    report = json.loads(result.output)
    assert estimate(stored).as_dict() == report
    table = runner.invoke(sampling_app, ["estimate"])
    assert 0 == table.exit_code, table.output
    assert "/v1/chat" in table.output
    assert "total" in table.output
