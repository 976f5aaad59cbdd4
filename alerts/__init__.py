"""Alerts: detector events -> alert lifecycle -> routed, grouped, durable notifications.

See docs/alerts.md. Typical wiring::

    dispatcher = AlertDispatcher(config, build_receivers(config, publish=mqtt.publish))
    task = asyncio.create_task(dispatcher.run(bus.subscribe("alerts", maxsize=...)))
"""

from __future__ import annotations

from collections.abc import Callable

from alerts._config import (
    AlertmanagerConfig,
    AlertsConfig,
    EmailConfig,
    LifecycleConfig,
    Matcher,
    MqttAlertConfig,
    QueueConfig,
    QuietHours,
    Route,
    Threshold,
    WebhookConfig,
)
from alerts._dispatch import AlertDispatcher, ReceiverStats
from alerts._email import EmailReceiver, render_email
from alerts._engine import (
    Alert,
    AlertEngine,
    AlertState,
    EngineStats,
    Notification,
    Silence,
    fingerprint,
    format_time,
)
from alerts._queue import DiskQueue
from alerts._receivers import (
    SIGNATURE_HEADER,
    AlertmanagerReceiver,
    MqttReceiver,
    Publish,
    Receiver,
    WebhookReceiver,
    sign,
)
from urbanpulse._clock import Clock
from urbanpulse._errors import ConfigError

__all__ = [
    "SIGNATURE_HEADER",
    "Alert",
    "AlertDispatcher",
    "AlertEngine",
    "AlertState",
    "AlertmanagerConfig",
    "AlertmanagerReceiver",
    "AlertsConfig",
    "DiskQueue",
    "EmailConfig",
    "EmailReceiver",
    "EngineStats",
    "LifecycleConfig",
    "Matcher",
    "MqttAlertConfig",
    "MqttReceiver",
    "Notification",
    "Publish",
    "QueueConfig",
    "QuietHours",
    "Receiver",
    "ReceiverStats",
    "Route",
    "Silence",
    "Threshold",
    "WebhookConfig",
    "WebhookReceiver",
    "build_receivers",
    "fingerprint",
    "format_time",
    "render_email",
    "sign",
]


def build_receivers(
    config: AlertsConfig,
    *,
    publish: Publish | None = None,
    clock: Clock | None = None,
    extra: Callable[[AlertsConfig], list[Receiver]] | None = None,
) -> list[Receiver]:
    """One receiver per configured receiver. ``publish`` (e.g. ``MqttClient.publish``)
    is required when MQTT receivers are configured."""
    out: list[Receiver] = [WebhookReceiver(c) for c in config.webhooks]
    out += [AlertmanagerReceiver(c, clock=clock) for c in config.alertmanagers]
    if config.mqtt:
        if publish is None:
            raise ConfigError("alerts: MQTT receivers need a publish callable")
        out += [MqttReceiver(c, publish) for c in config.mqtt]
    out += [EmailReceiver(c) for c in config.emails]
    if extra is not None:
        out += extra(config)
    return out
