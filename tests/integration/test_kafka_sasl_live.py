"""Kafka security settings reach every client: a worker and a publisher on a SASL/PLAIN listener.

Needs the optional listener: `WIDELOG_SERVICES_KAFKA_SASL_PORT=29094 scripts/services.sh up`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.fakes import KEEP_ALL
from tests.live import KAFKA_SASL, KAFKA_SASL_PASSWORD, KAFKA_SASL_USER, unique
from widelog.bootstrap import build_pipeline
from widelog.config import Settings
from widelog.incidents.rules import IncidentRules
from widelog.pipeline.sqlite_store import SQLiteEventStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        KAFKA_SASL is None, reason="no SASL listener: set WIDELOG_SERVICES_KAFKA_SASL_PORT"
    ),
]
SASL = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"}


def sasl_env(tmp_path: Path, password: str) -> dict[str, str]:
    config = {**SASL, "sasl.username": KAFKA_SASL_USER}
    env = secured_env(tmp_path, str(KAFKA_SASL), config)
    env["WIDELOG_KAFKA_SASL_PASSWORD"] = password
    return env


def secured_env(tmp_path: Path, bootstrap: str, config: dict[str, str]) -> dict[str, str]:
    """A worker's environment for a listener that needs `config` (WIDELOG_KAFKA_CONFIG)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIDELOG_")}
    env.update(
        {
            "WIDELOG_TRANSPORT": "kafka",
            "WIDELOG_KAFKA_BOOTSTRAP": bootstrap,
            "WIDELOG_KAFKA_TOPIC": unique("secured"),
            "WIDELOG_KAFKA_GROUP": unique("secured-group"),
            "WIDELOG_KAFKA_CONFIG": json.dumps(config),
            "WIDELOG_SQLITE_PATH": str(tmp_path / "events.sqlite3"),
            "WIDELOG_SPOOL_DIR": str(tmp_path / "spool"),
            "WIDELOG_FLUSH_INTERVAL_S": "0.2",
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
    )
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "widelog", "worker", "--log-level", "debug"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def test_a_wrong_password_fails_the_worker_start_with_exit_3_and_a_plain_message(tmp_path):
    wrong = "not-the-password-" + unique("pw")
    result = subprocess.run(
        [sys.executable, "-m", "widelog", "worker"],
        env=sasl_env(tmp_path, wrong),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 3 == result.returncode, result.stderr
    assert "refused the credentials" in result.stderr
    assert "Authentication failed" in result.stderr
    assert "WIDELOG_KAFKA_SASL_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr
    assert wrong not in result.stdout + result.stderr


async def test_events_flow_through_the_sasl_listener_with_the_right_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = sasl_env(tmp_path, KAFKA_SASL_PASSWORD)
    settings = Settings(
        transport="kafka",
        kafka_bootstrap=str(KAFKA_SASL),
        kafka_topic=env["WIDELOG_KAFKA_TOPIC"],
        kafka_config={**SASL, "sasl.username": KAFKA_SASL_USER},
        kafka_sasl_password=SecretStr(KAFKA_SASL_PASSWORD),
        sqlite_path=tmp_path / "api.sqlite3",
        spool_dir=tmp_path / "spool",
    )
    assert KAFKA_SASL_PASSWORD not in repr(settings)
    worker_log = await events_flow(env, settings, tmp_path)
    assert KAFKA_SASL_PASSWORD not in worker_log  # librdkafka's debug lines included
    assert KAFKA_SASL_PASSWORD not in caplog.text


async def events_flow(env: dict[str, str], settings: Settings, tmp_path: Path) -> str:
    """50 events published by an API pipeline (`settings`), stored by a worker (`env`) once.

    Returns the worker's log (at debug level: librdkafka's lines included).
    """
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    pipeline = build_pipeline(settings, sampling=KEEP_ALL, incident_rules=IncidentRules())
    await pipeline.start()
    sent = {unique("secured-req") for _ in range(50)}
    try:
        for request_id in sent:
            ev = pipeline.logging.begin(request_id=request_id)
            ev.set("http.status", 200)
            pipeline.logging.finalize(ev)
        assert 0 == await pipeline.publisher.flush(30)
        assert 0 == (pipeline.fallback.spooled if pipeline.fallback else 0)
        store = SQLiteEventStore(tmp_path / "events.sqlite3")
        deadline = time.monotonic() + 90
        while (stored := await store.count_events(request_ids=sent)) < len(sent):
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{stored} of {len(sent)} stored"
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        assert len(sent) == await store.count_events(request_ids=sent)
        await store.close()
    finally:
        await pipeline.aclose()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert 0 == worker.returncode, log.read_text()
    worker_log = log.read_text()
    assert "assigned partitions" in worker_log
    return worker_log
