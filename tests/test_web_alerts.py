"""The alert endpoints and metrics of the web server with an alerts dispatcher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from alerts import AlertDispatcher, AlertsConfig, QueueConfig
from urbanpulse._app import NullWriter
from urbanpulse._clock import ManualClock
from urbanpulse._events import Event, Severity
from urbanpulse._pipeline import Pipeline, PipelineOptions
from web import WebOptions, WebServer

T0_NS = 1_763_892_000 * 10**9


def _event(state: str, sensor: str) -> Event:
    return Event(
        detector="stuck",
        state=state,  # type: ignore[arg-type]
        severity=Severity.WARNING,
        kind="air",
        city="sindangraja",
        district="cikaso",
        sensor_id=sensor,
        metric="pm25",
        event_ns=T0_NS,
        detected_ns=T0_NS,
        message=f"{sensor} stuck",
    )


async def _call(port: int, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b"" if body is None else json.dumps(body).encode()
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(payload) if payload.startswith(b"{") else payload.decode()


def test_ack_silence_and_alert_metrics(tmp_path: Path) -> None:
    clock = ManualClock(T0_NS)
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter(), clock=clock)
    dispatcher = AlertDispatcher(
        AlertsConfig(queue=QueueConfig(directory=str(tmp_path), fsync=False)), [], clock=clock
    )
    server = WebServer(WebOptions(port=0), pipeline, alerts=dispatcher)
    dispatcher.handle([_event("start", "aq-1"), _event("start", "aq-2")])

    async def body(port: int) -> None:
        status, doc = await _call(port, "/api/alerts")
        assert status == 200
        assert doc["source"] == "alerts"
        by_sensor = {a["labels"]["sensor_id"]: a for a in doc["alerts"]}
        assert sorted(by_sensor) == ["aq-1", "aq-2"]
        fp = by_sensor["aq-1"]["fingerprint"]

        status, doc = await _call(port, f"/api/alerts/{fp}/ack", "POST", {"comment": "x"})
        assert status == 400  # no operator name
        status, doc = await _call(port, f"/api/alerts/{fp}/ack", "POST", {"by": "rina"})
        assert status == 200
        assert doc["acked_by"] == "rina"
        assert dispatcher.engine.get(fp).acked_by == "rina"
        assert (await _call(port, "/api/alerts/nope/ack", "POST", {"by": "rina"}))[0] == 404
        assert (await _call(port, f"/api/alerts/{fp}/ack", "POST", "[1]"))[0] == 400

        status, doc = await _call(
            port,
            f"/api/alerts/{fp}/silence",
            "POST",
            {"by": "rina", "duration_s": 600, "comment": "road works"},
        )
        assert status == 200
        assert "sensor_id=aq-1" in doc["matchers"]
        assert (doc["created_by"], doc["comment"]) == ("rina", "road works")
        assert doc["ends_ns"] - doc["starts_ns"] == 600 * 10**9
        assert dispatcher.engine.silenced(by_sensor["aq-1"]["labels"])
        assert not dispatcher.engine.silenced(by_sensor["aq-2"]["labels"])
        bad = {"by": "rina", "matchers": ["no operator here"]}
        assert (await _call(port, f"/api/alerts/{fp}/silence", "POST", bad))[0] == 400

        _, districts = await _call(port, "/api/districts")
        counts = {d["district"]: d["open_alerts"] for d in districts["districts"]}
        assert counts == {"cikaso": 2}

        _, text = await _call(port, "/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["urbanpulse_alerts_firing"].samples[0].value == 2
        assert (
            "# TYPE urbanpulse_alert_notifications_total counter" in text
        )  # no receivers: no samples

    async def go() -> None:
        await server.start()
        try:
            await body(server.port)
        finally:
            await server.close()

    asyncio.run(go())


def test_alert_actions_without_a_dispatcher_are_not_implemented() -> None:
    clock = ManualClock(T0_NS)
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter(), clock=clock)
    server = WebServer(WebOptions(port=0), pipeline)

    async def go() -> None:
        await server.start()
        try:
            status, doc = await _call(server.port, "/api/alerts/x/ack", "POST", {"by": "a"})
            assert status == 501
            assert "dispatcher" in doc["error"]
        finally:
            await server.close()

    asyncio.run(go())


def test_an_update_goes_out_when_only_the_alert_counts_change(tmp_path: Path) -> None:
    """Regression: the district table's open-alert count stayed 0 when an alert
    opened without a new event reaching the web server's subscription."""
    clock = ManualClock(T0_NS)
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter(), clock=clock)
    dispatcher = AlertDispatcher(
        AlertsConfig(queue=QueueConfig(directory=str(tmp_path), fsync=False)), [], clock=clock
    )
    server = WebServer(WebOptions(port=0), pipeline, alerts=dispatcher)
    server.tick()  # the empty initial state
    assert server.tick() is None  # nothing changed
    dispatcher.handle([_event("start", "aq-1")])  # straight to the dispatcher, not the bus
    msg = server.tick()
    assert msg is not None
    doc = json.loads(msg.split(b"data: ", 1)[1])
    counts = {d["district"]: d["open_alerts"] for d in doc["districts"]}
    assert counts.get("cikaso") == 1
    assert server.tick() is None
