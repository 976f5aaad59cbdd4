"""Alert lifecycle with a ManualClock: no test sleeps."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from alerts import (
    AlertEngine,
    AlertsConfig,
    LifecycleConfig,
    Matcher,
    QuietHours,
    Route,
    Threshold,
    WebhookConfig,
    fingerprint,
)
from urbanpulse._clock import ManualClock
from urbanpulse._errors import ConfigError
from urbanpulse._events import Event, EventState, Severity

HOOK = WebhookConfig(name="ops", url="http://127.0.0.1:1/")


def ev(
    state: EventState = "start",
    *,
    sensor: str = "s1",
    district: str = "Menteng",
    detector: str = "haze",
    severity: Severity = Severity.WARNING,
    value: float = float("nan"),
    labels: dict[str, str] | None = None,
) -> Event:
    return Event(
        detector=detector,
        state=state,
        severity=severity,
        kind="air",
        city="Jakarta",
        district=district,
        sensor_id=sensor,
        metric="pm25",
        value=value,
        event_ns=1_700_000_000_000_000_000,
        detected_ns=1_700_000_000_000_000_000,
        message=f"{detector} {state} at {sensor}",
        labels=labels or {},
    )


def engine(
    clock: ManualClock,
    *,
    life: LifecycleConfig | None = None,
    route: Route | None = None,
    hook: WebhookConfig = HOOK,
) -> AlertEngine:
    route = route or Route(name="all", receivers=("ops",), group_wait_s=0, group_interval_s=30)
    cfg = AlertsConfig(
        lifecycle=life or LifecycleConfig(flap_transitions=0), routes=(route,), webhooks=(hook,)
    )
    return AlertEngine(cfg, clock=clock)


def statuses(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["labels"].get("sensor_id", ""), a["status"]) for a in payload["alerts"]]


def test_pending_then_firing_after_for_s() -> None:
    clock = ManualClock()
    eng = engine(clock, life=LifecycleConfig(for_s=60, flap_transitions=0))
    eng.ingest([ev()])
    assert eng.tick() == []
    assert [a.state for a in eng.alerts()] == ["pending"]
    clock.advance(59)
    assert eng.tick() == []
    clock.advance(1)
    notes = eng.tick()
    assert len(notes) == 1
    assert statuses(notes[0].payload) == [("s1", "firing")]
    assert notes[0].payload["version"] == "4"


def test_pending_that_clears_is_never_notified() -> None:
    clock = ManualClock()
    eng = engine(clock, life=LifecycleConfig(for_s=60, flap_transitions=0))
    eng.ingest([ev()])
    clock.advance(30)
    eng.ingest([ev("end")])
    clock.advance(60)
    assert eng.tick() == []
    assert eng.alerts() == []


def test_dedup_and_resolve_on_end() -> None:
    clock = ManualClock()
    eng = engine(clock)
    eng.ingest([ev(), ev(), ev()])
    first = eng.tick()
    assert len(first) == 1
    assert len(eng.alerts()) == 1
    clock.advance(10)
    eng.ingest([ev()])
    assert eng.tick() == []  # nothing changed, no reminder yet
    clock.advance(30)
    eng.ingest([ev("end")])
    notes = eng.tick()
    assert len(notes) == 1
    assert notes[0].status == "resolved"
    assert statuses(notes[0].payload) == [("s1", "resolved")]
    assert notes[0].payload["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    clock.advance(3600)
    assert eng.tick() == []


def test_repeat_interval_reminds_until_acknowledged() -> None:
    clock = ManualClock()
    route = Route(name="r", receivers=("ops",), group_wait_s=0, repeat_interval_s=300)
    eng = engine(clock, route=route)
    eng.ingest([ev()])
    assert len(eng.tick()) == 1
    clock.advance(299)
    assert eng.tick() == []
    clock.advance(1)
    assert len(eng.tick()) == 1
    eng.ack(eng.alerts()[0].fingerprint, by="budi", comment="on site")
    clock.advance(600)
    assert eng.tick() == []
    # a state change is still sent, with the acknowledgement
    eng.ingest([ev("end")])
    notes = eng.tick()
    assert len(notes) == 1
    assert notes[0].payload["alerts"][0]["annotations"]["acknowledged_by"] == "budi"


def test_grouping_by_district_collects_sensors() -> None:
    clock = ManualClock()
    route = Route(
        name="r", receivers=("ops",), group_by=("district",), group_wait_s=10, group_interval_s=60
    )
    eng = engine(clock, route=route)
    eng.ingest([ev(sensor="s1"), ev(sensor="s2")])
    clock.advance(5)
    eng.ingest([ev(sensor="s3"), ev(sensor="x1", district="Gambir")])
    assert eng.tick() == []
    clock.advance(5)
    (note,) = eng.tick()  # Menteng's group_wait is over; Gambir's group started at +5
    assert note.payload["groupLabels"] == {"district": "Menteng"}
    assert statuses(note.payload) == [("s1", "firing"), ("s2", "firing"), ("s3", "firing")]
    assert note.payload["commonLabels"]["district"] == "Menteng"
    assert "sensor_id" not in note.payload["commonLabels"]
    clock.advance(5)
    (gambir,) = eng.tick()
    assert statuses(gambir.payload) == [("x1", "firing")]
    # a change inside the group waits for group_interval
    eng.ingest([ev("end", sensor="s2")])
    clock.advance(54)
    assert eng.tick() == []
    clock.advance(1)
    (note,) = eng.tick()
    assert statuses(note.payload) == [("s1", "firing"), ("s3", "firing"), ("s2", "resolved")]


def test_silence_mutes_matching_alerts_until_it_ends() -> None:
    clock = ManualClock()
    eng = engine(clock)
    silence = eng.add_silence(
        ["district=~Ment.*", "sensor_id!=s9"], duration_s=600, created_by="ani"
    )
    eng.ingest([ev(sensor="s1"), ev(sensor="s9")])
    (note,) = eng.tick()
    assert statuses(note.payload) == [("s9", "firing")]
    assert eng.silences(active_only=True) == [silence]
    clock.advance(600)
    (note,) = eng.tick()
    assert statuses(note.payload) == [("s1", "firing"), ("s9", "firing")]


def test_expired_silence_stops_muting() -> None:
    clock = ManualClock()
    eng = engine(clock)
    silence = eng.add_silence(["alertname=haze"], duration_s=3600, created_by="ani")
    eng.ingest([ev()])
    assert eng.tick() == []
    eng.expire_silence(silence.id)
    assert len(eng.tick()) == 1


def test_severity_change_resolves_old_alert_and_opens_new() -> None:
    clock = ManualClock()
    eng = engine(clock)
    eng.ingest([ev(severity=Severity.WARNING)])
    eng.tick()
    clock.advance(60)
    eng.ingest([ev(severity=Severity.CRITICAL)])
    (note,) = eng.tick()
    got = sorted((a["labels"]["severity"], a["status"]) for a in note.payload["alerts"])
    assert got == [("critical", "firing"), ("warning", "resolved")]


def test_index_change_events_resolve_below_threshold_with_hysteresis() -> None:
    clock = ManualClock()
    life = LifecycleConfig(
        thresholds=(Threshold(detector="ispu", trigger=101, reset=90),), flap_transitions=0
    )
    eng = engine(clock, life=life)

    def ispu(value: float, cat: str) -> Event:
        return ev("change", detector="ispu", value=value, labels={"index": "ispu", "category": cat})

    eng.ingest([ispu(80, "Sedang")])
    assert eng.tick() == []
    eng.ingest([ispu(120, "Tidak Sehat")])
    (note,) = eng.tick()
    assert note.payload["alerts"][0]["annotations"]["category"] == "Tidak Sehat"
    assert "metric" not in note.payload["alerts"][0]["labels"]
    clock.advance(60)
    eng.ingest([ispu(95, "Sedang")])  # between reset and trigger: still firing
    assert eng.tick() == []
    assert [a.state for a in eng.alerts()] == ["firing"]
    eng.ingest([ispu(90, "Sedang")])
    (note,) = eng.tick()
    assert note.status == "resolved"


def test_change_without_threshold_uses_severity() -> None:
    clock = ManualClock()
    eng = engine(clock)
    eng.ingest([ev("change", detector="ispu", severity=Severity.INFO)])
    assert eng.tick() == []
    eng.ingest([ev("change", detector="ispu", severity=Severity.WARNING)])
    assert len(eng.tick()) == 1
    clock.advance(60)
    eng.ingest([ev("change", detector="ispu", severity=Severity.INFO)])
    assert eng.tick()[0].status == "resolved"


def test_flapping_holds_state_until_quiet() -> None:
    clock = ManualClock()
    life = LifecycleConfig(flap_transitions=4, flap_window_s=300)
    route = Route(name="r", receivers=("ops",), group_wait_s=0, group_interval_s=0)
    eng = engine(clock, life=life, route=route)
    sent: list[str] = []
    for state in ("start", "end", "start", "end", "start", "end", "start", "end"):
        eng.ingest([ev(state)])
        sent += [n.status for n in eng.tick()]
        clock.advance(10)
    # start, end, start notified; the 4th transition holds the (firing) alert
    assert sent == ["firing", "resolved", "firing"]
    assert eng.alerts("firing")[0].annotations["flapping"] == "true"
    clock.advance(300)
    (note,) = eng.tick()
    assert note.status == "resolved"  # last wanted state applied after the quiet window


def test_quiet_hours_hold_warnings_but_not_critical() -> None:
    # 23:00 in Jakarta (UTC+7) = 16:00 UTC
    start = dt.datetime(2026, 3, 2, 16, 0, tzinfo=dt.UTC)
    clock = ManualClock(start_ns=int(start.timestamp()) * 1_000_000_000)
    hook = WebhookConfig(
        name="ops", url="http://x/", quiet_hours=QuietHours(start="22:00", end="06:00")
    )
    eng = engine(clock, hook=hook)
    eng.ingest([ev(sensor="s1", severity=Severity.WARNING)])
    assert eng.tick() == []
    eng.ingest([ev(sensor="s2", district="Gambir", severity=Severity.CRITICAL)])
    (note,) = eng.tick()
    assert statuses(note.payload) == [("s2", "firing")]
    clock.advance(6 * 3600 + 59 * 60)  # 05:59 local (the critical one got a reminder)
    assert [n for n in eng.tick() if "Menteng" in n.group_key] == []
    clock.advance(60)  # 06:00 local
    (note,) = [n for n in eng.tick() if "Menteng" in n.group_key]
    assert statuses(note.payload) == [("s1", "firing")]


def test_routing_continue_and_matchers() -> None:
    clock = ManualClock()
    cfg = AlertsConfig(
        routes=(
            Route(
                name="crit",
                matchers=("severity=critical",),
                receivers=("pager",),
                continue_=True,
                group_wait_s=0,
            ),
            Route(name="rest", receivers=("ops",), group_wait_s=0),
        ),
        webhooks=(HOOK, WebhookConfig(name="pager", url="http://x/")),
        lifecycle=LifecycleConfig(flap_transitions=0),
    )
    eng = AlertEngine(cfg, clock=clock)
    eng.ingest([ev(sensor="a", severity=Severity.CRITICAL), ev(sensor="b", district="Gambir")])
    got = sorted((n.receiver, tuple(s for s, _ in statuses(n.payload))) for n in eng.tick())
    assert got == [("ops", ("a",)), ("ops", ("b",)), ("pager", ("a",))]


def test_fingerprint_is_stable_and_label_sensitive() -> None:
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})
    assert len(fingerprint({"a": "1"})) == 16


@pytest.mark.parametrize(
    ("text", "labels", "hit"),
    [
        ("a=x", {"a": "x"}, True),
        ("a!=x", {"a": "x"}, False),
        ("a=~x|y", {"a": "y"}, True),
        ("a=~x", {"a": "xx"}, False),  # anchored
        ("a!~x.*", {"a": "yx"}, True),
        ("a=''", {}, True),
    ],
)
def test_matchers(text: str, labels: dict[str, str], hit: bool) -> None:
    assert Matcher.parse(text).matches(labels) is hit


def test_config_rejects_unknown_receiver_and_bad_hysteresis() -> None:
    with pytest.raises(ConfigError, match="unknown receiver"):
        AlertsConfig(routes=(Route(name="r", receivers=("nope",)),))
    with pytest.raises(ConfigError, match="reset"):
        Threshold(detector="ispu", trigger=100, reset=120)


def test_closed_series_are_forgotten() -> None:
    clock = ManualClock()
    eng = engine(clock, life=LifecycleConfig(flap_transitions=2, flap_window_s=60))
    eng.ingest([ev(sensor=f"s{i}") for i in range(50)])
    eng.tick()
    eng.ingest([ev("end", sensor=f"s{i}") for i in range(50)])
    eng.tick()
    assert eng.series_tracked == 50  # still inside the flap window
    clock.advance(61)
    eng.tick()
    assert eng.series_tracked == 0
    eng.ingest([ev("change", sensor=f"x{i}", severity=Severity.INFO) for i in range(50)])
    eng.tick()
    assert eng.series_tracked == 0


def test_config_loads_from_plain_data_with_pydantic() -> None:
    from pydantic import TypeAdapter

    cfg = TypeAdapter(AlertsConfig).validate_python(
        {
            "routes": [{"name": "r", "receivers": ["ops"], "matchers": ["severity=~crit.*"]}],
            "webhooks": [{"name": "ops", "url": "http://x/", "quiet_hours": {"start": "21:00"}}],
            "lifecycle": {"thresholds": [{"detector": "ispu", "trigger": 101, "reset": 90}]},
        }
    )
    assert cfg.routes[0].matches({"severity": "critical"})
    assert not cfg.routes[0].matches({"severity": "warning"})
    hook = cfg.receiver("ops")
    assert hook.quiet_hours is not None
    assert hook.quiet_hours.timezone == "Asia/Jakarta"
    assert cfg.lifecycle.thresholds[0].reset == 90


def test_snapshot_restore_keeps_alerts_groups_silences_and_acks() -> None:
    import json

    clock = ManualClock()
    life = LifecycleConfig(for_s=60, flap_transitions=0)
    route = Route(name="r", receivers=("ops",), group_by=("district",), group_wait_s=0)
    eng = engine(clock, life=life, route=route)
    eng.ingest([ev(sensor="s1")])
    clock.advance(60)
    assert len(eng.tick()) == 1
    eng.ack(eng.alerts("firing")[0].fingerprint, by="budi")
    clock.advance(100)  # past group_interval: only news would be sent
    eng.ingest([ev(sensor="s2")])  # pending, 30 s to go
    clock.advance(30)
    eng.tick()
    silence = eng.add_silence(["sensor_id=s9"], duration_s=3600, created_by="ani")
    state = json.loads(json.dumps(eng.snapshot()))

    clock2 = ManualClock(start_ns=clock.now_ns())
    clock2.advance(1000)  # a fresh process: other monotonic origin
    new = engine(clock2, life=life, route=route)
    new.restore(state)
    assert {a.labels["sensor_id"]: a.state for a in new.alerts()} == {
        "s1": "firing",
        "s2": "pending",
    }
    assert [s.id for s in new.silences(active_only=True)] == [silence.id]
    assert new.add_silence(["a=b"], duration_s=1, created_by="x").id != silence.id
    assert new.tick() == []  # s1 was told before the restart: not news
    clock2.advance(29)
    assert new.tick() == []
    clock2.advance(1)
    (note,) = new.tick()  # s2 fires after the rest of its for_s; s1 is not new to ops
    assert statuses(note.payload) == [("s1", "firing"), ("s2", "firing")]
    s1 = note.payload["alerts"][0]
    assert s1["annotations"]["acknowledged_by"] == "budi"
    new.ingest([ev("end", sensor="s1")])  # the detector's end after a restart resolves it
    clock2.advance(60)
    (note,) = new.tick()
    assert ("s1", "resolved") in statuses(note.payload)


def test_dispatcher_saves_state_on_close_and_loads_it(tmp_path: Path) -> None:
    import asyncio

    from alerts import AlertDispatcher, QueueConfig

    cfg = AlertsConfig(queue=QueueConfig(directory=str(tmp_path), fsync=False))
    clock = ManualClock()

    async def first() -> None:
        disp = AlertDispatcher(cfg, [], clock=clock)
        disp.handle([ev(sensor="s1")])
        disp.engine.add_silence(["sensor_id=s1"], duration_s=600, created_by="ani")
        await disp.close()

    asyncio.run(first())
    disp = AlertDispatcher(cfg, [], clock=clock)
    assert [a.labels["sensor_id"] for a in disp.engine.alerts("firing")] == ["s1"]
    assert disp.engine.silenced({"sensor_id": "s1"})
