"""Cache settings are validated at startup, and building the Redis caches connects to nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from widelog.chat.bootstrap import build
from widelog.config import Settings


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("cache", "memcached", "'memory' or 'redis'"),
        ("cache_namespace", "has space", "cache_namespace"),
        ("cache_timeout_ms", "0", "cache_timeout_ms"),
        ("redis_url", "http://127.0.0.1:6379", "redis://"),
        ("session_max_turns", "1", "session_max_turns"),
    ],
)
def test_a_bad_cache_setting_fails_naming_what_is_wrong(monkeypatch, setting, value, named):
    monkeypatch.setenv(f"WIDELOG_{setting.upper()}", value)
    with pytest.raises(ValidationError, match=named):
        Settings()


async def test_building_the_redis_caches_connects_to_nothing(tmp_path: Path):
    unreachable = "redis://127.0.0.1:1/0"
    settings = Settings(cache="redis", redis_url=unreachable, sqlite_path=tmp_path / "e.db")
    container = build(settings)
    assert "redis" == container.caches.backend
    await container.aclose()
