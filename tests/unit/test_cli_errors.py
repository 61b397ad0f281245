from __future__ import annotations

from widelog.cli.errors import BAD_CONFIG, UNREACHABLE, Failure, Unreachable, explain
from widelog.cli.reachability import without_password
from widelog.config import SettingsError


def test_an_unexpected_exception_is_a_bug_and_keeps_its_traceback():
    assert explain(RuntimeError("boom")) is None


def test_a_settings_error_is_bad_config_with_its_message():
    expected = Failure(BAD_CONFIG, "error: invalid settings: unknown setting WIDELOG_X")
    assert expected == explain(SettingsError("unknown setting WIDELOG_X"))


def test_an_unreachable_dependency_says_what_where_why_and_what_to_do():
    exc = Unreachable("Redis", "redis://h:1/0", reason="refused", hint="start it")
    expected = Failure(
        UNREACHABLE, "error: Redis at redis://h:1/0 is not reachable: refused\n  start it"
    )
    assert expected == explain(exc)


def test_a_url_without_a_password_is_printed_as_given():
    assert "mongodb://h1:27017,h2:27017/db" == without_password("mongodb://h1:27017,h2:27017/db")


def test_a_password_in_a_url_is_replaced_and_the_user_kept():
    assert "redis://app:***@cache:6379/0" == without_password("redis://app:p%40ss@cache:6379/0")
