import json
import math
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from widelog.cli.main import main
from widelog.cli.sampling import sampling_app
from widelog.policies import load_sampling_policy
from widelog.sampling.policy import (
    Decision,
    SamplingPolicy,
    SamplingPolicyError,
    TailSampler,
    stable_hash,
    threshold_for,
)

ROOT = Path(__file__).resolve().parents[2]
# Derandomized: the same examples on every run, so a failure is reproducible and CI never flakes.
deterministic = settings(derandomize=True, database=None, deadline=None, max_examples=300)

POLICY = SamplingPolicy.model_validate(
    {
        "version": "t1",
        "error": {"statuses": [429]},
        "slow": {"threshold_ms": 2000, "routes": {"/v1/chat": 10_000, "/healthz": 100}},
        "critical": {"routes": ["/v1/admin/*", "/v1/billing"]},
        "forced": {"allowed": True},
        "baseline": {"rate": 0.02, "routes": {"/v1/chat": 0.05, "/healthz": 0.01}},
    }
)
ROUTES = ["/v1/chat", "/healthz", "/v1/admin/reindex", "/v1/billing", "/v1/other", "unmatched"]


EVENT_PARAMETERS = frozenset({"route", "status", "duration_ms", "request_id", "error_code"})


def event(
    *,
    route: Any = "/v1/chat",
    status: Any = 200,
    duration_ms: Any = 12.5,
    request_id: Any = "req-1",
    error_code: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        **extra,
        "request_id": request_id,
        "http": {"method": "POST", "route": route, "status": status},
        "duration_ms": duration_ms,
    }
    if error_code is not None:
        doc["error"] = {"code": error_code}
    return doc


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the hash, exactly as docs/sampling.md specifies it -------------------------------------


def test_the_stable_hash_matches_the_documented_test_vector():
    assert 0x2BE92F45B522E46D == stable_hash("req-0001", "widelog-v1")
    assert 3164112189642695789 == stable_hash("req-0001", "widelog-v1")
    assert 0x02297C0466254F98 == stable_hash("req-0160", "widelog-v1")


def test_the_threshold_is_floor_of_rate_times_two_to_the_64_exactly():
    assert 2**64 == threshold_for(1.0)
    assert 2**63 == threshold_for(0.5)
    assert 0x051EB851EB851EC0 == threshold_for(0.02)
    for rate in (0.01, 0.02, 0.05, 1e-9, 0.3333333333333333):
        assert math.floor(Fraction(rate) * 2**64) == threshold_for(rate)


def test_the_documented_requests_are_dropped_and_kept_at_two_percent():
    sampler = TailSampler(SamplingPolicy())
    assert not sampler.decide(event(request_id="req-0001", route="/x")).keep
    assert sampler.decide(event(request_id="req-0160", route="/x")).keep


@deterministic
@given(request_id=st.text(), salt=st.text(min_size=1, max_size=128))
def test_the_baseline_rule_is_the_documented_hash_compared_with_the_threshold(request_id, salt):
    sampler = TailSampler(SamplingPolicy(salt=salt))
    decision = sampler.decide(event(request_id=request_id, route="/x"))
    assert "baseline" == decision.reason
    assert (stable_hash(request_id, salt) < threshold_for(0.02)) == decision.keep


@deterministic
@given(
    request_id=st.text(),
    rates=st.tuples(st.floats(1e-6, 1.0), st.floats(1e-6, 1.0)).map(sorted),
)
def test_a_request_kept_at_a_rate_is_kept_at_every_higher_rate(request_id, rates):
    low, high = (
        TailSampler(SamplingPolicy.model_validate({"baseline": {"rate": r}})) for r in rates
    )
    doc = event(request_id=request_id, route="/x")
    if low.decide(doc).keep:
        assert high.decide(doc).keep


DECIDE_IN_CHILD = """
import json, sys
from widelog.sampling.policy import SamplingPolicy, TailSampler
policy = SamplingPolicy.model_validate({"baseline": {"rate": 0.3}, "salt": "cross-process"})
sampler = TailSampler(policy)
ids = json.load(sys.stdin)
doc = lambda rid: {"request_id": rid, "http": {"route": "/v1/chat", "status": 200}}
print(json.dumps([sampler.decide(doc(rid)).keep for rid in ids]))
"""


