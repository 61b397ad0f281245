"""Secrets never leave the process: scrubbed from kept events before publish, and from log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import widelog
from widelog import LoggingService, request_scope
from widelog.config import Settings, load_settings
from widelog.events import log_bridge
from widelog.events.event import decode
from widelog.events.redaction import RedactionPolicy, RedactionPolicyError, Redactor
from widelog.policies import load_redaction_policy
from widelog.testing import RecordingPublisher, keep_all

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
BEARER = "Bearer 9f8e7d6c5b4a3210fedcba98"
SECRETS = {
    "bearer": BEARER,
    "jwt": JWT,
    "openai": "sk-proj-Abc123Def456Ghi789Jkl012",
    "stripe": "sk_live_51HxYzAbCdEfGhIjKl",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": "ghp_" + "A1b2C3d4E5" * 4,
    "slack": "xoxb-123456789012-abcdefABCDEF",
    "google": "AIza" + "Sy9-aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"[:35],
}

redactor = Redactor(RedactionPolicy())


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("password", "password"),
        ("Password", "password"),
        ("userPassword", "password"),
        ("passwd", "passwd"),
        ("client_secret", "secret"),
        ("SECRET_KEY", "secret_key"),
        ("token", "token"),
        ("access_token", "token"),
        ("refreshToken", "token"),
        ("session_token", "token"),
        ("api_key", "api_key"),
        ("apiKey", "api_key"),
        ("APIKey", "api_key"),
        ("apikey", "apikey"),
        ("aws_secret_access_key", "access_key"),
        ("private_key", "private_key"),
        ("credentials", "credentials"),
        ("Authorization", "authorization"),
        ("Proxy-Authorization", "proxy-authorization"),
        ("cookie", "cookie"),
        ("Set-Cookie", "set-cookie"),
        ("X-Api-Key", "x-api-key"),
        ("x_auth_token", "x-auth-token"),
    ],
)
def test_a_secret_field_name_in_any_case_replaces_the_whole_value_with_its_kind(key, kind):
    doc: dict[str, Any] = {"llm": {key: "hunter2"}}
    assert 1 == redactor.redact(doc)
    assert {"llm": {key: f"[redacted:{kind}]"}, "redacted": 1} == doc


@pytest.mark.parametrize(
    "key",
    [
        "input_tokens",
        "output_tokens",
        "max_tokens",
        "total_tokens",
        "token_count",
        "tokens",
        "tokenizer",
        "cache_key",
        "session_id",
        "cookie_consent",
        "private_key_id",
        "password_policy",
        "keyboard",
        "secretary",
    ],
)
def test_near_miss_field_names_are_kept(key):
    doc = {"llm": {key: "value-kept"}}
    assert 0 == redactor.redact(doc)
    assert {"llm": {key: "value-kept"}} == doc


def test_llm_token_counts_are_core_fields_and_stay():
    doc = {"llm": {"model": "gpt-4o-mini", "input_tokens": 812, "output_tokens": 96}}
    redactor.redact(doc)
    assert {"model": "gpt-4o-mini", "input_tokens": 812, "output_tokens": 96} == doc["llm"]


def test_a_secret_field_holding_nothing_or_a_flag_is_left_as_it_is():
    doc = {"password": None, "has_token": True, "api_key": ""}
    assert 1 == redactor.redact(doc)  # the empty string: still says a key was sent
    assert {"password": None, "has_token": True, "api_key": "[redacted:api_key]"} == {
        k: doc[k] for k in ("password", "has_token", "api_key")
    }


@pytest.mark.parametrize(("kind", "secret"), SECRETS.items())
def test_each_token_shape_is_replaced_inside_text_by_a_marker_naming_its_kind(kind, secret):
    doc = {"error": {"message": f"upstream said no to {secret} (retrying)"}}
    assert 1 == redactor.redact(doc)
    assert f"upstream said no to [redacted:{kind}] (retrying)" == doc["error"]["message"]


@pytest.mark.parametrize(
    "text",
    [
        "the bearer of bad news arrived",
        "Bearer information unavailable",
        "pip install sk-learn scikit-learn",
        "sk_live_short",
        "AKIAIOSFODNN7 is too short",
        "ghp_tooShort123",
        "xoxb-short",
        "eyJhbGciOiJIUzI1NiJ9 is only a header",
        "jane.doe@example.com wrote in",  # e-mail addresses are personal data, off by default
        "0190f3c2-7a4b-7c1d-9e2f-0123456789ab",  # a UUIDv7 request id
    ],
)
def test_ordinary_text_near_a_token_shape_is_kept(text):
    doc = {"message": text}
    assert 0 == redactor.redact(doc)
    assert {"message": text} == doc


def test_e_mail_addresses_are_scrubbed_only_when_the_policy_says_so():
    doc = {"message": "sent to jane.doe@example.co.uk and bob+x@mail.example.org"}
    Redactor(RedactionPolicy(emails=True)).redact(doc)
    assert "sent to [redacted:email] and [redacted:email]" == doc["message"]


def test_secrets_are_found_at_any_depth_in_lists_and_in_keys():
    doc: dict[str, Any] = {
        "calls": [{"headers": {"Authorization": BEARER}}, [f"retry with {JWT}"]],
        "by_key": {SECRETS["openai"]: 3},
    }
    assert 3 == redactor.redact(doc)
    assert {
        "calls": [
            {"headers": {"Authorization": "[redacted:authorization]"}},
            ["retry with [redacted:jwt]"],
        ],
        "by_key": {"[redacted:openai]": 3},
        "redacted": 3,
    } == doc


def test_scrubbing_twice_finds_nothing_new_and_counts_add_up():
    doc: dict[str, Any] = {"password": "x", "note": JWT}
    redactor.redact(doc)
    before = dict(doc)
    assert 0 == redactor.redact(doc)
    assert before == doc
    doc["token"] = "y"
    redactor.redact(doc)
    assert 3 == doc["redacted"]


def test_your_own_patterns_and_fields_apply_with_the_defaults():
    policy = RedactionPolicy(
        fields=(*RedactionPolicy().fields, "pin"), patterns={"ticket": r"TCK-\d{6}"}
    )
    doc = {"card_pin": 1234, "note": f"TCK-123456 and {JWT}"}
    Redactor(policy).redact(doc)
    assert {"card_pin": "[redacted:pin]", "note": "[redacted:ticket] and [redacted:jwt]"} == {
        k: doc[k] for k in ("card_pin", "note")
    }


def test_a_disabled_value_kind_is_left_alone():
    doc = {"a": SECRETS["aws"], "b": JWT}
    Redactor(RedactionPolicy(values=("jwt",))).redact(doc)
    assert {"a": SECRETS["aws"], "b": "[redacted:jwt]"} == {k: doc[k] for k in ("a", "b")}


# --- the policy as data -----------------------------------------------------------------------


def test_a_policy_file_with_env_overrides_on_top(tmp_path):
    path = tmp_path / "redaction.toml"
    path.write_text(
        'fields = ["password", "pin"]\nvalues = ["jwt"]\n[patterns]\nticket = "TCK-[0-9]{6}"\n'
    )
    policy = load_redaction_policy(
        environ={
            "WIDELOG_REDACTION_POLICY": str(path),
            "WIDELOG_REDACTION_EMAILS": "true",
            "WIDELOG_REDACTION_VALUES": "jwt, aws",
        }
    )
    assert (("password", "pin"), ("jwt", "aws"), True, {"ticket": "TCK-[0-9]{6}"}) == (
        policy.fields,
        policy.values,
        policy.emails,
        policy.patterns,
    )


def test_the_defaults_are_on_with_e_mail_off():
    policy = load_redaction_policy(environ={})
    assert (True, False) == (policy.enabled, policy.emails)
    assert {"bearer", "jwt", "openai", "stripe", "aws", "github", "slack"} <= set(policy.values)


@pytest.mark.parametrize(
    ("environ", "toml", "message"),
    [
        (
            {"WIDELOG_REDACTION_VALUES": "jwt,passport"},
            None,
            "WIDELOG_REDACTION_VALUES (values): Value error, unknown value pattern ['passport']",
        ),
        ({}, '[patterns]\nticket = "TCK-(["\n', "patterns: Value error, ticket: not a regular"),
        ({}, '[patterns]\nanything = ".*"\n', "anything: matches the empty string"),
        ({}, '[patterns]\n"Bad Name" = "x"\n', "patterns.Bad Name.[key]: String should match"),
        ({}, "emails = 'sometimes'\n", "emails: Input should be a valid boolean"),
        ({}, "fieldz = []\n", "fieldz: Extra inputs are not permitted"),
        (
            {"WIDELOG_REDACTION_EMAIL": "true"},
            None,
            "unknown setting WIDELOG_REDACTION_EMAIL for the redaction policy",
        ),
    ],
)
def test_a_bad_policy_fails_naming_the_key_and_what_is_wrong(tmp_path, environ, toml, message):
    if toml is not None:
        path = tmp_path / "redaction.toml"
        path.write_text(toml)
        environ = {**environ, "WIDELOG_REDACTION_POLICY": str(path)}
    with pytest.raises(RedactionPolicyError) as refused:
        load_redaction_policy(environ=environ)
    assert message in str(refused.value)


def test_load_settings_leaves_the_redaction_variables_to_their_loader(monkeypatch):
    monkeypatch.setenv("WIDELOG_REDACTION_EMAILS", "true")
    assert "memory" == load_settings().transport


# --- where the scrubber runs ------------------------------------------------------------------


def scrubbing_service(publisher: Any) -> LoggingService:
    return LoggingService(
        publisher=publisher,
        service="s",
        env="t",
        version="1",
        instance="i",
        redactor=Redactor(RedactionPolicy()),
    )


def test_finalize_publishes_the_scrubbed_event_with_its_count():
    publisher = RecordingPublisher()
    service = scrubbing_service(publisher)
    event = service.begin(request_id="r1")
    event.set("auth.password", "hunter2")
    event.set("llm.input_tokens", 7)
    event.error("UPSTREAM_401", message=f"refused {BEARER}")
    service.finalize(event)
    [(_key, payload)] = publisher.records
    assert b"hunter2" not in payload
    assert BEARER.encode() not in payload
    doc = decode(payload)
    assert ("[redacted:password]", "refused [redacted:bearer]", 7, 2) == (
        doc["auth"]["password"],
        doc["error"]["message"],
        doc["llm"]["input_tokens"],
        doc["redacted"],
    )


def test_a_finalize_failure_is_logged_with_its_stack_but_never_the_secret(monkeypatch, caplog):
    def choke(doc: Any, **_kwargs: Any) -> bytes:
        raise ValueError(f"cannot encode {JWT}")

    monkeypatch.setattr("widelog.events.logging_service.encode", choke)
    service = scrubbing_service(RecordingPublisher())
    with caplog.at_level(logging.ERROR, logger="widelog"):
        service.finalize(service.begin(request_id=JWT))
    assert 1 == service.stats.finalize_failed
    assert "eyJ" not in caplog.text
    assert (
        "finalize failed for request [redacted:jwt]: ValueError: cannot encode [redacted:jwt]"
        in (caplog.text)
    )
    assert "in choke" in caplog.text  # the stack is still there to debug it


def refuse(message: str) -> None:
    raise RuntimeError(message)


@pytest.fixture
def bridge() -> Iterator[None]:
    original = logging.getLogRecordFactory()
    log_bridge.install(level="WARNING", max_records=5, redactor=Redactor(RedactionPolicy()))
    yield
    log_bridge.install(level="off", max_records=0)
    assert original is logging.getLogRecordFactory()


def test_the_log_bridge_scrubs_a_message_before_cutting_it(bridge):
    publisher = RecordingPublisher()
    service = LoggingService(publisher=publisher, service="s", env="t", version="1", instance="i")
    event = service.begin()
    with request_scope(event):
        try:
            refuse(f"auth failed: {BEARER}")
        except RuntimeError:
            # The JWT straddles the 500-character cut: cut first, it would no longer look like one.
            logging.getLogger("tests.app").warning("%s %s", "x" * 480, JWT, exc_info=True)
    service.finalize(event)  # no redactor here: what is in the event came from the bridge
    [(_key, payload)] = publisher.records
    [entry] = decode(payload)["logs"]
    assert ("x" * 480 + " [redacted:jwt]", "RuntimeError: auth failed: [redacted:bearer]") == (
        entry["message"],
        entry["exception"],
    )
    assert 2 == decode(payload)["redacted"]


# --- end to end -------------------------------------------------------------------------------


def leaky_app() -> Starlette:
    async def login(_request: Any) -> JSONResponse:
        widelog.event.set("auth.password", "hunter2")
        widelog.event.set("llm.input_tokens", 12)
        logging.getLogger("tests.app").warning("token refresh with %s", JWT)
        raise PermissionError(f"upstream refused {BEARER}")

    return Starlette(routes=[Route("/login", login, methods=["POST"])])


async def post_login(app: Starlette) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert 500 == (await client.post("/login")).status_code


def widelogs_own(caplog: pytest.LogCaptureFixture) -> str:
    """widelog's log lines; the app's own (`tests.app`) are the app's to scrub."""
    return "\n".join(
        caplog.handler.format(r) for r in caplog.records if r.name.startswith("widelog")
    )


