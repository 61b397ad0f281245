"""Incident notifications: the Alertmanager payload, its signature, the delivery rules, the sender.

Real incidents come from synthetic traffic through the aggregator on the SQLite store; the
receiver is a hand-written fake notifier that records what it was given or fails on purpose.
Time is injected (`now`, the sender's clock), so retries and repeat intervals take no wall time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from tests.incident_traffic import T0, batches, burst
from widelog.cli.incidents import incidents_app
from widelog.config import Settings, load_settings
from widelog.incidents.aggregator import IncidentAggregator
from widelog.incidents.model import Incident
from widelog.incidents.notify.model import Attempt, OutboxMessage, backoff, plan
from widelog.incidents.notify.ports import DeliveryError
from widelog.incidents.notify.sender import OutboxSender
from widelog.incidents.notify.sqlite_outbox import SQLiteNotificationOutbox
from widelog.incidents.notify.webhook import (
    SIGNATURE_HEADER,
    WebhookNotifier,
    alertmanager_payload,
    sign,
    verify,
)
from widelog.incidents.queries import get_incident
from widelog.incidents.rules import IncidentRules
from widelog.incidents.sqlite_store import SQLiteIncidentStore
from widelog.policies import load_incident_rules

MIN = dt.timedelta(minutes=1)
SEC = dt.timedelta(seconds=1)
AGE = dt.timedelta(hours=24)


class RecordingNotifier:
    """A `Notifier` that keeps (key, status) of each message; `fail` makes the next sends fail."""

    target = "fake://receiver"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail: list[DeliveryError] = []

    async def send(self, message: OutboxMessage, incident: Incident) -> str:
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append((message.key, incident.status))
        return "HTTP 200"

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


class World:
    """An incident store, an outbox beside it, an aggregator that enqueues, senders on both."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteIncidentStore(path)
        self.outbox = SQLiteNotificationOutbox(path)
        self.notifier = RecordingNotifier()
        self.clock = Clock(T0 + 5 * MIN)
        self.sender = self.new_sender("w1")
        self.newest: dt.datetime | None = None  # the aggregator's wall clock: live batches
        self.aggregator = IncidentAggregator(
            self.store,
            IncidentRules(),
            on_recorded=self.sender.on_recorded,
            clock=lambda: self.newest or T0,
        )

    def new_sender(self, worker: str, **options: Any) -> OutboxSender:
        return OutboxSender(
            self.outbox,
            self.notifier,
            self.store,
            worker=worker,
            repeat_interval_s=options.pop("repeat_interval_s", 3600),
            backoff_base_s=1,
            backoff_cap_s=8,
            clock=self.clock,
            rng=random.Random(7),
            **options,
        )

    async def feed(self, events: list[dict[str, Any]]) -> None:
        """Each batch arrives at its newest event's time; then the fed minutes complete."""
        for batch in batches(events, 100):
            arrival = max(dt.datetime.fromisoformat(e["timestamp"]) for e in batch)
            self.newest = arrival if self.newest is None else max(self.newest, arrival)
            await self.aggregator.observe(batch, now=self.newest)
        await self.aggregator.settle()

    async def open_and_resolve(self) -> str:
        await self.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
        await self.aggregator.sweep(T0 + 60 * MIN)
        [incident_id] = (await self.store.transitions()).keys()
        return incident_id

    async def close(self) -> None:
        await self.outbox.close()
        await self.store.close()


@pytest.fixture
async def world(tmp_path: Path):
    world = World(tmp_path / "events.sqlite3")
    yield world
    await world.close()


async def incident_for(world: World) -> Incident:
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    [incident_id] = (await world.store.transitions()).keys()
    incident = await get_incident(world.store, incident_id)
    assert incident is not None
    return incident


# --- the payload --------------------------------------------------------------------------------