def test_the_same_request_ids_get_the_same_decisions_in_a_separate_process():
    rng = random.Random(7)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(1000)] + ["é-ü-😀", ""]
    sampler = TailSampler(
        SamplingPolicy.model_validate({"baseline": {"rate": 0.3}, "salt": "cross-process"})
    )
    here = [sampler.decide(event(request_id=rid)).keep for rid in ids]
    child = subprocess.run(
        [sys.executable, "-c", DECIDE_IN_CHILD],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},  # Python's own str hash must not matter
    )
    assert here == json.loads(child.stdout)
    assert 200 < sum(here) < 400  # both outcomes occur, so the comparison means something


@pytest.mark.parametrize("rate", [0.01, 0.02, 0.05])
def test_the_baseline_keep_fraction_of_100000_ids_is_within_a_99_9_percent_binomial_bound(rate):
    n, z = 100_000, 3.2905  # two-sided 99.9% normal quantile
    rng = random.Random(f"ids-{rate}")
    sampler = TailSampler(SamplingPolicy.model_validate({"baseline": {"rate": rate}}))
    kept = sum(
        sampler.decide(event(request_id=f"{rng.getrandbits(128):032x}", route="/x")).keep
        for _ in range(n)
    )
    bound = z * math.sqrt(n * rate * (1 - rate))
    assert abs(kept - n * rate) <= bound, (kept, n * rate, bound)


# --- the rules ----------------------------------------------------------------------------------


def _expected_reason(doc: dict[str, Any], *, forced: bool) -> str:
    """The rules restated independently of the implementation (the oracle for property tests)."""
    http, error = doc["http"], doc.get("error")
    route = http["route"] if isinstance(http["route"], str) else "unknown"
    status = http["status"] if isinstance(http["status"], int) else 0
    if status >= 500 or status == 429 or (isinstance(error, dict) and error.get("code")):
        return "error"
    duration = doc["duration_ms"]
    limit = POLICY.slow.routes.get(route, POLICY.slow.threshold_ms)
    if isinstance(duration, int | float) and duration > limit:
        return "slow"
    if route.startswith("/v1/admin/") or route == "/v1/billing":
        return "critical_route"
    return "forced" if forced else "baseline"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@deterministic
@given(
    route=st.sampled_from(ROUTES) | st.text(max_size=20) | st.none() | st.integers(),
    status=st.integers(0, 999) | st.none() | st.text(max_size=3),
    duration_ms=st.floats(allow_nan=True) | st.integers(-(2**70), 2**70) | st.none() | st.text(),
    request_id=st.text() | st.none() | st.integers(),
    error_code=st.none() | st.text(max_size=12) | st.integers(),
    forced=st.booleans(),
    # Other fields: never one of `event()`'s own parameters (that is a TypeError, not a test).
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in EVENT_PARAMETERS), json_values, max_size=4
    ),
)
def test_errors_slow_requests_and_critical_routes_are_always_kept_whatever_else_is_in_them(
    *, route, status, duration_ms, request_id, error_code, forced, extra
):
    doc = event(
        route=route,
        status=status,
        duration_ms=duration_ms,
        request_id=request_id,
        error_code=error_code,
        **extra,
    )
    decision = TailSampler(POLICY).decide(doc, forced=forced)
    expected = _expected_reason(doc, forced=forced)
    assert expected == decision.reason
    if expected != "baseline":
        assert decision.keep
        assert 1.0 == decision.rate == decision.weight


