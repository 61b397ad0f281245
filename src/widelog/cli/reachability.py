"""Before a command starts: does each dependency it needs answer? If not, say which and where.

Without this, an unreachable store surfaces deep inside the command (or inside uvicorn's lifespan)
as a driver traceback. Each check opens its own short-lived client with the same builders the
command uses, so it tests what the command would connect to, and closes it again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from widelog._extras import extra
from widelog.bootstrap import build_store
from widelog.cli.errors import Unreachable

if TYPE_CHECKING:
    from widelog.config import Settings

# "credentials": the transport may still be starting (the worker waits for it), but if it answers
# and refuses who we are, no waiting helps: say so and stop.
Need = Literal["store", "transport", "cache", "credentials"]
KAFKA_TIMEOUT_S = 5.0
REDIS_TIMEOUT_S = 2.0


async def require(settings: Settings, *needs: Need) -> None:
    """Raise `Unreachable` for the first of `needs` that does not answer."""
    for need in needs:
        if need == "store":
            await _store(settings)
        elif need == "transport" and settings.transport == "kafka":
            await _kafka(settings)
        elif need == "credentials" and settings.transport == "kafka":
            await _kafka(settings, down_is_fine=True)
        elif (need == "transport" and settings.transport == "redis") or (
            need == "cache" and settings.cache == "redis"
        ):
            await _redis(settings)


async def _store(settings: Settings) -> None:
    store = build_store(settings)
    try:
        await store.ping()
    except Exception as exc:
        if settings.store == "mongo":
            raise Unreachable(
                "MongoDB",
                without_password(settings.mongo_url),
                reason=_reason(exc),
                hint=_start("MONGO_URL"),
            ) from exc
        raise Unreachable(
            "the SQLite store",
            str(settings.sqlite_path),
            reason=_reason(exc),
            hint="point WIDELOG_SQLITE_PATH at a file this user can create and write",
        ) from exc
    finally:
        await store.close()


async def _kafka(settings: Settings, *, down_is_fine: bool = False) -> None:
    with extra("kafka", needed_by="WIDELOG_TRANSPORT=kafka"):
        from confluent_kafka import KafkaError, KafkaException  # noqa: PLC0415 - Kafka users only
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    refusals = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}
    errors: list[KafkaError] = []
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "bootstrap.servers": settings.kafka_bootstrap,
        # log_level 0: librdkafka would print every failed connection attempt to stderr.
        "log_level": 0,
        "error_cb": errors.append,
    }
    admin = AdminClient(config)
    try:
        await asyncio.to_thread(admin.list_topics, timeout=KAFKA_TIMEOUT_S)
    except KafkaException as exc:
        await asyncio.to_thread(admin.poll, 0.5)  # serves the error callbacks: why it failed
        refused = next((e for e in errors if e.code() in refusals), None)
        if refused is not None:
            raise Unreachable(
                "Kafka",
                settings.kafka_bootstrap,
                reason=f"it refused the credentials: {refused.str()}",
                hint="check security.protocol, sasl.mechanism and sasl.username in"
                " WIDELOG_KAFKA_CONFIG, and WIDELOG_KAFKA_SASL_PASSWORD",
            ) from exc
        if down_is_fine:
            return
        raise Unreachable(
            "Kafka",
            settings.kafka_bootstrap,
            reason=exc.args[0].str(),
            hint=_start("KAFKA_BOOTSTRAP"),
        ) from exc


async def _redis(settings: Settings) -> None:
    from redis.asyncio import Redis  # noqa: PLC0415 - only Redis users load it
    from redis.exceptions import RedisError  # noqa: PLC0415

    client = Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        where = without_password(settings.redis_url)
        raise Unreachable("Redis", where, reason=_reason(exc), hint=_start("REDIS_URL")) from exc
    finally:
        await client.aclose()


def _reason(exc: BaseException) -> str:
    """The driver's message up to its details (pymongo appends the whole topology to it)."""
    first = (str(exc).splitlines() or [""])[0].split(" (", 1)[0].split(", Timeout:", 1)[0]
    return first[:200] or type(exc).__name__


def _start(setting: str) -> str:
    return f"start it, or point WIDELOG_{setting} at a running one"


def without_password(url: str) -> str:
    """The URL to print: a password in it would end up in terminals, logs and CI output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
