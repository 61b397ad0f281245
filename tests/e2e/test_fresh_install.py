"""`pip install widelog` with no extra, in a fresh virtual environment, as a new user gets it.

Shows that the core install imports no driver and no web framework, that a plain ASGI app
instrumented with one call stores its events in the embedded SQLite store, and that choosing what
the install lacks fails at start with the `pip install` line. Builds the package from this
checkout; needs PyPI (or a wheelhouse pip is configured with) for the build backend and the three
core dependencies. pip's own cache is used, which is what makes a second run fast.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import venv
from contextlib import closing
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
OPTIONAL = (
    "confluent_kafka",
    "pymongo",
    "redis",
    "fastapi",
    "starlette",
    "uvicorn",
    "typer",
    "rich",
    "httpx",
)
PATHS = ("/", "/items/7", "/missing", "/")

# A user's app: plain ASGI, HTTP only (it does not speak lifespan), instrumented with one call.
# The script plays the server: lifespan startup, the requests, lifespan shutdown.
TINY_APP = f"""
import asyncio, json, sys
import widelog

async def app(scope, receive, send):
    assert scope["type"] == "http"
    status = 404 if scope["path"] == "/missing" else 200
    await send({{"type": "http.response.start", "status": status, "headers": []}})
    await send({{"type": "http.response.body", "body": b"hello"}})

handle = widelog.instrument(app, service="tiny")

async def serve():
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    lifespan = asyncio.create_task(handle.app({{"type": "lifespan"}}, inbox.get, outbox.put))
    await inbox.put({{"type": "lifespan.startup"}})
    assert "lifespan.startup.complete" == (await asyncio.wait_for(outbox.get(), 10))["type"]
    for n, path in enumerate({PATHS!r}):
        async def receive():
            return {{"type": "http.request", "body": b"", "more_body": False}}
        async def send(message):
            pass
        headers = [(b"x-request-id", f"req-{{n}}".encode())]
        scope = {{"type": "http", "method": "GET", "path": path, "headers": headers}}
        await handle.app(scope, receive, send)
    await inbox.put({{"type": "lifespan.shutdown"}})
    assert "lifespan.shutdown.complete" == (await asyncio.wait_for(outbox.get(), 10))["type"]
    await lifespan

asyncio.run(serve())
loaded = sorted(name for name in {OPTIONAL!r} if name in sys.modules)
print(json.dumps({{"widelog": widelog.__file__, "optional_modules_loaded": loaded}}))
"""


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with `pip install <this checkout>` and nothing else; prints how long it took."""
    root = tmp_path_factory.mktemp("fresh")
    began = time.monotonic()
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(REPO)],
        check=True,
        cwd=root,
        env=user_env(),
        timeout=480,
    )
    print(f"fresh venv + pip install widelog: {time.monotonic() - began:.1f}s")
    return root / "venv"


def user_env(**widelog_vars: str) -> dict[str, str]:
    """This environment without what would leak the test run into the venv (or this checkout)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WIDELOG_", "PYTHON", "VIRTUAL_ENV"))
    }
    return {**env, **widelog_vars}


def run(
    venv_dir: Path, cwd: Path, args: list[str], **widelog_vars: str
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir()
    return subprocess.run(
        [venv_dir / "bin" / args[0], *args[1:]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=user_env(**widelog_vars),
        timeout=60,  # a hang (a broker retried forever) fails the test instead of blocking CI
        check=False,
    )


def test_the_core_install_loads_no_extra_and_stores_a_plain_asgi_apps_events(fresh_venv, tmp_path):
    database = tmp_path / "app" / "events.sqlite3"
    result = run(
        fresh_venv,
        tmp_path / "app",
        ["python", "-c", TINY_APP],
        WIDELOG_SAMPLING_BASELINE_RATE="1",
        WIDELOG_SQLITE_PATH=str(database),
    )
    assert 0 == result.returncode, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["widelog"]).is_relative_to(fresh_venv)  # the installed copy, not ./src
    assert [] == report["optional_modules_loaded"]
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT request_id, route, status, count(*) FROM events GROUP BY request_id"
        ).fetchall()
    expected = [
        (f"req-{n}", "unmatched", 404 if path == "/missing" else 200, 1)
        for n, path in enumerate(PATHS)
    ]
    assert expected == sorted(rows)


def test_choosing_kafka_without_its_extra_fails_at_init_with_the_pip_line(fresh_venv, tmp_path):
    result = run(
        fresh_venv,
        tmp_path / "kafka",
        ["python", "-c", "import widelog; widelog.init(service='x')"],
        WIDELOG_TRANSPORT="kafka",
    )
    assert 0 != result.returncode
    assert "WIDELOG_TRANSPORT=kafka needs confluent-kafka: pip install 'widelog[kafka]'" in (
        result.stderr
    )


def test_the_widelog_command_without_the_server_extra_says_so_in_one_line(fresh_venv, tmp_path):
    result = run(fresh_venv, tmp_path / "cli", ["widelog", "--help"])
    assert 2 == result.returncode
    assert (
        "error: the widelog command needs typer: pip install 'widelog[server]'\n" == result.stderr
    )
    assert "" == result.stdout
