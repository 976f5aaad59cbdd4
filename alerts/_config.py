"""Alert configuration: frozen dataclasses, validated on construction.

The settings layer mounts :class:`AlertsConfig` under ``[alerts]``; every option is
keyword-only and carries its unit in its name.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

from urbanpulse._errors import ConfigError

__all__ = [
    "AlertmanagerConfig",
    "AlertsConfig",
    "EmailConfig",
    "LifecycleConfig",
    "Matcher",
    "MqttAlertConfig",
    "QueueConfig",
    "QuietHours",
    "Route",
    "Threshold",
    "WebhookConfig",
]

MatchOp = Literal["=", "!=", "=~", "!~"]
_MATCHER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher as in Alertmanager: ``name op value``; regexes are anchored."""

    name: str
    op: MatchOp
    value: str

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ConfigError(f"matcher {self.name}{self.op}{self.value!r}: {exc}") from exc

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``'severity=~warning|critical'``; quotes around the value are stripped."""
        found = _MATCHER_RE.match(text)
        if found is None:
            raise ConfigError(f"matcher {text!r}: expected name(=|!=|=~|!~)value")
        name, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return cls(name, op, value)  # type: ignore[arg-type]

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.name, "")
        if self.op == "=":
            return have == self.value
        if self.op == "!=":
            return have != self.value
        hit = re.fullmatch(self.value, have) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def _matchers(items: tuple[str | Matcher, ...]) -> tuple[Matcher, ...]:
    return tuple(m if isinstance(m, Matcher) else Matcher.parse(m) for m in items)


def _hhmm(text: str, what: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {text!r} is not HH:MM") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Threshold:
    """Hysteresis for one detector's events that carry a value: an alert opens when
    ``value >= trigger`` and resolves only when ``value <= reset``; in between the
    state stays as it is. E.g. ISPU: trigger 101 (Tidak Sehat), reset 90."""

    detector: str
    trigger: float
    reset: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.trigger) and math.isfinite(self.reset)):
            raise ConfigError(f"alerts threshold {self.detector}: trigger/reset must be finite")
        if self.reset > self.trigger:
            raise ConfigError(
                f"alerts threshold {self.detector}: reset {self.reset} > trigger {self.trigger}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleConfig:
    #: An alert stays pending this long before it fires (0: fires at once).
    for_s: float = 0.0
    #: Per-detector override of ``for_s``.
    for_s_by_detector: Mapping[str, float] = field(default_factory=dict)
    thresholds: tuple[Threshold, ...] = ()
    #: "change" events without a threshold: active when severity >= this.
    change_min_severity: str = "warning"
    #: Flapping: this many open/close transitions of one series within
    #: ``flap_window_s`` hold its state (no notifications) until it has been quiet for
    #: ``flap_window_s``. 0 disables.
    flap_transitions: int = 4
    flap_window_s: float = 600.0
    #: Resolved alerts stay listed this long.
    resolved_retention_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.for_s < 0 or any(v < 0 for v in self.for_s_by_detector.values()):
            raise ConfigError("alerts.for_s must be >= 0")
        if self.change_min_severity not in SEVERITIES:
            raise ConfigError(f"alerts.change_min_severity must be one of {SEVERITIES}")
        if self.flap_transitions < 0 or self.flap_window_s <= 0:
            raise ConfigError("alerts.flap_transitions >= 0 and flap_window_s > 0")
        seen = [t.detector for t in self.thresholds]
        if len(seen) != len(set(seen)):
            raise ConfigError("alerts.thresholds: one threshold per detector")

    def for_s_of(self, detector: str) -> float:
        return self.for_s_by_detector.get(detector, self.for_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuietHours:
    """Local-time window in which a receiver gets only ``bypass_severity`` and above;
    the rest is held and delivered when the window ends. ``start`` > ``end`` wraps
    midnight (22:00-06:00)."""

    start: str = "22:00"
    end: str = "06:00"
    timezone: str = "Asia/Jakarta"
    bypass_severity: str = "critical"

    def __post_init__(self) -> None:
        _hhmm(self.start, "quiet_hours.start")
        _hhmm(self.end, "quiet_hours.end")
        try:
            ZoneInfo(self.timezone)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"quiet_hours.timezone {self.timezone!r}: unknown") from exc
        if self.bypass_severity not in SEVERITIES:
            raise ConfigError(f"quiet_hours.bypass_severity must be one of {SEVERITIES}")

    def active(self, now_ns: int) -> bool:
        local = dt.datetime.fromtimestamp(now_ns / 1e9, ZoneInfo(self.timezone)).time()
        start, end = _hhmm(self.start, "start"), _hhmm(self.end, "end")
        if start <= end:
            return start <= local < end
        return local >= start or local < end


@dataclass(frozen=True, slots=True, kw_only=True)
class _ReceiverBase:
    name: str
    quiet_hours: QuietHours | None = None
    #: Rewrites the ``severity`` label on the way out (e.g. {"critical": "page"}).
    severity_map: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0
    #: Attempts inside one delivery before it goes back to the disk queue.
    retries: int = 2
    backoff_s: float = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig(_ReceiverBase):
    url: str
    #: Shared secret for ``X-UrbanPulse-Signature: sha256=<hex>`` (empty: unsigned).
    secret: str = field(default="", repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerConfig(_ReceiverBase):
    #: Base URL, e.g. http://alertmanager:9093
    url: str
    #: Firing alerts are posted with ``endsAt = now + expire_s`` and re-sent every
    #: ``resend_interval_s`` (must be shorter) so that Alertmanager keeps them.
    expire_s: float = 300.0
    resend_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.resend_interval_s < self.expire_s:
            raise ConfigError(f"alertmanager {self.name}: need 0 < resend_interval_s < expire_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttAlertConfig(_ReceiverBase):
    topic_prefix: str = "urbanpulse/_alerts"
    qos: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailConfig(_ReceiverBase):
    host: str
    port: int = 587
    starttls: bool = True
    username: str = ""
    password: str = field(default="", repr=False)
    sender: str
    recipients: tuple[str, ...]
    #: CA bundle to verify the server's certificate (empty: the system's).
    ca_file: str = ""
    #: Plain SMTP without STARTTLS is refused unless this is set (lab use only).
    allow_plaintext: bool = False

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ConfigError(f"email {self.name}: no recipients")
        if not self.starttls and not self.allow_plaintext:
            raise ConfigError(f"email {self.name}: starttls is off and allow_plaintext is not set")
        if self.username and not self.starttls:
            raise ConfigError(f"email {self.name}: will not send a password without STARTTLS")


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Alerts whose labels match every matcher go to ``receivers``; routes are tried
    in order and the first match stops the search unless it has ``continue_``."""

    name: str
    receivers: tuple[str, ...]
    matchers: tuple[str | Matcher, ...] = ()
    continue_: bool = False
    group_by: tuple[str, ...] = ("alertname", "city", "district")
    group_wait_s: float = 10.0
    group_interval_s: float = 60.0
    repeat_interval_s: float = 4 * 3600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "matchers", _matchers(self.matchers))
        if not self.receivers:
            raise ConfigError(f"alerts route {self.name}: no receivers")
        if min(self.group_wait_s, self.group_interval_s) < 0 or self.repeat_interval_s <= 0:
            raise ConfigError(f"alerts route {self.name}: negative intervals")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    #: One subdirectory per receiver holds its outbox (JSON lines + an ack cursor).
    directory: str = "var/alerts"
    #: Records kept per receiver; beyond, the oldest is dropped and counted.
    max_records: int = 10_000
    fsync: bool = True
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_records <= 0:
            raise ConfigError("alerts.queue.max_records must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsConfig:
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    routes: tuple[Route, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    alertmanagers: tuple[AlertmanagerConfig, ...] = ()
    mqtt: tuple[MqttAlertConfig, ...] = ()
    emails: tuple[EmailConfig, ...] = ()
    queue: QueueConfig = field(default_factory=QueueConfig)
    #: Shown as ``externalURL``; alert links are ``<external_url>/alerts/<fingerprint>``.
    external_url: str = ""
    #: The dispatcher re-evaluates timers (for_s, group_wait, ...) at least this often.
    tick_s: float = 1.0
    #: Bus subscription size for the dispatcher.
    subscription_maxsize: int = 100_000
    #: The engine's state (open alerts, acks, groups, silences) is saved to
    #: ``<queue.directory>/engine.json`` this often and on close, and loaded on start.
    state_interval_s: float = 5.0

    def __post_init__(self) -> None:
        names = [r.name for r in self.receivers()]
        if len(names) != len(set(names)):
            raise ConfigError("alerts: receiver names must be unique")
        for route in self.routes:
            for name in route.receivers:
                if name not in names:
                    raise ConfigError(f"alerts route {route.name}: unknown receiver {name!r}")

    def receivers(self) -> tuple[_ReceiverBase, ...]:
        return (*self.webhooks, *self.alertmanagers, *self.mqtt, *self.emails)

    def receiver(self, name: str) -> _ReceiverBase:
        for rec in self.receivers():
            if rec.name == name:
                return rec
        raise KeyError(name)