async def test_the_open_message_is_an_alertmanager_v4_firing_alert(world):
    incident = await incident_for(world)
    message = OutboxMessage.opening(incident.id, 1, T0)

    payload = alertmanager_payload(
        message, incident, service="chat", admin_url="https://widelog.example.com/"
    )

    [alert] = payload["alerts"]
    labels = {
        "alertname": "errors",
        "error_code": "LLM_TIMEOUT",
        "http_route": "/v1/chat",
        "service": "chat",
    }
    assert ("4", "firing", "firing") == (payload["version"], payload["status"], alert["status"])
    assert labels == alert["labels"] == payload["commonLabels"]
    assert (
        '{}:{alertname="errors", error_code="LLM_TIMEOUT", http_route="/v1/chat", service="chat"}'
        == payload["groupKey"]
    )
    assert (
        incident.episodes[0].opened_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        == alert["startsAt"]
    )
    assert "0001-01-01T00:00:00Z" == alert["endsAt"]
    assert f"https://widelog.example.com/v1/incidents/{incident.id}" == alert["generatorURL"]
    assert alert["annotations"]["description"].startswith("OPEN since 2026-11-27 10:0")
    assert alert["annotations"]["summary"].startswith(f"Incident {incident.id} opened: rule errors")
    assert f"{incident.id}:1:open" == payload["idempotencyKey"]
    assert 16 == len(alert["fingerprint"])


