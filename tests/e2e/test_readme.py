"""README's code blocks, run as written: a user's app, a job and a test, in the embedded mode.

Each ```python block whose first line names a file (`# app.py`) is written to that file; the app
runs under a real uvicorn, stopped with SIGTERM, so the lifespan hand-off is the one users get.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"```python\n# (?P<name>[\w.]+\.py)\n(?P<body>.*?)```", re.DOTALL)

pytestmark = pytest.mark.slow


def readme_files() -> dict[str, str]:
    return {m["name"]: f"# {m['name']}\n{m['body']}" for m in BLOCK.finditer(README.read_text())}


def user_env() -> dict[str, str]:
    """The test runner's environment without its WIDELOG_* settings, every event kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WIDELOG_")}
    env["WIDELOG_SAMPLING_BASELINE_RATE"] = "1"
    return env


def stored(directory: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(directory / ".widelog" / "events.sqlite3") as db:
        return [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM events")]


def test_readme_names_the_three_files_this_test_runs():
    assert {"app.py", "nightly_export.py", "test_billing.py"} == set(readme_files())


def test_the_readme_app_job_and_test_run_as_written(tmp_path):
    for name, body in readme_files().items():
        (tmp_path / name).write_text(body)
    env = user_env()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/docs", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the README app did not start"
                time.sleep(0.2)
        answers = {
            rid: httpx.post(f"{base}/invoices/{rid}/pay", headers={"x-request-id": rid}).json()
            for rid in ("inv-1", "inv-2", "void-3")
        }
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    # uvicorn re-raises the signal once its graceful shutdown is done
    assert server.returncode in {0, -signal.SIGTERM}, output
    assert "Application shutdown complete" in output
    assert {"inv-1": {"paid": True}, "inv-2": {"paid": True}, "void-3": {"paid": False}} == answers

    job = subprocess.run(
        [sys.executable, "nightly_export.py"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
    )
    assert 0 == job.returncode, job.stderr
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_billing.py"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert 0 == tests.returncode, tests.stdout + tests.stderr

    events = stored(tmp_path)
    payments = [
        e for e in events if e["service"] == "billing-api" and e["http"]["method"] == "POST"
    ]
    requests = {e["request_id"]: e for e in payments}
    assert ["inv-1", "inv-2", "void-3"] == sorted(requests)
    assert 3 == len(payments)  # each exactly once
    assert {"invoice": {"id": "void-3"}}.items() <= requests["void-3"].items()
    assert "INVOICE_VOID" == requests["void-3"]["error"]["code"]
    assert "/invoices/{invoice_id}/pay" == requests["inv-1"]["http"]["route"]
    units = [e for e in events if e["service"] == "nightly-export"]
    assert [0, 1, 2] == sorted(e["batch"] for e in units)
    assert all({"name": "export-batch", "status": "ok"} == e["unit"] for e in units)
    assert all(1200 == e["rows"] for e in units)