def assert_no_secret_in(text: str) -> None:
    assert [] == [s for s in ("hunter2", JWT, BEARER, "eyJhbGci", "9f8e7d6c") if s in text]


@pytest.fixture
def fresh_process() -> Iterator[None]:
    yield
    widelog._instrument._active = None
    log_bridge.uninstall(log_bridge._installed)


@pytest.mark.usefixtures("fresh_process")
async def test_a_handlers_secrets_never_reach_the_published_bytes_or_widelogs_logs(caplog):
    recorder = RecordingPublisher()
    app = leaky_app()
    handle = widelog.instrument(app, service="auth", publisher=recorder, sampling=keep_all())
    with caplog.at_level(logging.DEBUG, logger="widelog"):
        await post_login(app)
    await handle.close()
    [(_key, payload)] = recorder.records
    assert_no_secret_in(payload.decode())
    assert_no_secret_in(widelogs_own(caplog))
    [event] = recorder.events
    assert (12, "[redacted:password]", 3) == (
        event["llm"]["input_tokens"],
        event["auth"]["password"],
        event["redacted"],  # the password, the bearer token, the JWT in the folded warning
    )


@pytest.mark.usefixtures("fresh_process")
async def test_a_handlers_secrets_never_reach_the_embedded_store(tmp_path: Path, caplog):
    settings = Settings(sqlite_path=tmp_path / "events.sqlite3", flush_interval_s=0.05)
    app = leaky_app()
    handle = widelog.instrument(app, service="auth", settings=settings, sampling=keep_all())
    with caplog.at_level(logging.DEBUG, logger="widelog"):
        await post_login(app)
        await handle.pipeline.drained()
        [stored] = [e async for e in handle.pipeline.store.scan_events()]
        await handle.close()
    assert "[redacted:bearer]" in stored["error"]["message"]
    assert_no_secret_in(repr(stored))
    assert_no_secret_in(widelogs_own(caplog))
    assert_no_secret_in(every_byte_in(tmp_path).decode("latin-1"))  # the WAL and journal too


def every_byte_in(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())
