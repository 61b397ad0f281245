"""Expected failures of the `widelog` command: a documented exit code and a line to act on.

Each runs the command as a user does (a separate process) and checks the exit code, the first
line of stderr, and that no traceback was printed. "Unreachable" is a closed loopback port.
"""

from __future__ import annotations

import pytest

from tests.integration.test_cli import run

NO_MONGO = "mongodb://127.0.0.1:1/widelog"
MONGO_DOWN = {
    "WIDELOG_STORE": "mongo",
    "WIDELOG_MONGO_URL": NO_MONGO,
    "WIDELOG_MONGO_TIMEOUT_MS": "300",
}


def first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


def assert_no_traceback(stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr
    assert "╭" not in stderr  # nor typer's boxed error or traceback


def test_an_unknown_setting_fails_the_start_naming_it_and_the_closest_known_one():
    result = run("incidents", "list", env={"WIDELOG_TRANSPROT": "kafka"})
    assert 2 == result.returncode
    expected = (
        "error: invalid settings: unknown setting WIDELOG_TRANSPROT"
        " (did you mean WIDELOG_TRANSPORT?)"
    )
    assert expected == first_line(result.stderr)
    assert_no_traceback(result.stdout, result.stderr)


@pytest.mark.parametrize(
    "command",
    [
        ("demo", "--requests", "1"),
        ("worker",),
        ("serve",),
        ("replay",),
        ("incidents", "list"),
        ("sampling", "estimate"),
    ],
)
def test_every_command_refuses_an_unknown_setting(command: tuple[str, ...]):
    result = run(*command, env={"WIDELOG_BATCH_SIZ": "5"})
    assert 2 == result.returncode
    assert first_line(result.stderr).startswith("error: invalid settings: unknown setting")


def test_a_bad_value_names_the_variable_with_pydantics_text_intact():
    result = run("sampling", "estimate", env={"WIDELOG_BATCH_SIZE": "0"})
    assert 2 == result.returncode
    expected = "error: invalid settings: WIDELOG_BATCH_SIZE: Input should be greater than or equal to 1 (got '0')"  # noqa: E501 - one line on purpose
    assert expected == first_line(result.stderr)


def test_a_bad_sampling_policy_prints_no_literal_markup():
    result = run("sampling", "check", env={"WIDELOG_SAMPLING_BASELINE_RATE": "7"})
    assert 2 == result.returncode
    assert first_line(result.stderr).startswith("error: invalid sampling policy")
    assert "WIDELOG_SAMPLING_BASELINE_RATE" in result.stderr
    assert "[red]" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("incidents", "list"),
        ("incidents", "show", "inc_1"),
        ("incidents", "rebuild"),
        ("sampling", "estimate"),
        ("serve", "--port", "1"),
        ("demo", "--requests", "1"),
    ],
)
def test_a_store_that_does_not_answer_exits_3_naming_it_without_a_traceback(
    command: tuple[str, ...],
):
    result = run(*command, env=MONGO_DOWN)
    assert 3 == result.returncode, result.stderr
    expected = f"error: MongoDB at {NO_MONGO} is not reachable: 127.0.0.1:1: [Errno 111] Connect call failed"  # noqa: E501
    assert expected == first_line(result.stderr)
    assert "start it, or point WIDELOG_MONGO_URL at a running one" in result.stderr
    assert_no_traceback(result.stdout, result.stderr)


def test_the_worker_exits_3_when_its_store_does_not_answer():
    result = run("worker", env={**MONGO_DOWN, "WIDELOG_TRANSPORT": "kafka"})
    assert 3 == result.returncode
    assert first_line(result.stderr).startswith(f"error: MongoDB at {NO_MONGO} is not reachable")
    assert_no_traceback(result.stdout, result.stderr)


def test_a_password_in_the_store_url_is_never_printed():
    url = "mongodb://reader:s3cret@127.0.0.1:1/widelog"
    result = run("incidents", "list", env={**MONGO_DOWN, "WIDELOG_MONGO_URL": url})
    assert 3 == result.returncode
    assert "s3cret" not in result.stderr
    assert "mongodb://reader:***@127.0.0.1:1/widelog" in first_line(result.stderr)


def test_a_sqlite_store_that_cannot_be_created_exits_3(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "events.sqlite3"  # under a file: no directory can be made there
    result = run("incidents", "list", env={"WIDELOG_SQLITE_PATH": str(path)})
    assert 3 == result.returncode
    assert first_line(result.stderr).startswith(f"error: the SQLite store at {path} is not")
    assert_no_traceback(result.stdout, result.stderr)


def test_the_demo_exits_3_when_kafka_does_not_answer():
    env = {"WIDELOG_TRANSPORT": "kafka", "WIDELOG_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    result = run("demo", "--requests", "1", env=env)
    assert 3 == result.returncode
    expected = "error: Kafka at 127.0.0.1:1 is not reachable: Failed to get metadata: Local: Broker transport failure"  # noqa: E501
    assert expected == first_line(result.stderr)
    assert_no_traceback(result.stdout, result.stderr)


def test_replay_exits_3_when_redis_does_not_answer():
    env = {"WIDELOG_TRANSPORT": "redis", "WIDELOG_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run("replay", env=env)
    assert 3 == result.returncode
    assert first_line(result.stderr).startswith("error: Redis at redis://127.0.0.1:1/0 is not")
    assert_no_traceback(result.stdout, result.stderr)


def test_the_demo_exits_3_when_the_redis_cache_does_not_answer():
    env = {"WIDELOG_CACHE": "redis", "WIDELOG_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run("demo", "--requests", "1", env=env)
    assert 3 == result.returncode
    assert first_line(result.stderr).startswith("error: Redis at redis://127.0.0.1:1/0 is not")


def test_a_bad_log_level_exits_2_listing_the_valid_ones():
    result = run("serve", "--log-level", "bogus")
    assert 2 == result.returncode
    line = first_line(result.stderr)
    assert line.startswith("error: widelog serve: Invalid value for '--log-level'")
    assert "'critical', 'error', 'warning', 'info', 'debug'" in line
    assert_no_traceback(result.stdout, result.stderr)


def test_an_option_the_command_does_not_support_exits_2_pointing_at_its_help():
    result = run("worker", "--port", "9000")
    assert 2 == result.returncode
    assert "error: widelog worker: No such option: --port" == first_line(result.stderr)
    assert "  see `widelog worker --help`" == result.stderr.splitlines()[1]


def test_debug_shows_the_traceback_of_an_expected_failure():
    result = run("--debug", "incidents", "list", env=MONGO_DOWN)
    assert 0 != result.returncode
    assert "Unreachable" in result.stderr


@pytest.mark.parametrize("transport", ["memory", "stdout"])
@pytest.mark.parametrize("command", ["worker", "replay"])
def test_worker_and_replay_refuse_a_transport_without_a_queue(command: str, transport: str):
    result = run(command, env={"WIDELOG_TRANSPORT": transport})
    assert 2 == result.returncode
    assert first_line(result.stderr).startswith(f"error: WIDELOG_TRANSPORT={transport}")
    assert_no_traceback(result.stdout, result.stderr)
