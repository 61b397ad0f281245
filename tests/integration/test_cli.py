"""The `widelog` command as a user runs it: a separate process, exit codes, one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WIDELOG = [sys.executable, "-m", "widelog"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WIDELOG, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.slow
def test_demo_json_reports_a_pipeline_that_lost_nothing():
    result = run("demo", "--requests", "400", "--json")
    assert 0 == result.returncode, result.stderr
    report = json.loads(result.stdout)
    events, errors = report["events"], report["errors"]
    assert 400 == report["requests"] == events["finalized"]
    assert events["published"] == events["stored"]
    assert events["finalized"] == events["stored"] + events["sampled_out"]
    assert 0 == events["dead_lettered"]
    assert errors["total"] == errors["stored"] > 0
    assert report["traffic"]["slow"] == report["kept_by_reason"]["slow"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert {"200", "413", "422", "503", "504"} <= set(report["status"])
    cache = report["cache"]
    assert 0 < cache["semantic_hit_rate"] < cache["session_hit_rate"] < 1
    assert cache["cached_answers_by_kind"]["repeat"] > 0
    assert {"repeat"} == set(cache["cached_answers_by_kind"])  # only repeated questions hit


@pytest.mark.slow
def test_the_default_demo_stores_at_most_12_percent_and_every_error_and_slow_request():
    result = run("demo", "--json")
    assert 0 == result.returncode, result.stderr
    report = json.loads(result.stdout)
    assert report["events"]["stored"] <= 0.12 * report["events"]["finalized"]
    opened = {(i["rule"]["id"], i["group"]["error.code"]) for i in report["incidents"]}
    expected = {
        ("errors", code) for code in ("LLM_TIMEOUT", "CONTENT_FILTERED", "LLM_RATE_LIMITED")
    }
    assert expected == opened
    assert report["errors"]["total"] == report["errors"]["stored"]
    assert report["traffic"]["slow"] == report["kept_by_reason"]["slow"]


def test_demo_prints_a_readable_report_without_json():
    result = run("demo", "--requests", "50")
    assert 0 == result.returncode, result.stderr
    assert "events.stored" in result.stdout


def test_a_bad_setting_fails_the_start_naming_the_key(tmp_path: Path):
    result = run("demo", "--requests", "1", env={"WIDELOG_TRANSPORT": "carrier-pigeon"})
    assert 2 == result.returncode
    expected = (
        "error: invalid settings: WIDELOG_TRANSPORT: Input should be 'memory', 'kafka', 'redis'"
        " or 'stdout' (got 'carrier-pigeon')"
    )
    assert expected == result.stderr.splitlines()[0]


def test_worker_explains_that_the_memory_transport_needs_no_worker():
    result = run("worker")
    assert 2 == result.returncode
    assert "WIDELOG_TRANSPORT=memory" in result.stderr


def test_acks_other_than_all_with_idempotence_fails_the_start():
    result = run("worker", env={"WIDELOG_TRANSPORT": "kafka", "WIDELOG_KAFKA_ACKS": "1"})
    assert 2 == result.returncode
    assert "kafka_acks must be 'all'" in result.stderr
