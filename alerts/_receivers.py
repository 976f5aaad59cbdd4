"""Receivers: deliver one webhook-v4 payload (see docs/alerts.md) somewhere.

Each ``send`` raises :class:`RetryableOutputError` when trying later may help
(connection refused, timeout, 429, 5xx) and :class:`OutputError` when it will
not (other 4xx); the dispatcher keeps the former in the disk queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

import urllib3

from alerts._config import AlertmanagerConfig, MqttAlertConfig, WebhookConfig, _ReceiverBase
from alerts._engine import format_time
from urbanpulse._clock import Clock, SystemClock
from urbanpulse._errors import OutputError, RetryableOutputError

__all__ = [
    "SIGNATURE_HEADER",
    "AlertmanagerReceiver",
    "MqttReceiver",
    "Publish",
    "Receiver",
    "WebhookReceiver",
    "sign",
]

SIGNATURE_HEADER = "X-UrbanPulse-Signature"


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Receiver(Protocol):
    name: str

    async def send(self, payload: Mapping[str, Any]) -> None: ...


def _map_severity(payload: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    out = dict(payload)
    if not mapping:
        return out

    def mapped(labels: Mapping[str, str]) -> dict[str, str]:
        labels = dict(labels)
        if labels.get("severity") in mapping:
            labels["severity"] = mapping[labels["severity"]]
        return labels

    out["alerts"] = [{**alert, "labels": mapped(alert["labels"])} for alert in payload["alerts"]]
    for key in ("commonLabels", "groupLabels"):
        out[key] = mapped(out.get(key, {}))
    return out


_C = TypeVar("_C", bound=_ReceiverBase)


class _HttpReceiver(Generic[_C]):
    def __init__(self, config: _C) -> None:
        self.name = config.name
        self.config = config
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=2, retries=False, timeout=urllib3.Timeout(config.timeout_s)
        )

    def _post_once(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            resp = self._pool.request("POST", url, body=body, headers=dict(headers))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RetryableOutputError(f"alert receiver {self.name}: {exc}") from exc
        status = int(resp.status)
        if status < 300:
            return
        text = resp.data[:200].decode(errors="replace")
        if status == 429 or status >= 500:
            raise RetryableOutputError(
                f"alert receiver {self.name}: HTTP {status} {text}", status=status
            )
        raise OutputError(f"alert receiver {self.name}: HTTP {status} {text}", status=status)

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        delay = self.config.backoff_s
        for attempt in range(self.config.retries + 1):
            try:
                await asyncio.to_thread(self._post_once, url, body, headers)
                return
            except RetryableOutputError:
                if attempt == self.config.retries:
                    raise
            await asyncio.sleep(delay)
            delay *= 2

    def close(self) -> None:
        self._pool.clear()


class WebhookReceiver(_HttpReceiver[WebhookConfig]):
    """POSTs the payload as JSON, signed with ``X-UrbanPulse-Signature`` if a secret is set."""

    def encode(self, payload: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(
            _map_severity(payload, self.config.severity_map), separators=(",", ":")
        ).encode()
        headers = {"Content-Type": "application/json", **self.config.headers}
        if self.config.secret:
            headers[SIGNATURE_HEADER] = sign(self.config.secret, body)
        return body, headers

    async def send(self, payload: Mapping[str, Any]) -> None:
        body, headers = self.encode(payload)
        await self._post(self.config.url, body, headers)


class AlertmanagerReceiver(_HttpReceiver[AlertmanagerConfig]):
    """POSTs the payload's alerts to ``/api/v2/alerts``: firing ones with
    ``endsAt = now + expire_s`` (re-sent by the engine every ``resend_interval_s``),
    resolved ones with their real ``endsAt``."""

    def __init__(self, config: AlertmanagerConfig, *, clock: Clock | None = None) -> None:
        super().__init__(config)
        self._clock = clock or SystemClock()

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        mapped = _map_severity(payload, self.config.severity_map)
        expires = format_time(self._clock.now_ns() + round(self.config.expire_s * 1e9))
        out = []
        for alert in mapped["alerts"]:
            item = {
                "labels": alert["labels"],
                "annotations": alert["annotations"],
                "startsAt": alert["startsAt"],
                "endsAt": expires if alert["status"] == "firing" else alert["endsAt"],
            }
            if alert.get("generatorURL"):
                item["generatorURL"] = alert["generatorURL"]
            out.append(item)
        return json.dumps(out, separators=(",", ":")).encode()

    async def send(self, payload: Mapping[str, Any]) -> None:
        body = self.encode(payload)
        url = self.config.url.rstrip("/") + "/api/v2/alerts"
        await self._post(url, body, {"Content-Type": "application/json"})


class Publish(Protocol):
    """``ingest.MqttClient.publish``: False when not connected."""

    def __call__(
        self, topic: str, payload: bytes, *, qos: int = ..., retain: bool = ...
    ) -> bool: ...


class MqttReceiver:
    """Retained alert state per fingerprint on ``<topic_prefix>/<fingerprint>``;
    a resolved alert clears its topic with an empty retained message."""

    def __init__(self, config: MqttAlertConfig, publish: Publish) -> None:
        self.name = config.name
        self.config = config
        self._publish = publish

    def topic(self, fp: str) -> str:
        return f"{self.config.topic_prefix.rstrip('/')}/{fp}"

    async def send(self, payload: Mapping[str, Any]) -> None:
        mapped = _map_severity(payload, self.config.severity_map)
        for alert in mapped["alerts"]:
            if alert["status"] == "firing":
                body = json.dumps(
                    {**alert, "receiver": self.name, "sentAt": format_time(time.time_ns())},
                    separators=(",", ":"),
                ).encode()
            else:
                body = b""
            if not self._publish(
                self.topic(alert["fingerprint"]), body, qos=self.config.qos, retain=True
            ):
                raise RetryableOutputError(f"alert receiver {self.name}: MQTT not connected")