@deterministic
@given(doc=st.dictionaries(st.text(max_size=12), json_values, max_size=6), forced=st.booleans())
def test_decide_never_raises_and_explain_agrees_with_it(doc, forced):
    sampler = TailSampler(POLICY)
    explanation = sampler.explain(doc, forced=forced)
    assert sampler.decide(doc, forced=forced) == explanation.decision
    assert explanation.detail.startswith(explanation.decision.reason)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": 503, "duration_ms": 60_000, "route": "/v1/admin/x"}, "error"),
        ({"status": 200, "error_code": "LLM_TIMEOUT"}, "error"),
        ({"status": 413, "error_code": "MESSAGE_TOO_LARGE"}, "error"),
        ({"status": 429}, "error"),
        ({"status": 404, "request_id": "req-0001"}, "baseline"),
        ({"duration_ms": 10_001, "route": "/v1/chat"}, "slow"),
        ({"duration_ms": 9_999, "route": "/v1/chat", "request_id": "req-0001"}, "baseline"),
        ({"duration_ms": 101, "route": "/healthz"}, "slow"),
        ({"duration_ms": 2001, "route": "/v1/other"}, "slow"),
        ({"duration_ms": 2001, "route": "/v1/admin/reindex"}, "slow"),
        ({"route": "/v1/admin/users/42/delete"}, "critical_route"),
        ({"route": "/v1/billing"}, "critical_route"),
        ({"route": "/v1/billing/invoices", "request_id": "req-0001"}, "baseline"),
    ],
)
def test_the_first_matching_rule_decides(fields, reason):
    decision = TailSampler(POLICY).decide(event(**fields))
    assert reason == decision.reason
    assert (reason != "baseline") == decision.keep


def test_which_4xx_count_as_errors_is_configurable():
    policy = SamplingPolicy.model_validate({"error": {"statuses": [404, 429]}})
    assert "error" == TailSampler(policy).decide(event(status=404)).reason
    assert "baseline" == TailSampler(SamplingPolicy()).decide(event(status=404)).reason


def test_forced_keeps_a_request_only_when_the_policy_allows_it():
    doc = event(request_id="req-0001", route="/x")
    assert Decision(True, "forced", 1.0, True) == TailSampler(POLICY).decide(doc, forced=True)
    decision = TailSampler(SamplingPolicy()).decide(doc, forced=True)
    assert ("baseline", False) == (decision.reason, decision.keep)


def test_per_route_rates_and_weights():
    sampler = TailSampler(POLICY)
    chat = sampler.decide(event(route="/v1/chat", request_id="req-0001"))
    health = sampler.decide(event(route="/healthz", request_id="req-0001", duration_ms=1))
    other = sampler.decide(event(route="/v1/other", request_id="req-0001"))
    assert (0.05, 0.01, 0.02) == (chat.rate, health.rate, other.rate)
    assert 20.0 == chat.weight


# --- dry run, annotations, counters ----------------------------------------------------------


def test_dry_run_keeps_everything_but_says_what_the_policy_would_do():
    sampler = TailSampler(SamplingPolicy(dry_run=True))
    doc = event(request_id="req-0001", route="/x")
    decision = sampler.decide(doc)
    assert Decision(True, "baseline", 0.02, would_keep=False, dry_run=True) == decision
    sampler.apply(doc, decision)
    assert {
        "kept": True,
        "reason": "baseline",
        "rate": 0.02,
        "weight": 1.0,  # nothing was dropped, so each stored event stands for itself
        "policy": sampler.fingerprint,
        "dry_run": True,
        "would_keep": False,
    } == doc["sampling"]
    counters = sampler.counters
    assert (1, 0, 1, 0.0) == (
        counters.dropped,
        counters.kept,
        counters.dry_run_kept,
        counters.retention_rate,  # the policy's retention: what turning dry run off would store
    )


def test_apply_records_why_and_at_which_rate_an_event_was_kept():
    sampler = TailSampler(POLICY)
    doc = event(request_id="req-0160", route="/v1/other", sampling={"forced": True})
    sampler.apply(doc, sampler.decide(doc))
    assert {
        "forced": True,
        "kept": True,
        "reason": "baseline",
        "rate": 0.02,
        "weight": 50.0,
        "policy": POLICY.fingerprint,
    } == doc["sampling"]


def test_counters_count_every_event_before_sampling():
    sampler = TailSampler(POLICY)
    docs = [
        event(route="/v1/chat", request_id=f"r{i}", status=200 if i % 10 else 503)
        for i in range(1000)
    ]
    docs += [event(route="/v1/admin/x", request_id="a"), event(route="/v1/chat", status=404)]
    kept = sum(sampler.decide(doc).keep for doc in docs)
    report = sampler.counters.as_dict()
    assert 1002 == report["seen"] == report["kept"] + report["dropped"]
    assert kept == report["kept"]
    assert {"200": 900, "404": 1, "503": 100} == report["seen_by_route_status"]["/v1/chat"]
    assert {"/v1/chat": 100} == report["errors_by_route"]
    assert (100, 1, 0) == tuple(
        report["kept_by_reason"][r] for r in ("error", "critical_route", "slow")
    )
    assert kept / 1002 == sampler.counters.retention_rate
    assert round(kept / 1002, 6) == report["retention_rate"]
    json.dumps(report)