async def test_the_resolve_message_is_resolved_with_its_end_and_the_same_fingerprint(world):
    incident = await incident_for(world)
    opened = alertmanager_payload(OutboxMessage.opening(incident.id, 1, T0), incident, service="s")
    await world.aggregator.sweep(T0 + 60 * MIN)
    resolved_incident = await get_incident(world.store, incident.id)
    assert resolved_incident is not None
    message = OutboxMessage(incident.id, 1, "resolve", T0)

    resolved = alertmanager_payload(message, resolved_incident, service="s")

    [alert] = resolved["alerts"]
    assert ("resolved", "resolved") == (resolved["status"], alert["status"])
    resolved_at = resolved_incident.episodes[0].resolved_at
    assert resolved_at is not None
    assert resolved_at.isoformat(timespec="milliseconds").replace("+00:00", "Z") == alert["endsAt"]
    assert opened["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert "" == alert["generatorURL"]  # no admin base URL configured
    assert f"{incident.id}:1:resolve" == resolved["idempotencyKey"]


def test_idempotency_keys_name_the_incident_episode_kind_and_update_number():
    assert "inc_1:1:open" == OutboxMessage.opening("inc_1", 1, T0).key
    assert "inc_1:3:regression" == OutboxMessage.opening("inc_1", 3, T0).key
    assert "inc_1:3:update:2" == OutboxMessage("inc_1", 3, "update", T0, 2).key
    assert "inc_1:3:resolve" == OutboxMessage("inc_1", 3, "resolve", T0).key


# --- the signature ------------------------------------------------------------------------------


async def test_the_signature_is_hmac_sha256_of_the_exact_body_as_documented(world, tmp_path):
    incident = await incident_for(world)
    notifier = WebhookNotifier("https://hooks.example.com/x", secret=SecretStr("s3cret"))
    message = OutboxMessage.opening(incident.id, 1, T0)
    body = notifier.body(message, incident)
    headers = notifier.headers(message, body)

    # The recipe in docs/incidents.md, in Python ...
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert expected == headers[SIGNATURE_HEADER] == sign(b"s3cret", body)
    assert verify(b"s3cret", body, headers[SIGNATURE_HEADER])
    assert not verify(b"other", body, headers[SIGNATURE_HEADER])
    assert not verify(b"s3cret", body + b" ", headers[SIGNATURE_HEADER])
    assert message.key == headers["Idempotency-Key"]
    assert message.key == json.loads(body)["idempotencyKey"]
    # ... and with openssl, over the body saved to a file.
    if shutil.which("openssl"):
        (tmp_path / "body.json").write_bytes(body)
        out = subprocess.run(
            ["openssl", "dgst", "-sha256", "-hmac", "s3cret", str(tmp_path / "body.json")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert headers[SIGNATURE_HEADER].removeprefix("sha256=") == out.split("= ")[-1].strip()
    await notifier.close()


async def test_an_unsigned_notifier_sends_no_signature_header(world):
    incident = await incident_for(world)
    notifier = WebhookNotifier("https://hooks.example.com/x")
    message = OutboxMessage.opening(incident.id, 1, T0)
    assert SIGNATURE_HEADER not in notifier.headers(message, notifier.body(message, incident))
    await notifier.close()


def test_the_secret_and_the_url_path_are_never_shown():
    settings = Settings(
        incidents_webhook_url="https://hooks.example.com/services/T0/B0/token123",
        incidents_webhook_secret="s3cret",
    )
    notifier = WebhookNotifier(
        str(settings.incidents_webhook_url), secret=settings.incidents_webhook_secret
    )
    shown = repr(settings) + str(settings) + repr(notifier) + notifier.target
    assert "s3cret" not in shown
    assert "token123" not in repr(notifier) + notifier.target
    assert "https://hooks.example.com" == notifier.target


async def test_the_webhook_retries_5xx_and_timeouts_and_rejects_other_4xx(world):
    incident = await incident_for(world)
    statuses = iter([500, 429, 400, 204])

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses))

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    notifier = WebhookNotifier("http://receiver/hook", client=client)
    message = OutboxMessage.opening(incident.id, 1, T0)
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(await notifier.send(message, incident))
        except DeliveryError as exc:
            outcomes.append(f"{exc.detail} retry={exc.retry}")
    assert [
        "HTTP 500 retry=True",
        "HTTP 429 retry=True",
        "HTTP 400 retry=False",
        "HTTP 204",
    ] == outcomes
    await client.aclose()


# --- settings -----------------------------------------------------------------------------------


def test_the_webhook_settings_share_the_incidents_prefix_with_the_rules(monkeypatch):
    monkeypatch.setenv("WIDELOG_INCIDENTS_WEBHOOK_URL", "https://hooks.example.com/x")
    monkeypatch.setenv("WIDELOG_INCIDENTS_WEBHOOK_SECRET", "s3cret")
    monkeypatch.setenv("WIDELOG_INCIDENTS_REPEAT_INTERVAL", "2h")
    monkeypatch.setenv("WIDELOG_INCIDENTS_LATENESS", "30s")

    settings = load_settings()
    rules = load_incident_rules()

    assert ("https://hooks.example.com/x", 7200) == (
        settings.incidents_webhook_url,
        settings.incidents_repeat_interval,
    )
    assert 30 == rules.lateness


def test_a_webhook_url_must_be_http():
    with pytest.raises(ValueError, match="must start with http"):
        Settings(incidents_webhook_url="hooks.example.com/x")


# --- the delivery rules -------------------------------------------------------------------------


def attempt(key: str, n: int, outcome: Any = None, **times: dt.datetime) -> Attempt:
    claimed = times.get("claimed", T0)
    return Attempt(
        key,
        n,
        "w",
        claimed,
        times.get("lease_until", claimed + 30 * SEC),
        outcome,
        retry_at=times.get("retry_at"),
    )


def test_a_resolve_waits_for_its_open_and_a_stale_update_is_skipped():
    opened = OutboxMessage("inc", 1, "open", T0)
    update = OutboxMessage("inc", 1, "update", T0 + MIN, 1)
    resolve = OutboxMessage("inc", 1, "resolve", T0 + 2 * MIN)
    other = OutboxMessage("other", 1, "open", T0)

    planned = plan([resolve, update, opened, other], {}, T0 + 3 * MIN, AGE)

    assert [(opened, 1), (other, 1)] == planned.send
    assert [(update, 1, "superseded by a later message")] == planned.skip
    assert 4 == planned.pending


def test_a_failed_attempt_waits_for_its_retry_time_and_an_abandoned_claim_for_its_lease():
    opened = OutboxMessage("inc", 1, "open", T0)
    failed = {opened.key: [attempt(opened.key, 1, "failed", retry_at=T0 + 10 * SEC)]}
    assert [] == plan([opened], failed, T0 + 9 * SEC, AGE).send
    assert [(opened, 2)] == plan([opened], failed, T0 + 10 * SEC, AGE).send

    claimed = {opened.key: [attempt(opened.key, 1)]}
    assert "in_flight" == plan([opened], claimed, T0 + 29 * SEC, AGE).states[opened.key]
    assert [(opened, 2)] == plan([opened], claimed, T0 + 30 * SEC, AGE).send


def test_delivered_messages_unblock_the_next_and_old_ones_expire():
    opened = OutboxMessage("inc", 1, "open", T0)
    resolve = OutboxMessage("inc", 1, "resolve", T0)
    done = {opened.key: [attempt(opened.key, 1, "delivered")]}
    assert [(resolve, 1)] == plan([opened, resolve], done, T0 + SEC, AGE).send

    later = T0 + AGE + SEC
    expired = plan([opened, resolve], {}, later, AGE)
    assert ([], {"inc:1:open": "expired", "inc:1:resolve": "expired"}) == (
        expired.send,
        expired.states,
    )


def test_backoff_doubles_up_to_the_cap_with_jitter_in_its_upper_half():
    rng = random.Random(1)
    delays = [backoff(n, base_s=1, cap_s=60, rng=rng) for n in range(1, 10)]
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays


# --- the sender ---------------------------------------------------------------------------------


async def test_open_and_resolve_are_enqueued_as_recorded_and_delivered_in_order(world):
    incident_id = await world.open_and_resolve()

    await world.sender.run_once()
    await world.sender.run_once()

    assert [(f"{incident_id}:1:open", "resolved"), (f"{incident_id}:1:resolve", "resolved")] == (
        world.notifier.sent
    )
    assert (2, 2, 0) == (
        world.sender.stats.enqueued,
        world.sender.stats.sent,
        world.sender.stats.pending,
    )


async def test_a_failed_delivery_is_retried_after_its_backoff_and_the_resolve_waits(world):
    incident_id = await world.open_and_resolve()
    world.notifier.fail = [DeliveryError("HTTP 500"), DeliveryError("timed out")]

    await world.sender.run_once()  # attempt 1 fails: retry in 0.5-1 s
    await world.sender.run_once()  # not yet due: nothing goes, the resolve waits
    world.clock.now += SEC
    await world.sender.run_once()  # attempt 2 fails: retry in 1-2 s
    world.clock.now += 2 * SEC
    await world.sender.run_once()
    await world.sender.run_once()

    assert [f"{incident_id}:1:open", f"{incident_id}:1:resolve"] == [
        k for k, _ in world.notifier.sent
    ]
    assert (2, 2) == (world.sender.stats.failed, world.sender.stats.sent)
    [open_key] = [k for k, _ in world.notifier.sent if k.endswith(":open")]
    tries = (await world.outbox.attempts([open_key]))[open_key]
    assert ["failed", "failed", "delivered"] == [a.outcome for a in tries]


async def test_a_4xx_is_not_retried_and_the_next_message_goes_on(world):
    incident_id = await world.open_and_resolve()
    world.notifier.fail = [DeliveryError("HTTP 400", retry=False)]

    for _ in range(3):
        await world.sender.run_once()

    assert [(f"{incident_id}:1:resolve", "resolved")] == world.notifier.sent
    assert 1 == world.sender.stats.rejected


async def test_two_senders_on_one_outbox_send_each_message_once(world):
    await world.open_and_resolve()
    second = world.new_sender("w2")

    for _ in range(3):
        await world.sender.run_once()
        await second.run_once()

    keys = [k for k, _ in world.notifier.sent]
    assert 2 == len(keys) == len(set(keys))


async def test_an_open_incident_gets_an_update_every_repeat_interval_and_not_more(world):
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))
    [incident_id] = (await world.store.transitions()).keys()
    await world.sender.run_once()
    for minutes in (30, 59, 61, 62, 125):
        world.clock.now = T0 + 5 * MIN + minutes * MIN
        await world.sender.reconcile()
        await world.sender.run_once()

    assert [
        f"{incident_id}:1:open",
        f"{incident_id}:1:update:1",
        f"{incident_id}:1:update:2",
    ] == [k for k, _ in world.notifier.sent]


