"""Kafka over TLS: a publisher and a worker on the broker's SSL listener, trusting its test CA.

`WIDELOG_KAFKA_CONFIG` carries `security.protocol=SSL` and `ssl.ca.location` to the producer,
the consumer and the admin client alike. Needs the optional listener of scripts/services.sh
(`WIDELOG_SERVICES_KAFKA_SSL_PORT`, 9095 by default; a broker started before it existed gets it
with `scripts/services.sh stop kafka && scripts/services.sh start kafka`); skipped without it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_kafka_sasl_live import events_flow, secured_env
from tests.live import KAFKA_CA, KAFKA_SSL, KAFKA_SSL_PORT
from widelog.config import Settings


def _listening() -> bool:
    if not KAFKA_SSL_PORT or not KAFKA_CA.exists():
        return False
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", int(KAFKA_SSL_PORT))) == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not _listening(),
        reason="no Kafka SSL listener (WIDELOG_SERVICES_KAFKA_SSL_PORT): restart Kafka with"
        " this scripts/services.sh",
    ),
]


def tls(ca: Path) -> dict[str, str]:
    return {"security.protocol": "SSL", "ssl.ca.location": str(ca)}


async def test_events_flow_through_the_tls_listener_trusting_the_test_ca(tmp_path: Path) -> None:
    env = secured_env(tmp_path, str(KAFKA_SSL), tls(KAFKA_CA))
    settings = Settings(
        transport="kafka",
        kafka_bootstrap=str(KAFKA_SSL),
        kafka_topic=env["WIDELOG_KAFKA_TOPIC"],
        kafka_config=tls(KAFKA_CA),
        sqlite_path=tmp_path / "api.sqlite3",
        spool_dir=tmp_path / "spool",
    )
    # The listener speaks only TLS: every event stored went through it, encrypted.
    await events_flow(env, settings, tmp_path)


def test_a_worker_that_does_not_trust_the_broker_certificate_fails_at_start(
    tmp_path: Path,
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=not the broker's CA", "-keyout", str(tmp_path / "other.key")),
            *("-out", str(other_ca)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    result = subprocess.run(
        [sys.executable, "-m", "widelog", "worker"],
        env=secured_env(tmp_path, str(KAFKA_SSL), tls(other_ca)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 3 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
