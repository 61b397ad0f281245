"""`widelog events`: every request id an incident summary lists can be looked up, on both stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_cli import run


def demo_then_look_up(env: dict[str, str]) -> None:
    result = run("demo", "--requests", "2000", "--json", env=env)
    assert 0 == result.returncode, result.stderr
    incidents = json.loads(result.stdout)["incidents"]
    samples = {rid for incident in incidents for rid in incident["sample_request_ids"]}
    assert incidents
    assert samples
    for request_id in sorted(samples):
        found = run("events", "get", request_id, env=env)
        assert 0 == found.returncode, found.stderr
        assert request_id == json.loads(found.stdout)["request_id"]
    code = incidents[0]["group"]["error.code"]
    search = run("events", "search", "--since", "all", "--error-code", code, "--json", env=env)
    assert 0 == search.returncode, search.stderr
    events = [json.loads(line) for line in search.stdout.splitlines()]
    assert events
    assert {code} == {e["error"]["code"] for e in events}
    stamps = [e["timestamp"] for e in events]
    assert sorted(stamps, reverse=True) == stamps  # newest first


@pytest.mark.slow
def test_incident_sample_ids_are_found_on_sqlite(tmp_path: Path):
    demo_then_look_up({"WIDELOG_SQLITE_PATH": str(tmp_path / "events.sqlite3")})


@pytest.mark.slow
@pytest.mark.mongo
def test_incident_sample_ids_are_found_on_mongodb(live_services):
    from tests.live import mongo_url, unique

    database = unique("widelog_events_cli").replace("-", "_")
    demo_then_look_up({"WIDELOG_STORE": "mongo", "WIDELOG_MONGO_URL": mongo_url(database)})


def test_an_unknown_request_id_exits_1_saying_why(tmp_path: Path):
    result = run("events", "get", "nope", env={"WIDELOG_SQLITE_PATH": str(tmp_path / "e.db")})
    assert 1 == result.returncode
    assert result.stderr.startswith("no stored event for request id 'nope': sampled out")