async def test_reconcile_announces_an_open_incident_whose_message_was_never_enqueued(tmp_path):
    world = World(tmp_path / "events.sqlite3")
    world.aggregator = IncidentAggregator(  # no hook: as a lost insert
        world.store, IncidentRules(), clock=lambda: world.newest or T0
    )
    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))

    assert 1 == await world.sender.reconcile()
    await world.sender.run_once()

    [(key, status)] = world.notifier.sent
    assert (key.endswith(":1:open"), status) == (True, "open")
    await world.close()


async def test_an_outbox_insert_that_fails_never_fails_the_consumers_hook(world, caplog):
    await world.outbox.close()
    world.sender.outbox = BrokenOutbox()

    await world.feed(burst(T0, errors={"LLM_TIMEOUT": 30}))  # does not raise

    assert 1 == world.sender.stats.enqueue_failures
    assert 1 == len(await world.store.transitions())
    world.outbox = SQLiteNotificationOutbox(world.store._db.path)


class BrokenOutbox:
    async def enqueue(self, messages: Any) -> int:
        raise OSError("disk full (fake)")

    async def close(self) -> None:
        return None


async def test_a_restarted_worker_enqueues_and_sends_nothing_twice(world):
    await world.open_and_resolve()
    await world.sender.run_once()
    await world.sender.run_once()
    restarted = world.new_sender("w1-restarted")  # a new process: no memory of what it sent

    assert 0 == await restarted.reconcile()
    await world.aggregator.sweep(T0 + 90 * MIN)  # nothing new to record either
    assert not await restarted.run_once()
    assert 2 == len(world.notifier.sent)


