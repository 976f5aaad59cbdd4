"""The web server against a broker-free Pipeline fed with simulator messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sim import SimOptions, Simulator, bundled_cities
from urbanpulse._app import NullWriter
from urbanpulse._clock import ManualClock
from urbanpulse._errors import ConfigError
from urbanpulse._events import Event, Severity
from urbanpulse._pipeline import Pipeline, PipelineOptions
from web import (
    LiveOptions,
    SensorDirectory,
    WebOptions,
    WebServer,
    is_loopback,
    load_sensor_directory,
)

T0_NS = 1_763_892_000 * 10**9
CITY = bundled_cities()["sindangraja"]
TOKEN = "s3cret-token-0123456789"


def _setup(**web: Any) -> tuple[Pipeline, WebServer, ManualClock, Simulator]:
    clock = ManualClock(T0_NS)
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter(), clock=clock)
    opts = WebOptions(port=0, sensors_file=CITY, **web)
    server = WebServer(opts, pipeline)
    sim = Simulator(SimOptions(city_file=str(CITY), start_ns=T0_NS - 900 * 10**9), clock)
    return pipeline, server, clock, sim


def _feed(pipeline: Pipeline, messages: list[tuple[str, bytes]]) -> None:
    """Through the buffer (as MQTT would), then the synchronous core."""
    for topic, payload in messages:
        pipeline.buffer.add(topic, payload)
    pipeline.process(pipeline.buffer.take())


async def _get(
    port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    writer.write((head + "\r\n").encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, hdrs, body


def _serve(server: WebServer, body: Callable[[int], Awaitable[None]]) -> None:
    async def go() -> None:
        await server.start()
        try:
            await body(server.port)
        finally:
            await server.close()

    asyncio.run(go())


def _newest(messages: list[tuple[str, bytes]], sensor_id: str, field: str) -> float:
    """Reference: the payload value with the newest dateObserved for one sensor."""
    best: tuple[float, float] | None = None
    for topic, payload in messages:
        doc = json.loads(payload)
        mine = topic.rsplit("/", 1)[1] == sensor_id and field in doc
        if mine and (best is None or doc["dateObserved"] >= best[0]):
            best = (doc["dateObserved"], doc[field])
    assert best is not None
    return best[1]


def test_sensors_api_newest_values_registry_and_unregistered() -> None:
    pipeline, server, _, sim = _setup()
    msgs = sim.messages(300)
    stranger = (
        "urbanpulse/sindangraja/cikaso/air/not-in-registry",
        json.dumps({"dateObserved": T0_NS / 1e9 - 10, "pm25": 12.5}).encode(),
    )
    _feed(pipeline, [*msgs, stranger])
    registered = load_sensor_directory(CITY).sensors

    async def body(port: int) -> None:
        status, hdrs, raw = await _get(port, "/api/sensors")
        assert status == 200
        assert hdrs["content-type"] == "application/json"
        doc = json.loads(raw)
        by_id = {s["id"]: s for s in doc["sensors"]}
        assert doc["count"] == len(registered) + 1
        assert by_id["not-in-registry"]["registered"] is False
        assert by_id["not-in-registry"]["lat"] is None
        assert by_id["not-in-registry"]["values"] == {"pm25": 12.5}
        air = next(s for s in registered.values() if s.kind == "air")
        one = by_id[air.sensor_id]
        assert one["registered"] is True
        assert (one["lat"], one["lon"]) == (air.lat, air.lon)
        assert one["values"]["pm25"] == _newest(msgs, air.sensor_id, "pm25")
        status, _, raw = await _get(port, f"/api/sensors/{air.sensor_id}")
        assert status == 200
        assert json.loads(raw)["id"] == air.sensor_id
        status, _, _ = await _get(port, "/api/sensors/nope")
        assert status == 404
        status, _, raw = await _get(port, "/api/sensors?registered=false")
        assert [s["id"] for s in json.loads(raw)["sensors"]] == ["not-in-registry"]

    _serve(server, body)


def test_districts_carry_ispu_and_congestion() -> None:
    pipeline, server, _, sim = _setup()
    _feed(pipeline, sim.messages(600))

    async def body(port: int) -> None:
        status, _, raw = await _get(port, "/api/districts")
        assert status == 200
        rows = json.loads(raw)["districts"]
        names = {r["district"] for r in rows}
        assert names == set(load_sensor_directory(CITY).districts)
        with_ispu = [r for r in rows if r["ispu"] is not None]
        assert with_ispu, rows
        for r in with_ispu:
            assert r["ispu_category"]["colour"].startswith("#")
            assert r["ispu_dominant"] in pipeline.indices.ispu_pollutants
        assert any(r["congestion"] is not None for r in rows)

    _serve(server, body)


def test_metrics_exposition_parses_and_counts() -> None:
    pipeline, server, _, sim = _setup()
    msgs = sim.messages(120)
    _feed(pipeline, [*msgs, ("urbanpulse/sindangraja/cikaso/air/x", b"{nope")])
    _feed(pipeline, msgs[:10])  # redelivered: duplicates

    async def body(port: int) -> None:
        status, hdrs, raw = await _get(port, "/metrics")
        assert status == 200
        assert hdrs["content-type"].startswith("text/plain; version=0.0.4")
        fams = {f.name: f for f in text_string_to_metric_families(raw.decode())}

        def value(name: str, **labels: str) -> float:
            fam = fams.get(name + "_total") or fams[name]
            for s in fam.samples:
                if s.labels == labels and s.name in (name, name + "_total", name + "_count"):
                    return s.value
            raise AssertionError(f"{name} {labels} missing")

        assert value("urbanpulse_messages_received") == 131
        assert value("urbanpulse_messages_decoded") == 130
        assert value("urbanpulse_messages_rejected", reason="not_json") == 1
        assert value("urbanpulse_readings_duplicate") > 0
        assert value("urbanpulse_batch_size_messages") == 2  # _count: two batches
        buckets = [
            s for s in fams["urbanpulse_batch_size_messages"].samples if s.name.endswith("_bucket")
        ]
        by_le = {s.labels["le"]: s.value for s in buckets}
        assert by_le["10"] == 1
        assert by_le["100"] == 1
        assert by_le["500"] == 2
        assert by_le["+Inf"] == 2
        assert value("urbanpulse_process_seconds") == 2
        assert value("urbanpulse_stage_healthy") == 1
        # the refused message created no series, so no sensor
        assert value("urbanpulse_web_sensors") == len(load_sensor_directory(CITY).sensors)

    _serve(server, body)


def test_readyz_needs_a_connected_broker() -> None:
    pipeline, server, _, _ = _setup()

    class FakeMqtt:
        connected = False

    async def body(port: int) -> None:
        status, _, raw = await _get(port, "/readyz")
        assert status == 503
        assert json.loads(raw)["checks"]["broker"] == "no client"
        fake = FakeMqtt()
        pipeline.mqtt = fake  # type: ignore[assignment]
        assert (await _get(port, "/readyz"))[0] == 503
        fake.connected = True
        status, _, raw = await _get(port, "/readyz")
        assert status == 200
        assert json.loads(raw)["ready"] is True
        assert (await _get(port, "/healthz"))[0] == 200

    _serve(server, body)


def test_beyond_loopback_requires_a_token() -> None:
    with pytest.raises(ConfigError, match="token"):
        WebOptions(host="0.0.0.0")
    with pytest.raises(ConfigError, match="token"):
        WebOptions(host="example.org")
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("10.0.0.1")
    WebOptions(host="0.0.0.0", token=TOKEN)  # accepted


def test_token_enforced_on_everything_but_healthz() -> None:
    _, server, _, _ = _setup(host="127.0.0.1", token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    async def body(port: int) -> None:
        assert (await _get(port, "/healthz"))[0] == 200
        for path in ("/", "/metrics", "/readyz", "/api/sensors", "/api/openapi.json"):
            status, hdrs, _ = await _get(port, path)
            assert status == 401, path
            assert hdrs["www-authenticate"].startswith("Bearer")
            wrong = {"Authorization": f"Bearer {TOKEN}x"}
            assert (await _get(port, path, headers=wrong))[0] == 401
        assert (await _get(port, "/api/sensors", headers=bearer))[0] == 200
        assert (await _get(port, "/metrics", headers=bearer))[0] == 200
        status, hdrs, _ = await _get(port, f"/?token={TOKEN}")
        assert status == 303
        assert hdrs["location"] == "/"
        cookie = hdrs["set-cookie"].split(";")[0]
        assert "HttpOnly" in hdrs["set-cookie"]
        assert (await _get(port, "/", headers={"Cookie": cookie}))[0] == 200
        assert (await _get(port, "/?token=wrong-token-value"))[0] == 401

    _serve(server, body)


def test_openapi_and_alert_actions() -> None:
    _, server, _, _ = _setup()

    async def body(port: int) -> None:
        status, _, raw = await _get(port, "/api/openapi.json")
        doc = json.loads(raw)
        assert status == 200
        assert doc["openapi"].startswith("3.")
        for path in ("/api/sensors", "/api/sensors/{id}", "/api/districts", "/api/alerts"):
            assert path in doc["paths"]
        status, _, raw = await _get(port, "/api/alerts/x/ack", method="POST")
        assert status == 501
        assert "alerts dispatcher" in json.loads(raw)["error"]
        assert (await _get(port, "/api/alerts/x/silence", method="POST"))[0] == 501
        assert (await _get(port, "/nope"))[0] == 404
        assert (await _get(port, "/api/sensors", method="DELETE"))[0] == 405

    _serve(server, body)


def _event(state: str, severity: Severity, sensor: str = "aq-cikaso-01") -> Event:
    return Event(
        detector="stuck",
        state=state,  # type: ignore[arg-type]
        severity=severity,
        kind="air",
        city="sindangraja",
        district="cikaso",
        sensor_id=sensor,
        metric="pm25",
        event_ns=T0_NS,
        detected_ns=T0_NS,
        message=f"{sensor} stuck",
    )


def test_alerts_open_and_close_with_events() -> None:
    pipeline, server, _, _ = _setup()

    async def body(port: int) -> None:
        pipeline.bus.publish([_event("start", Severity.WARNING)])
        server.tick()
        doc = json.loads((await _get(port, "/api/alerts"))[2])
        assert [a["sensor_id"] for a in doc["alerts"]] == ["aq-cikaso-01"]
        rows = json.loads((await _get(port, "/api/districts"))[2])["districts"]
        assert {r["district"]: r["open_alerts"] for r in rows}["cikaso"] == 1
        pipeline.bus.publish([_event("end", Severity.INFO)])
        server.tick()
        assert json.loads((await _get(port, "/api/alerts"))[2])["alerts"] == []
        feed = json.loads((await _get(port, "/api/events"))[2])["events"]
        assert [e["state"] for e in feed] == ["start", "end"]

    _serve(server, body)


async def _read_event(reader: asyncio.StreamReader) -> tuple[str, Any]:
    while True:
        block = (await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)).decode()
        lines = dict(ln.split(": ", 1) for ln in block.strip().split("\n") if ": " in ln)
        if "event" in lines:
            return lines["event"], json.loads(lines["data"])


def test_stream_sends_snapshot_then_coalesced_updates() -> None:
    pipeline, server, clock, sim = _setup()
    msgs = sim.messages(100)
    _feed(pipeline, msgs)
    server.tick()  # no client yet: clears what changed

    async def body(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"text/event-stream" in head
        kind, snap = await _read_event(reader)
        assert kind == "snapshot"
        assert len(snap["static"]["id"]) == len(snap["live"]["id"]) == len(server.live)
        assert snap["ispu_categories"][0]["name"] == "Baik"
        assert {o["district"] for o in snap["outlines"]} == set(
            load_sensor_directory(CITY).districts
        )
        topic = "urbanpulse/sindangraja/cikaso/air/aq-cikaso-01"
        for i, pm in enumerate((11.0, 22.0, 33.0)):
            doc = {"dateObserved": T0_NS / 1e9 + i, "pm25": pm}
            _feed(pipeline, [(topic, json.dumps(doc).encode())])
        assert server.tick() is not None
        assert server.tick() is None  # nothing new: nothing sent
        kind, upd = await _read_event(reader)
        assert kind == "update"
        assert upd["live"]["id"] == ["aq-cikaso-01"]  # once, newest value
        assert upd["live"]["values"]["pm25"] == [33.0]
        assert upd["static"]["id"] == []  # nothing new to place on the map
        clock.advance(LiveOptions().dead_after_s + 1)
        doc = json.loads((await _get(port, "/api/sensors/aq-cikaso-01"))[2])
        assert doc["dead"] is True
        writer.close()

    _serve(server, body)


def test_slow_stream_client_is_dropped_not_buffered() -> None:
    pipeline, server, _, _ = _setup(sse_max_queued=2)

    async def body(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await _read_event(reader)
        (client,) = server._clients
        for i in range(4):  # no await between ticks: the client cannot drain
            pipeline.bus.publish([_event("start", Severity.WARNING, f"s{i}")])
            server.tick()
        assert client.dropped
        assert len(client.queue) == 2
        assert server.sse_dropped_clients >= 1
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest.count(b"event: update") == 2  # what was queued, then closed
        writer.close()

    _serve(server, body)


def test_registry_csv_and_geojson(tmp_path: Path) -> None:
    csv_path = tmp_path / "sensors.csv"
    csv_path.write_text(
        "id,kind,district,lat,lon,model,install_date\n"
        "aq-1,air,coblong,-6.89,107.61,SDS011+BME280,2025-03-01\n"
        "tc-1,traffic,coblong,-6.90,107.62,loop,\n"
    )
    d = load_sensor_directory(csv_path)
    assert sorted(d.sensors) == ["aq-1", "tc-1"]
    assert d.sensors["aq-1"].install_date is not None
    assert d.sensors["aq-1"].install_date.isoformat() == "2025-03-01"
    geo = tmp_path / "sensors.geojson"
    geo.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [107.61, -6.89]},
                        "properties": {"id": "aq-1", "kind": "air", "district": "coblong"},
                    },
                    {
                        "type": "Feature",
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[107.6, -6.9], [107.7, -6.9], [107.7, -6.8]]],
                        },
                        "properties": {"district": "coblong"},
                    },
                ],
            }
        )
    )
    g = load_sensor_directory(geo)
    assert (g.sensors["aq-1"].lat, g.sensors["aq-1"].lon) == (-6.89, 107.61)
    assert g.districts["coblong"].outline[0] == (-6.9, 107.6)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,kind,district,lat,lon\naq-1,bus,x,0,0\n")
    with pytest.raises(ConfigError, match="kind"):
        load_sensor_directory(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("id,kind,district,lat,lon\na,air,x,0,0\na,air,x,1,1\n")
    with pytest.raises(ConfigError, match="duplicate"):
        load_sensor_directory(dup)
    assert SensorDirectory.empty().sensors == {}


def test_malformed_and_oversized_requests_are_refused() -> None:
    _, server, _, _ = _setup()

    async def raw(data: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(data)
        await writer.drain()
        head = await reader.read()
        writer.close()
        return int(head.split(b" ")[1])

    async def body(port: int) -> None:
        assert await raw(b"GARBAGE\r\n\r\n") == 400
        assert await raw(b"GET / SPDY/3\r\n\r\n") == 400
        assert await raw(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n") == 431
        assert (
            await raw(b"POST /api/alerts/x/ack HTTP/1.1\r\nContent-Length: 999999\r\n\r\n") == 413
        )
        assert await raw(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n") == 400
        assert (await _get(port, "/healthz"))[0] == 200  # still serving

    _serve(server, body)
