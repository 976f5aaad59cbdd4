"""Alert lifecycle: detector events -> alerts -> grouped notifications.

A pure state machine over an injected clock: :meth:`AlertEngine.ingest` takes
events, :meth:`AlertEngine.tick` advances timers and returns the notifications
due now. No I/O here; the dispatcher persists and delivers what ``tick`` returns.

Series and fingerprints
    An event's *series* is its identity without severity: alertname (the
    detector), kind, city, district, sensor_id (if any), lane (if not 0), metric
    (if any, and not for index detectors whose metric is the dominant pollutant).
    An alert's labels are the series labels plus ``severity``; its fingerprint is
    the first 16 hex digits of SHA-256 over the sorted labels. A series has at most
    one open alert: a severity change resolves the old alert and opens a new one
    (escalation is a new alert, as it would be in Alertmanager).

States
    ``pending`` (opened, waiting ``for_s``; closed silently if the condition clears
    before), ``firing``, ``resolved`` (on the detector's ``end`` event; for
    ``change`` events when the value falls to the reset threshold, or without a
    threshold when the severity drops below ``change_min_severity``).

Flapping
    ``flap_transitions`` open/close transitions of a series within
    ``flap_window_s`` hold it: its alert keeps its current state (annotation
    ``flapping=true``) until the series has been quiet for ``flap_window_s``; then
    the last wanted state applies.

Grouping (as in Alertmanager)
    Firing alerts are routed; each (route, receiver, group_by values) is a group.
    A group's first notification waits ``group_wait_s`` (collecting the sensors of a
    district), later ones go out at most every ``group_interval_s`` when something
    changed, and an unchanged group with unacknowledged firing alerts is re-sent
    every ``repeat_interval_s`` (reminder). Alertmanager receivers are re-sent every
    ``resend_interval_s`` regardless of acknowledgement so that they do not expire.
    Silenced alerts are left out; quiet hours hold a group's notification for that
    receiver (unless an alert reaches ``bypass_severity``) until they end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from alerts._config import SEVERITIES, AlertsConfig, Matcher, QuietHours, Route, _matchers
from urbanpulse._clock import Clock, SystemClock
from urbanpulse._errors import UrbanPulseError
from urbanpulse._events import Event, Severity

__all__ = [
    "Alert",
    "AlertEngine",
    "AlertState",
    "EngineStats",
    "Notification",
    "Silence",
    "fingerprint",
    "format_time",
]

AlertState = Literal["pending", "firing", "resolved"]
_ZERO_TIME = "0001-01-01T00:00:00Z"


def fingerprint(labels: Mapping[str, str]) -> str:
    """16 hex digits of SHA-256 over the sorted ``name=value`` pairs."""
    h = hashlib.sha256()
    for name in sorted(labels):
        h.update(f"{name}\x00{labels[name]}\x01".encode())
    return h.hexdigest()[:16]


def format_time(ns: int) -> str:
    """RFC 3339 UTC with milliseconds, as Alertmanager accepts."""
    if ns <= 0:
        return _ZERO_TIME
    stamp = dt.datetime.fromtimestamp(ns // 1_000_000 / 1000, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns // 1_000_000 % 1000:03d}Z"


@dataclass(slots=True)
class Alert:
    fingerprint: str
    series: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: AlertState
    #: Event time of the opening event (ns).
    starts_ns: int
    #: When it resolved (ns, wall clock); 0 while open.
    ends_ns: int = 0
    #: Monotonic second at which it opened (for ``for_s``).
    opened_s: float = 0.0
    value: float = math.nan
    acked_by: str = ""
    ack_comment: str = ""
    acked_ns: int = 0
    resolved_s: float = 0.0

    @property
    def severity(self) -> str:
        return self.labels["severity"]

    def to_dict(self, external_url: str = "", ends_ns: int | None = None) -> dict[str, Any]:
        """One alert as in Alertmanager's webhook v4 ``alerts[]``."""
        annotations = dict(self.annotations)
        if self.acked_by:
            annotations["acknowledged_by"] = self.acked_by
            if self.ack_comment:
                annotations["acknowledged_comment"] = self.ack_comment
        end = self.ends_ns if ends_ns is None else ends_ns
        return {
            "status": "resolved" if self.state == "resolved" else "firing",
            "labels": dict(self.labels),
            "annotations": annotations,
            "startsAt": format_time(self.starts_ns),
            "endsAt": format_time(end),
            "generatorURL": f"{external_url.rstrip('/')}/alerts/{self.fingerprint}"
            if external_url
            else "",
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_ns: int
    ends_ns: int
    created_by: str
    comment: str

    def active(self, now_ns: int) -> bool:
        return self.starts_ns <= now_ns < self.ends_ns

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """What one receiver is told about one group; ``payload`` is webhook v4 JSON."""

    receiver: str
    group_key: str
    payload: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.payload["status"])


