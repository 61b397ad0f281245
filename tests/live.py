"""The real services, started by scripts/services.sh, and unique names so tests never collide."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services.sh"
# The same variables as scripts/services.sh, so a second set of services can serve another run.
KAFKA = f"127.0.0.1:{os.environ.get('WIDELOG_SERVICES_KAFKA_PORT', '9092')}"
REDIS_PORT = int(os.environ.get("WIDELOG_SERVICES_REDIS_PORT", "6379"))
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
MONGO_PORT = int(os.environ.get("WIDELOG_SERVICES_MONGO_PORT", "27017"))
MONGO = f"mongodb://127.0.0.1:{MONGO_PORT}"
STATE = Path(os.environ.get("WIDELOG_SERVICES_STATE", "/tmp/widelog-services"))  # data, pidfiles


def services(*args: str) -> None:
    """Run the services script (idempotent `up`; `stop NAME` / `start NAME` for fault tests)."""
    subprocess.run([str(SCRIPT), *args], check=True, timeout=600, stdin=subprocess.DEVNULL)


@contextmanager
def service_down(name: str) -> Iterator[None]:
    """Stop one real service for the block, and always start it again."""
    services("stop", name)
    try:
        yield
    finally:
        services("start", name)


def service_pid(name: str) -> int:
    """The pid of one service of this run, from the services script's pidfile."""
    return int((STATE / name / f"{name}.pid").read_text().strip())


@contextmanager
def frozen(name: str) -> Iterator[None]:
    """SIGSTOP one service of this run (hung: connections stay open) and always SIGCONT it."""
    pid = service_pid(name)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def free_port() -> int:
    """A loopback port nobody listens on right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn in a thread, on a free loopback port: yields its base URL."""
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mongo_url(database: str) -> str:
    return f"{MONGO}/{database}"


# The SASL_PLAINTEXT listener of scripts/services.sh (9094 unless WIDELOG_SERVICES_KAFKA_SASL_PORT
# says otherwise; empty: none, and the SASL tests are skipped).
KAFKA_SASL_PORT = os.environ.get("WIDELOG_SERVICES_KAFKA_SASL_PORT", "9094")
KAFKA_SASL = f"127.0.0.1:{KAFKA_SASL_PORT}" if KAFKA_SASL_PORT else None
KAFKA_SASL_USER = os.environ.get("WIDELOG_SERVICES_KAFKA_SASL_USER", "widelog")
KAFKA_SASL_PASSWORD = os.environ.get("WIDELOG_SERVICES_KAFKA_SASL_PASSWORD", "widelog-test-secret")

# The SSL listener of scripts/services.sh (9095 unless WIDELOG_SERVICES_KAFKA_SSL_PORT says
# otherwise; empty: none) and the test CA it made in the state dir, which clients must trust.
KAFKA_SSL_PORT = os.environ.get("WIDELOG_SERVICES_KAFKA_SSL_PORT", "9095")
KAFKA_SSL = f"127.0.0.1:{KAFKA_SSL_PORT}" if KAFKA_SSL_PORT else None
STATE = Path(os.environ.get("WIDELOG_SERVICES_STATE", "/tmp/widelog-services"))
KAFKA_CA = STATE / "kafka" / "tls" / "ca.pem"

# Kafka's PROXIED listener (scripts/services.sh): the broker listens on the first port and
# advertises the second, where a test's Toxiproxy proxy listens; empty: no such listener.
KAFKA_PROXIED_PORT = os.environ.get("WIDELOG_SERVICES_KAFKA_PROXIED_PORT", "9096")
KAFKA_PROXY_PORT = os.environ.get("WIDELOG_SERVICES_KAFKA_PROXY_PORT", "9097")
