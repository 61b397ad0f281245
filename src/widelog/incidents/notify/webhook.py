"""The webhook notifier: an Alertmanager-compatible JSON POST per message, optionally signed.

The body is what Alertmanager's webhook receiver sends (`version` "4", `groupKey`, `status`,
`alerts[]` with labels, annotations, `startsAt`/`endsAt`, `fingerprint`, `generatorURL`), so
receivers written for Alertmanager (PagerDuty/Opsgenie bridges, chat relays) take it unchanged;
widelog's own fields (`idempotencyKey`, `kind`, `incident`) ride along. With a secret, the
`X-Widelog-Signature` header is `sha256=` + hex HMAC-SHA256 of the exact body bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

from widelog.incidents.notify.ports import DeliveryError
from widelog.incidents.summary import summarize

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx
    from pydantic import SecretStr

    from widelog.incidents.model import Incident
    from widelog.incidents.notify.model import OutboxMessage

PayloadFormat = Literal["alertmanager", "widelog"]
SIGNATURE_HEADER: Final = "X-Widelog-Signature"
KEY_HEADER: Final = "Idempotency-Key"
KIND_HEADER: Final = "X-Widelog-Kind"
ZERO_TIME: Final = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert
# Statuses worth retrying; any other 4xx means the request itself is wrong (as Alertmanager).
RETRY_4XX: Final = frozenset({408, 409, 425, 429})
_LABEL: Final = re.compile(r"[^A-Za-z0-9_]")


def label_name(field: str) -> str:
    """A Prometheus label name for a group field: `error.code` → `error_code`."""
    name = _LABEL.sub("_", field)
    return f"_{name}" if name[:1].isdigit() else name


def _z(value: str | None) -> str:
    return ZERO_TIME if value is None else value.replace("+00:00", "Z")


def labels_of(incident: Incident, *, service: str) -> dict[str, str]:
    """Alertname (the rule), the group key's fields, and the service."""
    labels = {"alertname": str(incident.rule.get("id"))}
    for field, value in incident.key:
        labels[label_name(field)] = "" if value is None else value
    labels.setdefault("service", service)
    return labels


def alertmanager_payload(
    message: OutboxMessage,
    incident: Incident,
    *,
    service: str,
    admin_url: str | None = None,
    receiver: str = "widelog",
) -> dict[str, Any]:
    """The Alertmanager webhook body (version 4) for one message about one incident."""
    summary = summarize(incident)
    episode = next((e for e in summary["episodes"] if e["number"] == message.episode), None)
    episode = episode or summary["episodes"][-1]
    resolved = message.kind == "resolve"
    labels = labels_of(incident, service=service)
    annotations = {
        "summary": _headline(message, incident, summary),
        "description": summary["text"],
        "incident_id": incident.id,
        "reason": str(summary["reason"]),
    }
    url = f"{admin_url.rstrip('/')}/v1/incidents/{incident.id}" if admin_url else ""
    alert = {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": _z(episode["opened_at"]),
        "endsAt": _z(episode["resolved_at"]) if resolved else ZERO_TIME,
        "generatorURL": url,
        "fingerprint": fingerprint(labels),
    }
    return {
        "version": "4",
        "groupKey": group_key(labels),
        "truncatedAlerts": 0,
        "status": alert["status"],
        "receiver": receiver,
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": admin_url or "",
        "alerts": [alert],
        # widelog's own fields; Alertmanager receivers ignore what they do not know.
        "idempotencyKey": message.key,
        "kind": message.kind,
        "incident": {"id": incident.id, "episode": message.episode, "sequence": message.seq},
    }


def widelog_payload(message: OutboxMessage, incident: Incident) -> dict[str, Any]:
    """The plain format: the key, the kind and the incident's full summary."""
    return {
        "idempotencyKey": message.key,
        "kind": message.kind,
        "episode": message.episode,
        "sequence": message.seq,
        "incident": summarize(incident),
    }


def _headline(message: OutboxMessage, incident: Incident, summary: Mapping[str, Any]) -> str:
    where = ", ".join(f"{f}={'(none)' if v is None else v}" for f, v in incident.key)
    what = {
        "open": "opened",
        "regression": f"reopened (regression {message.episode - 1})",
        "update": f"still open (update {message.seq})",
        "resolve": "resolved",
    }[message.kind]
    return f"Incident {incident.id} {what}: rule {summary['rule']['id']}, {where}"


def fingerprint(labels: Mapping[str, str]) -> str:
    """16 hex digits identifying the label set (the same alert in every message)."""
    text = "\xff".join(f"{k}\xff{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def group_key(labels: Mapping[str, str]) -> str:
    """`{}:{alertname="errors", error_code="LLM_TIMEOUT", ...}`, as Alertmanager spells it."""
    pairs = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return "{}:{" + pairs + "}"


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact body bytes: compact JSON, keys in a fixed order (what the signature covers)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256(secret, body)>`, the value of `X-Widelog-Signature`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does: recompute over the raw body, compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


def origin(url: str) -> str:
    """`https://hooks.example.com`: where messages go, without path, query or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class WebhookNotifier:
    """POSTs each message to one URL; 2xx is delivered, 5xx/timeouts retried, 4xx rejected."""

    def __init__(
        self,
        url: str,
        *,
        secret: SecretStr | None = None,
        timeout_s: float = 5.0,
        payload_format: PayloadFormat = "alertmanager",
        service: str = "unknown_service",
        admin_url: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        import httpx  # noqa: PLC0415 - the server extra; the composition root checked it

        self._url = url
        self._secret = secret  # SecretStr: shown as '**********' wherever it is printed
        self._format = payload_format
        self._service = service
        self._admin_url = admin_url
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.target!r}, signed={self._secret is not None})"

    @property
    def target(self) -> str:
        return origin(self._url)

    def body(self, message: OutboxMessage, incident: Incident) -> bytes:
        if self._format == "widelog":
            return encode(widelog_payload(message, incident))
        payload = alertmanager_payload(
            message, incident, service=self._service, admin_url=self._admin_url
        )
        return encode(payload)

    def headers(self, message: OutboxMessage, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "widelog-notifier",
            KEY_HEADER: message.key,
            KIND_HEADER: message.kind,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret.get_secret_value().encode(), body)
        return headers

    async def send(self, message: OutboxMessage, incident: Incident) -> str:
        import httpx  # noqa: PLC0415 - see __init__

        body = self.body(message, incident)
        try:
            response = await self._client.post(
                self._url, content=body, headers=self.headers(message, body)
            )
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            text = str(exc).replace(self._url, self.target)  # the path may hold a token
            raise DeliveryError(f"{type(exc).__name__}: {text[:120]}") from None
        detail = f"HTTP {response.status_code}"
        if 200 <= response.status_code < 300:
            return detail
        retry = response.status_code >= 500 or response.status_code in RETRY_4XX
        raise DeliveryError(detail, retry=retry)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
