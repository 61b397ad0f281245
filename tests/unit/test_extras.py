"""Choosing an adapter whose extra is not installed fails at build time with its pip line.

A missing package is simulated the way Python itself reports one: `sys.modules[name] = None`
makes `import name` raise `ModuleNotFoundError`; the adapter module is dropped from the cache so
it is imported again. tests/e2e/test_fresh_install.py shows the same in a venv without extras.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from widelog._extras import MissingExtraError, extra
from widelog.bootstrap import build_caches, build_pipeline, build_source
from widelog.config import Settings
from widelog.worker import run_worker

if TYPE_CHECKING:
    from pathlib import Path

ADAPTER_MODULES = (
    "widelog.pipeline.kafka",
    "widelog.pipeline.redis_streams",
    "widelog.pipeline.mongo_store",
    "widelog.incidents.mongo_store",
    "widelog.cache.redis_cache",
)


@pytest.fixture
def without_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka, Redis and MongoDB clients look uninstalled for the test (restored afterwards)."""
    drivers = ("confluent_kafka", "redis", "pymongo", "bson")
    submodules = tuple(f"{module}." for module in ADAPTER_MODULES)  # a package's parts too
    for name in list(sys.modules):
        if (
            name in ADAPTER_MODULES
            or name.startswith(submodules)
            or name.partition(".")[0] in drivers
        ):
            monkeypatch.delitem(sys.modules, name)
    for package in drivers:
        monkeypatch.setitem(sys.modules, package, None)


def local_settings(tmp_path: Path, **choices: Any) -> Settings:
    return Settings(
        sqlite_path=tmp_path / "events.sqlite3", spool_dir=tmp_path / "spool", **choices
    )


@pytest.mark.parametrize(
    ("choice", "build", "expected"),
    [
        (
            {"transport": "kafka"},
            build_pipeline,
            "WIDELOG_TRANSPORT=kafka needs confluent-kafka: pip install 'widelog[kafka]'",
        ),
        (
            {"transport": "redis"},
            build_pipeline,
            "WIDELOG_TRANSPORT=redis needs redis: pip install 'widelog[redis]'",
        ),
        (
            {"store": "mongo"},
            build_pipeline,
            "WIDELOG_STORE=mongo needs pymongo: pip install 'widelog[mongo]'",
        ),
        (
            {"cache": "redis"},
            build_caches,
            "WIDELOG_CACHE=redis needs redis: pip install 'widelog[redis]'",
        ),
        (
            {"transport": "kafka"},
            build_source,
            "WIDELOG_TRANSPORT=kafka needs confluent-kafka: pip install 'widelog[kafka]'",
        ),
    ],
    ids=["kafka-publisher", "redis-publisher", "mongo-store", "redis-cache", "kafka-source"],
)
@pytest.mark.usefixtures("without_drivers")
def test_a_choice_whose_extra_is_missing_fails_with_the_pip_line(tmp_path, choice, build, expected):
    with pytest.raises(MissingExtraError) as raised:
        build(local_settings(tmp_path, **choice))
    assert expected == str(raised.value)
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)


@pytest.mark.usefixtures("without_drivers")
def test_the_default_choices_build_without_any_extra(tmp_path):
    pipeline = build_pipeline(local_settings(tmp_path))
    assert "memory" == pipeline.settings.transport
    assert "memory" == build_caches(local_settings(tmp_path)).backend


def test_a_missing_module_that_is_not_the_extras_is_not_disguised():
    with (
        pytest.raises(ModuleNotFoundError) as raised,
        extra("kafka", needed_by="WIDELOG_TRANSPORT=kafka"),
    ):
        importlib.import_module("widelog_no_such_module")
    assert ModuleNotFoundError is type(raised.value)


@pytest.mark.usefixtures("without_drivers")
async def test_a_worker_whose_transport_is_missing_fails_instead_of_retrying(tmp_path):
    with pytest.raises(MissingExtraError, match=r"pip install 'widelog\[kafka\]'"):
        await run_worker(local_settings(tmp_path, transport="kafka"))


def run_cli_without(
    tmp_path: Path, package: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`widelog ARGS` in a new interpreter in which `package` cannot be imported."""
    script = (
        f"import sys; sys.modules[{package!r}] = None; sys.argv = ['widelog', *{args!r}];"
        " from widelog.cli import main; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_the_command_without_typer_says_which_extra_in_one_line(tmp_path):
    result = run_cli_without(tmp_path, "typer", "--help")
    assert 2 == result.returncode
    expected = "error: the widelog command needs typer: pip install 'widelog[server]'\n"
    assert expected == result.stderr


def test_a_command_whose_transport_is_missing_ends_the_same_way(tmp_path):
    result = run_cli_without(
        tmp_path, "confluent_kafka", "worker", env={"WIDELOG_TRANSPORT": "kafka"}
    )
    assert 2 == result.returncode
    expected = (
        "error: WIDELOG_TRANSPORT=kafka needs confluent-kafka: pip install 'widelog[kafka]'\n"
    )
    assert expected == result.stderr