async def test_a_claim_whose_owner_died_is_taken_over_when_its_lease_ends(world):
    incident_id = await world.open_and_resolve()
    key = f"{incident_id}:1:open"
    now = world.clock.now
    assert await world.outbox.claim(Attempt(key, 1, "dead-worker", now, now + 30 * SEC))

    await world.sender.run_once()
    assert [] == world.notifier.sent  # the dead worker's lease still holds
    world.clock.now += 30 * SEC
    await world.sender.run_once()

    assert [key] == [k for k, _ in world.notifier.sent]
    tries = (await world.outbox.attempts([key]))[key]
    assert [("dead-worker", None), ("w1", "delivered")] == [(a.worker, a.outcome) for a in tries]


async def test_the_cli_lists_the_outbox_with_each_messages_state(world, tmp_path):
    world.clock.now = dt.datetime.now(dt.UTC)  # the CLI reads the last 24 h of wall time
    incident_id = await world.open_and_resolve()
    world.notifier.fail = [DeliveryError("HTTP 503")]
    await world.sender.run_once()
    env = {
        "WIDELOG_SQLITE_PATH": str(tmp_path / "events.sqlite3"),
        "WIDELOG_INCIDENTS_WEBHOOK_URL": "https://hooks.example.com/x",
    }

    shown = await asyncio.to_thread(
        CliRunner().invoke, incidents_app, ["notifications", "--json"], env=env
    )

    assert 0 == shown.exit_code, shown.output
    rows = {r["key"]: r for r in json.loads(shown.stdout)["messages"]}
    assert {f"{incident_id}:1:open", f"{incident_id}:1:resolve"} == set(rows)
    opened = rows[f"{incident_id}:1:open"]
    assert ("pending", 1, "failed", "HTTP 503") == (
        opened["state"],
        opened["attempts"],
        opened["last"]["outcome"],
        opened["last"]["detail"],
    )
    off = CliRunner().invoke(incidents_app, ["notifications"], env={"WIDELOG_SQLITE_PATH": "x"})
    assert (1, True) == (off.exit_code, "notifications are off" in off.output)


async def test_a_reopened_incident_is_announced_as_a_regression_after_its_resolve(world):
    incident_id = await world.open_and_resolve()
    await world.feed(burst(T0 + 90 * MIN, errors={"LLM_TIMEOUT": 40}))

    for _ in range(4):
        await world.sender.run_once()

    assert [
        (f"{incident_id}:1:open", "open"),
        (f"{incident_id}:1:resolve", "open"),
        (f"{incident_id}:2:regression", "open"),
    ] == world.notifier.sent


async def test_the_widelog_format_carries_the_key_and_the_whole_summary(world):
    incident = await incident_for(world)
    notifier = WebhookNotifier("http://receiver/hook", payload_format="widelog")
    message = OutboxMessage.opening(incident.id, 1, T0)

    payload = json.loads(notifier.body(message, incident))

    assert (message.key, "open", 1) == (
        payload["idempotencyKey"],
        payload["kind"],
        payload["episode"],
    )
    assert incident.id == payload["incident"]["id"]
    assert payload["incident"]["text"].startswith("OPEN since")
    await notifier.close()