@dataclass(slots=True)
class EngineStats:
    events: int = 0
    opened: int = 0
    fired: int = 0
    resolved: int = 0
    unrouted: int = 0
    notifications: int = 0
    silenced: int = 0
    held_quiet: int = 0
    flap_holds: int = 0


@dataclass(slots=True)
class _Series:
    alert: Alert | None = None
    want_active: bool = False
    want_severity: str = "warning"
    transitions: deque[float] = field(default_factory=deque)
    flapping: bool = False
    last_event: Event | None = None


@dataclass(slots=True)
class _Group:
    key: str
    route: Route
    receiver: str
    labels: dict[str, str]
    created_s: float
    members: dict[str, Alert] = field(default_factory=dict)
    #: fingerprint -> status last told to the receiver
    sent: dict[str, str] = field(default_factory=dict)
    sent_s: float = -math.inf


_INDEX_DETECTORS_LABEL = "index"


def _group_key(route: str, receiver: str, labels: Mapping[str, str]) -> str:
    return f"{route}/{receiver}/" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class AlertEngine:
    def __init__(self, config: AlertsConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._life = config.lifecycle
        self._thresholds = {t.detector: t for t in self._life.thresholds}
        self._change_min = SEVERITIES.index(self._life.change_min_severity)
        self._series: dict[str, _Series] = {}
        #: series keys that need a look at every tick (pending alert or flapping)
        self._watch: set[str] = set()
        self._alerts: dict[str, Alert] = {}
        self._groups: dict[str, _Group] = {}
        self._silences: dict[str, Silence] = {}
        self._silence_ids = itertools.count(1)
        self._quiet: dict[str, QuietHours] = {}
        self._resend_s: dict[str, float] = {}
        for rec in config.receivers():
            if rec.quiet_hours is not None:
                self._quiet[rec.name] = rec.quiet_hours
        for am in config.alertmanagers:
            self._resend_s[am.name] = am.resend_interval_s
        self.stats = EngineStats()

    # ------------------------------------------------------------------ events
    def ingest(self, events: Iterable[Event]) -> None:
        now_s = self._clock.monotonic_s()
        for event in events:
            self.stats.events += 1
            self._ingest_one(event, now_s)

    def _series_labels(self, event: Event) -> dict[str, str]:
        labels = {
            "alertname": event.detector,
            "kind": event.kind,
            "city": event.city,
            "district": event.district,
        }
        if event.sensor_id:
            labels["sensor_id"] = event.sensor_id
        if event.lane:
            labels["lane"] = str(event.lane)
        if event.metric and _INDEX_DETECTORS_LABEL not in event.labels:
            labels["metric"] = event.metric
        return labels

    def _wanted(self, event: Event, series: _Series) -> bool:
        threshold = self._thresholds.get(event.detector)
        if threshold is not None and math.isfinite(event.value):
            if event.value >= threshold.trigger:
                return True
            if event.value <= threshold.reset:
                return False
            return series.want_active
        if event.state == "start":
            return True
        if event.state == "end":
            return False
        return int(event.severity) >= self._change_min

    def _ingest_one(self, event: Event, now_s: float) -> None:
        base = self._series_labels(event)
        key = fingerprint(base)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        want = self._wanted(event, series)
        severity = Severity(event.severity).label
        if want != series.want_active and self._life.flap_transitions:
            series.transitions.append(now_s)
        series.want_active = want
        if want:
            series.want_severity = severity
        series.last_event = event
        self._watch.add(key)
        self._prune_transitions(series, now_s)
        limit = self._life.flap_transitions
        if limit and len(series.transitions) >= limit and not series.flapping:
            series.flapping = True
            self.stats.flap_holds += 1
        if series.flapping:
            if series.alert is not None and series.alert.state != "resolved":
                self._annotate(series.alert, event)
                series.alert.annotations["flapping"] = "true"
            return
        self._apply(series, base, event, now_s)

    def _prune_transitions(self, series: _Series, now_s: float) -> None:
        horizon = now_s - self._life.flap_window_s
        while series.transitions and series.transitions[0] < horizon:
            series.transitions.popleft()

    def _apply(self, series: _Series, base: dict[str, str], event: Event, now_s: float) -> None:
        alert = series.alert
        if alert is not None and alert.state == "resolved":
            alert = series.alert = None
        if not series.want_active:
            if alert is not None:
                self._close(series, alert, now_s)
            return
        if alert is not None and alert.severity != series.want_severity:
            self._close(series, alert, now_s)
            alert = None
        if alert is None:
            labels = {**base, "severity": series.want_severity}
            fp = fingerprint(labels)
            alert = Alert(
                fingerprint=fp,
                series=fingerprint(base),
                labels=labels,
                annotations={},
                state="pending",
                starts_ns=event.event_ns,
                opened_s=now_s,
            )
            series.alert = alert
            self._alerts[fp] = alert
            self.stats.opened += 1
        self._annotate(alert, event)
        self._maybe_fire(alert, now_s)

    def _annotate(self, alert: Alert, event: Event) -> None:
        ann = alert.annotations
        ann["summary"] = event.message
        if math.isfinite(event.value):
            ann["value"] = f"{event.value:g}"
            alert.value = event.value
        if math.isfinite(event.score):
            ann["score"] = f"{event.score:g}"
        for name, value in event.labels.items():
            if value:
                ann[name] = value
        ann.pop("flapping", None)

    def _maybe_fire(self, alert: Alert, now_s: float) -> None:
        if alert.state != "pending":
            return
        if now_s - alert.opened_s >= self._life.for_s_of(alert.labels["alertname"]):
            alert.state = "firing"
            self.stats.fired += 1
            self._route(alert, now_s)

    def _close(self, series: _Series, alert: Alert, now_s: float) -> None:
        if alert.state == "pending":
            # never told anyone: drop it silently
            self._alerts.pop(alert.fingerprint, None)
        else:
            alert.state = "resolved"
            alert.ends_ns = max(self._clock.now_ns(), alert.starts_ns)
            alert.resolved_s = now_s
            self.stats.resolved += 1
        if series.alert is alert:
            series.alert = None

    # ----------------------------------------------------------------- routing
    def routes_for(self, labels: Mapping[str, str]) -> list[Route]:
        found: list[Route] = []
        for route in self.config.routes:
            if route.matches(labels):
                found.append(route)
                if not route.continue_:
                    break
        return found

    def _route(self, alert: Alert, now_s: float) -> None:
        routes = self.routes_for(alert.labels)
        if not routes:
            self.stats.unrouted += 1
        for route in routes:
            glabels = {name: alert.labels.get(name, "") for name in route.group_by}
            for receiver in route.receivers:
                gkey = _group_key(route.name, receiver, glabels)
                group = self._groups.get(gkey)
                if group is None:
                    group = self._groups[gkey] = _Group(
                        key=gkey, route=route, receiver=receiver, labels=glabels, created_s=now_s
                    )
                group.members[alert.fingerprint] = alert

    # ------------------------------------------------------------------- ticks
    def tick(self) -> list[Notification]:
        """Advance timers (for_s, flapping, groups) and return what is due now."""
        now_s = self._clock.monotonic_s()
        now_ns = self._clock.now_ns()
        for key in list(self._watch):
            series = self._series[key]
            if series.flapping:
                self._prune_transitions(series, now_s)
                if not series.transitions:
                    series.flapping = False
                    if series.last_event is not None:
                        self._apply(
                            series, self._series_labels(series.last_event), series.last_event, now_s
                        )
            elif series.alert is not None:
                self._maybe_fire(series.alert, now_s)
            if series.flapping or (series.alert is not None and series.alert.state == "pending"):
                continue
            idle = series.alert is None and not series.want_active
            if idle:
                self._prune_transitions(series, now_s)
                if series.transitions:
                    continue  # kept for flap counting until the window has passed
                # back to the default state: nothing to remember (bounded memory)
                del self._series[key]
            self._watch.discard(key)
        out: list[Notification] = []
        for key in list(self._groups):
            group = self._groups[key]
            note = self._flush(group, now_s, now_ns)
            if note is not None:
                out.append(note)
            if not any(a.state == "firing" for a in group.members.values()) and not any(
                status == "firing" for status in group.sent.values()
            ):
                del self._groups[key]
        self._forget(now_s)
        self.stats.notifications += len(out)
        return out

    def _flush(self, group: _Group, now_s: float, now_ns: int) -> Notification | None:
        view: dict[str, Alert] = {}
        for fp, alert in group.members.items():
            if alert.state == "firing":
                if self.silenced(alert.labels, now_ns):
                    continue
                view[fp] = alert
            elif alert.state == "resolved" and group.sent.get(fp) == "firing":
                view[fp] = alert
        for fp in [fp for fp, a in group.members.items() if a.state == "resolved"]:
            if fp not in view:
                del group.members[fp]
        if not view:
            group.sent = {}
            return None
        status = {fp: ("firing" if a.state == "firing" else "resolved") for fp, a in view.items()}
        changed = status != group.sent
        route = group.route
        first = group.sent_s == -math.inf
        resend_s = self._resend_s.get(group.receiver)
        if first:
            due = now_s - group.created_s >= route.group_wait_s
        elif changed:
            due = now_s - group.sent_s >= route.group_interval_s
        else:
            firing = [a for a in view.values() if a.state == "firing"]
            if resend_s is not None:
                due = bool(firing) and now_s - group.sent_s >= min(
                    resend_s, route.repeat_interval_s
                )
            else:
                due = (
                    any(not a.acked_by for a in firing)
                    and now_s - group.sent_s >= route.repeat_interval_s
                )
        if not due:
            return None
        quiet = self._quiet.get(group.receiver)
        if quiet is not None and quiet.active(now_ns):
            bypass = SEVERITIES.index(quiet.bypass_severity)
            if not any(SEVERITIES.index(a.severity) >= bypass for a in view.values()):
                self.stats.held_quiet += 1
                return None
        group.sent = status
        group.sent_s = now_s
        for fp in [fp for fp, a in view.items() if a.state == "resolved"]:
            group.members.pop(fp, None)
        return Notification(
            receiver=group.receiver,
            group_key=group.key,
            payload=self._payload(group, list(view.values())),
        )

    def _payload(self, group: _Group, alerts: list[Alert]) -> dict[str, Any]:
        alerts.sort(
            key=lambda a: (a.state != "firing", a.labels.get("sensor_id", ""), a.fingerprint)
        )
        dicts = [a.to_dict(self.config.external_url) for a in alerts]
        common_labels = _common([d["labels"] for d in dicts])
        common_ann = _common([d["annotations"] for d in dicts])
        return {
            "version": "4",
            "groupKey": group.key,
            "truncatedAlerts": 0,
            "status": "firing" if any(a.state == "firing" for a in alerts) else "resolved",
            "receiver": group.receiver,
            "groupLabels": dict(group.labels),
            "commonLabels": common_labels,
            "commonAnnotations": common_ann,
            "externalURL": self.config.external_url,
            "alerts": dicts,
        }

    def _forget(self, now_s: float) -> None:
        keep_s = self._life.resolved_retention_s
        for fp in [
            fp
            for fp, a in self._alerts.items()
            if a.state == "resolved" and now_s - a.resolved_s > keep_s
        ]:
            del self._alerts[fp]

    @property
    def clock(self) -> Clock:
        return self._clock

    # ------------------------------------------------------------ persistence
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: open and recently resolved alerts (with acks), series
        hysteresis, groups (what each receiver was told), silences. Monotonic times
        are stored as ages. Flap windows are not kept."""
        now_s = self._clock.monotonic_s()
        alerts = [
            {
                "fingerprint": a.fingerprint,
                "series": a.series,
                "labels": a.labels,
                "annotations": a.annotations,
                "state": a.state,
                "starts_ns": a.starts_ns,
                "ends_ns": a.ends_ns,
                "opened_age_s": now_s - a.opened_s,
                "resolved_age_s": now_s - a.resolved_s if a.state == "resolved" else None,
                "value": a.value if math.isfinite(a.value) else None,
                "acked_by": a.acked_by,
                "ack_comment": a.ack_comment,
                "acked_ns": a.acked_ns,
            }
            for a in self._alerts.values()
        ]
        series = {
            key: {
                "want_active": s.want_active,
                "want_severity": s.want_severity,
                "alert": s.alert.fingerprint if s.alert is not None else None,
            }
            for key, s in self._series.items()
            if s.alert is not None or s.want_active
        }
        groups = [
            {
                "route": g.route.name,
                "receiver": g.receiver,
                "labels": g.labels,
                "created_age_s": now_s - g.created_s,
                "members": sorted(g.members),
                "sent": g.sent,
                "sent_age_s": None if g.sent_s == -math.inf else now_s - g.sent_s,
            }
            for g in self._groups.values()
        ]
        silences = [
            {
                "id": x.id,
                "matchers": [str(m) for m in x.matchers],
                "starts_ns": x.starts_ns,
                "ends_ns": x.ends_ns,
                "created_by": x.created_by,
                "comment": x.comment,
            }
            for x in self._silences.values()
            if x.ends_ns > self._clock.now_ns()
        ]
        return {
            "version": 1,
            "alerts": alerts,
            "series": series,
            "groups": groups,
            "silences": silences,
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot` into an empty engine. Groups whose route or
        receiver no longer exists are dropped."""
        if data.get("version") != 1:
            raise UrbanPulseError(f"alert state version {data.get('version')!r} not understood")
        now_s = self._clock.monotonic_s()
        for item in data["alerts"]:
            alert = Alert(
                fingerprint=item["fingerprint"],
                series=item["series"],
                labels=dict(item["labels"]),
                annotations=dict(item["annotations"]),
                state=item["state"],
                starts_ns=int(item["starts_ns"]),
                ends_ns=int(item["ends_ns"]),
                opened_s=now_s - float(item["opened_age_s"]),
                value=math.nan if item["value"] is None else float(item["value"]),
                acked_by=item["acked_by"],
                ack_comment=item["ack_comment"],
                acked_ns=int(item["acked_ns"]),
            )
            if item["resolved_age_s"] is not None:
                alert.resolved_s = now_s - float(item["resolved_age_s"])
            self._alerts[alert.fingerprint] = alert
        for key, item in data["series"].items():
            series = _Series(
                want_active=bool(item["want_active"]), want_severity=item["want_severity"]
            )
            fp = item["alert"]
            series.alert = self._alerts.get(fp) if fp else None
            self._series[key] = series
            if series.alert is not None and series.alert.state == "pending":
                self._watch.add(key)
        routes = {r.name: r for r in self.config.routes}
        for item in data["groups"]:
            route = routes.get(item["route"])
            if route is None or item["receiver"] not in route.receivers:
                continue
            labels = dict(item["labels"])
            key = _group_key(route.name, item["receiver"], labels)
            sent_age = item["sent_age_s"]
            self._groups[key] = _Group(
                key=key,
                route=route,
                receiver=item["receiver"],
                labels=labels,
                created_s=now_s - float(item["created_age_s"]),
                members={fp: self._alerts[fp] for fp in item["members"] if fp in self._alerts},
                sent=dict(item["sent"]),
                sent_s=-math.inf if sent_age is None else now_s - float(sent_age),
            )
        top = 0
        for item in data["silences"]:
            silence = Silence(
                id=item["id"],
                matchers=tuple(Matcher.parse(m) for m in item["matchers"]),
                starts_ns=int(item["starts_ns"]),
                ends_ns=int(item["ends_ns"]),
                created_by=item["created_by"],
                comment=item["comment"],
            )
            self._silences[silence.id] = silence
            if silence.id[1:].isdigit():
                top = max(top, int(silence.id[1:]))
        self._silence_ids = itertools.count(top + 1)

    @property
    def series_tracked(self) -> int:
        """Series remembered (open alert, hysteresis band, flap window)."""
        return len(self._series)

    # ------------------------------------------------------- operator actions
    def alerts(self, state: AlertState | None = None) -> list[Alert]:
        return [a for a in self._alerts.values() if state is None or a.state == state]

    def get(self, fp: str) -> Alert:
        try:
            return self._alerts[fp]
        except KeyError:
            raise UrbanPulseError(f"no alert {fp}") from None

    def ack(self, fp: str, *, by: str, comment: str = "") -> Alert:
        """Acknowledge: no more reminders for it (state changes are still sent)."""
        if not by:
            raise UrbanPulseError("an acknowledgement needs an operator name")
        alert = self.get(fp)
        alert.acked_by, alert.ack_comment, alert.acked_ns = by, comment, self._clock.now_ns()
        return alert

    def unack(self, fp: str) -> Alert:
        alert = self.get(fp)
        alert.acked_by, alert.ack_comment, alert.acked_ns = "", "", 0
        return alert

    def add_silence(
        self,
        matchers: Iterable[str | Matcher],
        *,
        duration_s: float,
        created_by: str,
        comment: str = "",
        starts_ns: int | None = None,
    ) -> Silence:
        parsed = _matchers(tuple(matchers))
        if not parsed:
            raise UrbanPulseError("a silence needs at least one matcher")
        if duration_s <= 0:
            raise UrbanPulseError("a silence needs a positive duration")
        start = self._clock.now_ns() if starts_ns is None else starts_ns
        silence = Silence(
            id=f"s{next(self._silence_ids)}",
            matchers=parsed,
            starts_ns=start,
            ends_ns=start + round(duration_s * 1e9),
            created_by=created_by,
            comment=comment,
        )
        self._silences[silence.id] = silence
        return silence

    def expire_silence(self, silence_id: str) -> None:
        silence = self._silences.get(silence_id)
        if silence is None:
            raise UrbanPulseError(f"no silence {silence_id}")
        now_ns = self._clock.now_ns()
        self._silences[silence_id] = replace(
            silence, starts_ns=min(silence.starts_ns, now_ns), ends_ns=now_ns
        )

    def silences(self, *, active_only: bool = False) -> list[Silence]:
        now_ns = self._clock.now_ns()
        return [s for s in self._silences.values() if not active_only or s.active(now_ns)]

    def silenced(self, labels: Mapping[str, str], now_ns: int | None = None) -> bool:
        now = self._clock.now_ns() if now_ns is None else now_ns
        hit = any(s.active(now) and s.matches(labels) for s in self._silences.values())
        if hit:
            self.stats.silenced += 1
        return hit


def _common(items: list[dict[str, str]]) -> dict[str, str]:
    if not items:
        return {}
    first = items[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in items[1:])}