def test_counters_stay_bounded_when_a_caller_logs_raw_paths():
    sampler = TailSampler(POLICY)
    for i in range(5000):
        sampler.decide(event(route=f"/v1/items/{i}", request_id=str(i)))
    assert len(sampler.counters.seen_by) <= 4097
    assert 5000 == sampler.counters.seen


# --- the policy as data --------------------------------------------------------------------------


def test_the_example_policy_is_valid():
    policy = load_sampling_policy(ROOT / "sampling.example.toml")
    assert policy.fingerprint.startswith(policy.version + ":")
    assert 0.05 == policy.baseline.routes["/v1/chat"]


def test_defaults_follow_the_spec():
    policy = load_sampling_policy(None)
    assert (0.02, (429,), False, False) == (
        policy.baseline.rate,
        policy.error.statuses,
        policy.dry_run,
        policy.forced.allowed,
    )


def test_a_policy_file_with_env_overrides_on_top(tmp_path):
    path = write(tmp_path, "[baseline]\nrate = 0.05\n[error]\nstatuses = [429]\n")
    policy = load_sampling_policy(
        path,
        {
            "WIDELOG_SAMPLING_BASELINE_RATE": "0.01",
            "WIDELOG_SAMPLING_DRY_RUN": "true",
            "WIDELOG_SAMPLING_ERROR_STATUSES": "429, 408",
            "WIDELOG_SAMPLING_CRITICAL_ROUTES": "/v1/admin/*,/v1/pay",
            "WIDELOG_SAMPLING_SLOW_THRESHOLD_MS": "1500",
            "WIDELOG_SAMPLING_FORCED_ALLOWED": "1",
            "WIDELOG_SAMPLING_SALT": "s2",
            "WIDELOG_SAMPLING_VERSION": "7",
            "WIDELOG_SAMPLING_POLICY": "ignored-here.toml",
            "WIDELOG_TRANSPORT": "memory",  # other settings pass through untouched
            "PATH": "/bin",
        },
    )
    assert (0.01, True, (408, 429), ("/v1/admin/*", "/v1/pay"), 1500.0, True, "s2", "7") == (
        policy.baseline.rate,
        policy.dry_run,
        policy.error.statuses,
        policy.critical.routes,
        policy.slow.threshold_ms,
        policy.forced.allowed,
        policy.salt,
        policy.version,
    )


def test_from_env_reads_the_file_named_by_widelog_sampling_policy(tmp_path):
    path = write(tmp_path, 'version = "from-file"\n')
    policy = load_sampling_policy(environ={"WIDELOG_SAMPLING_POLICY": str(path)})
    assert "from-file" == policy.version


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[baseline]\nrate = 1.5\n", "baseline.rate"),
        ("[baseline]\nrate = 0\n", "baseline.rate"),
        ("[baseline]\nrat = 0.1\n", "baseline.rat"),
        ('[baseline.routes]\n"/v1/chat" = 2\n', "baseline.routes./v1/chat"),
        ("[slow]\nthreshold_ms = -1\n", "slow.threshold_ms"),
        ("[error]\nstatuses = [503]\n", "error.statuses"),
        ("[forced]\nallowed = 'sometimes'\n", "forced.allowed"),
        ('version = "has space"\n', "version"),
        ("sample_rate = 0.1\n", "sample_rate"),
    ],
)
def test_a_bad_policy_file_fails_naming_the_bad_key(tmp_path, toml, named):
    path = write(tmp_path, toml)
    with pytest.raises(SamplingPolicyError) as caught:
        load_sampling_policy(path)
    assert f"  {named}:" in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_bad_env_override_fails_naming_the_variable():
    with pytest.raises(
        SamplingPolicyError, match=r"WIDELOG_SAMPLING_BASELINE_RATE \(baseline.rate\)"
    ):
        load_sampling_policy(None, {"WIDELOG_SAMPLING_BASELINE_RATE": "lots"})


def test_an_unknown_sampling_variable_fails_instead_of_being_ignored():
    with pytest.raises(SamplingPolicyError, match="WIDELOG_SAMPLING_BASELIN_RATE"):
        load_sampling_policy(None, {"WIDELOG_SAMPLING_BASELIN_RATE": "0.1"})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.toml", None, "cannot read sampling policy"),
        ("broken.toml", "[baseline\n", "not valid TOML"),
        ("policy.yaml", "baseline: {rate: 0.1}\n", "TOML"),
    ],
)
def test_an_unreadable_policy_file_fails_with_a_clear_message(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(SamplingPolicyError, match=message):
        load_sampling_policy(path)


def test_the_fingerprint_is_stable_and_changes_with_the_content(tmp_path):
    one = write(tmp_path, '[critical]\nroutes = ["/a", "/b"]\n[baseline]\nrate = 0.02\n', "1.toml")
    same = write(tmp_path, '[baseline]\nrate = 0.02\n[critical]\nroutes = ["/b", "/a"]\n', "2.toml")
    assert load_sampling_policy(one).fingerprint == load_sampling_policy(same).fingerprint
    assert "1:" + "ee583597386b" == SamplingPolicy().fingerprint  # pinned: see docs/sampling.md
    changed = {
        SamplingPolicy().fingerprint,
        SamplingPolicy(version="2").fingerprint,
        SamplingPolicy(salt="other").fingerprint,
        SamplingPolicy(dry_run=True).fingerprint,
        SamplingPolicy.model_validate({"baseline": {"rate": 0.03}}).fingerprint,
    }
    assert 5 == len(changed)


# --- `widelog sampling explain` / `check` ------------------------------------------------------


def test_explain_prints_the_decision_and_the_rule(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        sampling_app,
        ["explain", "--route", "/v1/chat", "--status", "503", "--request-id", "r-1"],
    )
    assert 0 == result.exit_code, result.output
    assert "KEEP" in result.output
    assert "error: status 503 >= 500" in result.output


def test_explain_json_shows_the_baseline_hash_and_threshold(tmp_path):
    path = write(tmp_path, "[baseline]\nrate = 0.02\n")
    result = CliRunner().invoke(
        sampling_app,
        ["explain", "--route", "/x", "--request-id", "req-0001", "--policy", str(path), "--json"],
    )
    assert 0 == result.exit_code, result.output
    report = json.loads(result.output)
    assert (False, "baseline", 0.02) == (report["keep"], report["reason"], report["rate"])
    assert (0x2BE92F45B522E46D, 0x051EB851EB851EC0) == (report["hash"], report["threshold"])
    assert load_sampling_policy(path).fingerprint == report["policy"]


def test_explain_honours_forced_and_error_codes():
    runner = CliRunner()
    args = ["explain", "--route", "/x", "--request-id", "req-0001", "--json"]
    coded = json.loads(runner.invoke(sampling_app, [*args, "--error-code", "LLM_TIMEOUT"]).output)
    assert ("error", "error: error.code 'LLM_TIMEOUT' is set") == (coded["reason"], coded["detail"])
    forced = runner.invoke(
        sampling_app, [*args, "--forced"], env={"WIDELOG_SAMPLING_FORCED_ALLOWED": "true"}
    )
    assert "forced" == json.loads(forced.output)["reason"]


def test_explain_with_a_bad_policy_exits_2_naming_the_key(tmp_path, capsys):
    path = write(tmp_path, "[baseline]\nrate = 7\n")
    args = ["sampling", "explain", "--route", "/x", "--request-id", "r", "--policy", str(path)]
    with pytest.raises(SystemExit) as exited:
        main(args)  # the command line as a user runs it: failures become exit codes there
    assert 2 == exited.value.code
    assert "baseline.rate" in capsys.readouterr().err


def test_check_prints_the_normalized_policy_and_its_fingerprint():
    result = CliRunner().invoke(
        sampling_app,
        ["check", "--policy", str(ROOT / "sampling.example.toml"), "--json"],
    )
    assert 0 == result.exit_code, result.output
    report = json.loads(result.output)
    assert load_sampling_policy(ROOT / "sampling.example.toml").fingerprint == report["fingerprint"]
    assert 0.02 == report["policy"]["baseline"]["rate"]
