"""End to end on real servers: simulator -> Mosquitto -> pipeline -> storage.

Two pipelines subscribe to the same broker: one writes to VictoriaMetrics through
the InfluxDB v2 write API (influxdb-client), the other to InfluxDB 1.6.7 through
the 1.x /write API. Both must store every published reading exactly (count,
values, timestamps), and every window the watermark closed must equal the one
computed offline from the published payloads (tests/reference.py).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from reference import (
    AIR_FIELDS,
    TRAFFIC_FIELDS,
    Reading,
    WindowStats,
    expected_readings,
    expected_windows,
    window_label,
)
from servers import InfluxDB1Server, MosquittoServer, VictoriaMetricsServer

from ingest._mqtt import MqttClient, MqttOptions
from outputs._influx import (
    InfluxV1Options,
    InfluxV1Writer,
    InfluxV2Options,
    InfluxV2Writer,
    LineWriter,
)
from processors._windows import WindowSpec
from sim._runner import SimOptions, Simulator
from urbanpulse._app import MqttPublisher
from urbanpulse._clock import ManualClock
from urbanpulse._pipeline import Pipeline, PipelineOptions

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
N_MESSAGES = 3000
GRACE_MS = 10_000
IDLE_MS = 300_000
WIDTHS_MS = (60_000, 900_000)
START_NS = (time.time_ns() - 6 * 3600 * 10**9) // (900 * 10**9) * (900 * 10**9)


def _messages(city: str) -> list[tuple[str, bytes]]:
    sim = Simulator(
        SimOptions(seed=11, n_air=30, n_traffic=10, start_ns=START_NS), ManualClock(START_NS)
    )
    msgs = sim.messages(N_MESSAGES)
    assert len(msgs) == N_MESSAGES
    return [(t.replace("/bandung/", f"/{city}/", 1), p) for t, p in msgs]


def _pipeline(writer: LineWriter, port: int) -> Pipeline:
    options = PipelineOptions(
        subscribe_qos=1,
        windows=tuple(
            WindowSpec(window_ms=w, grace_ms=GRACE_MS, idle_ms=IDLE_MS) for w in WIDTHS_MS
        ),
        stats_interval_s=3600,
    )
    pipeline = Pipeline(options, writer=writer)
    pipeline.attach_mqtt(
        MqttClient(MqttOptions(port=port, protocol="5"), subscriptions=pipeline.subscription)
    )
    return pipeline


async def _run_all(pipelines: list[Pipeline], port: int, msgs: list[tuple[str, bytes]]) -> None:
    tasks = [asyncio.create_task(p.run()) for p in pipelines]
    publisher = MqttClient(MqttOptions(port=port))
    pub_task = asyncio.create_task(publisher.run())
    try:
        for p in pipelines:
            assert p.mqtt is not None
            await p.mqtt.wait_connected(10)
        await publisher.wait_connected(10)
        await asyncio.sleep(0.3)  # SUBACKs
        out = MqttPublisher(publisher)
        for topic, payload in msgs:
            await out.publish(topic, payload, qos=1)
        await out.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(p.buffer.received >= len(msgs) for p in pipelines):
                break
            await asyncio.sleep(0.05)
    finally:
        await publisher.stop()
        await pub_task
        for p in pipelines:
            p.request_stop()
        await asyncio.gather(*tasks)


@pytest.fixture(scope="module")
def e2e_run(
    mosquitto: MosquittoServer,
    victoria_metrics: VictoriaMetricsServer,
    influxdb1: InfluxDB1Server,
) -> dict[str, Any]:
    city = f"e2e-{uuid.uuid4().hex[:8]}"
    db = f"e2e_{city[4:]}"
    influxdb1.create_database(db)
    msgs = _messages(city)
    vm_pipe = _pipeline(
        InfluxV2Writer(InfluxV2Options(url=victoria_metrics.url, org="city", bucket="up")),
        mosquitto.port,
    )
    influx_pipe = _pipeline(
        InfluxV1Writer(InfluxV1Options(url=influxdb1.url, database=db)), mosquitto.port
    )
    asyncio.run(_run_all([vm_pipe, influx_pipe], mosquitto.port, msgs))
    victoria_metrics.force_flush()
    readings = expected_readings(msgs)
    return {
        "city": city,
        "db": db,
        "msgs": msgs,
        "readings": readings,
        "pipelines": {"vm": vm_pipe, "influx1": influx_pipe},
    }


def test_every_message_was_received_and_decoded(e2e_run: dict[str, Any]) -> None:
    for name, p in e2e_run["pipelines"].items():
        stats = p.snapshot_stats()
        assert stats["received"] == N_MESSAGES, name
        assert stats["messages_ok"] == N_MESSAGES, (name, stats["dead_letters"])
        assert stats["readings"] == len(e2e_run["readings"]), name
        assert stats["late_readings"] == 0, name
        assert stats["points_rejected"] == 0, name
        assert stats["pending_points"] == 0, name


def _raw_key(r: Reading) -> tuple[str, str, int, str, int]:
    return (r.kind, r.sensor_id, r.lane, r.field, r.ts_ns)


def test_victoria_metrics_stores_every_reading_exactly(
    e2e_run: dict[str, Any], victoria_metrics: VictoriaMetricsServer
) -> None:
    names = "|".join([f"air_{f}" for f in AIR_FIELDS] + [f"traffic_{f}" for f in TRAFFIC_FIELDS])
    rows = victoria_metrics.export(f'{{__name__=~"{names}",city="{e2e_run["city"]}"}}')
    stored: dict[tuple[str, str, int, str, int], float] = {}
    for row in rows:
        metric = row["metric"]
        kind, _, field = metric["__name__"].partition("_")
        lane = int(metric.get("lane", 0))
        for value, ts_ms in zip(row["values"], row["timestamps"], strict=True):
            key = (kind, metric["sensor_id"], lane, field, ts_ms)
            assert key not in stored, f"duplicate sample {key}"
            stored[key] = value
    expected = {
        (r.kind, r.sensor_id, r.lane, r.field, r.ts_ns // 1_000_000): r.value
        for r in e2e_run["readings"]
    }
    assert len(stored) == len(expected)
    assert stored == expected


def _influx_rows(server: InfluxDB1Server, db: str, measurement: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for series in server.series(f'SELECT * FROM "{measurement}"', db):
        cols = series["columns"]
        out.extend(dict(zip(cols, values, strict=True)) for values in series["values"])
    return out


def test_influxdb1_stores_every_reading_exactly(
    e2e_run: dict[str, Any], influxdb1: InfluxDB1Server
) -> None:
    stored: dict[tuple[str, str, int, str, int], float] = {}
    for kind, fields in (("air", AIR_FIELDS), ("traffic", TRAFFIC_FIELDS)):
        for row in _influx_rows(influxdb1, e2e_run["db"], kind):
            assert row["city"] == e2e_run["city"]
            lane = int(row.get("lane") or 0)
            for field in fields:
                if row.get(field) is not None:
                    stored[(kind, row["sensor_id"], lane, field, row["time"])] = row[field]
    expected = {_raw_key(r): r.value for r in e2e_run["readings"]}
    assert len(stored) == len(expected)
    assert stored == expected


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _check_window(got: Callable[[str], Any], field: str, want: WindowStats) -> None:
    assert got(f"{field}_count") == want.count
    assert _close(got(f"{field}_mean"), want.mean), (field, got(f"{field}_mean"), want.mean)
    assert got(f"{field}_min") == want.min
    assert got(f"{field}_max") == want.max
    assert got(f"{field}_first") == want.first
    assert got(f"{field}_last") == want.last
    if math.isnan(want.std):
        assert got(f"{field}_std") is None
    else:
        assert _close(got(f"{field}_std"), want.std)


@pytest.mark.parametrize("window_ms", WIDTHS_MS)
def test_influxdb1_closed_windows_equal_offline(
    e2e_run: dict[str, Any], influxdb1: InfluxDB1Server, window_ms: int
) -> None:
    want = expected_windows(
        e2e_run["readings"], window_ms=window_ms, grace_ms=GRACE_MS, idle_ms=IDLE_MS
    )
    assert want, "the scenario must close some windows"
    got: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for kind in ("air", "traffic"):
        for row in _influx_rows(influxdb1, e2e_run["db"], f"{kind}_{window_label(window_ms)}"):
            got[(kind, row["sensor_id"], int(row.get("lane") or 0), row["time"])] = row
    assert set(got) == set(want)
    for key, fields in want.items():
        row = got[key]
        for field, stats in fields.items():
            try:
                _check_window(row.get, field, stats)
            except AssertionError as exc:
                raise AssertionError(f"{key} {field}: stored {row}, expected {stats}") from exc


def test_victoria_metrics_closed_windows_equal_offline(
    e2e_run: dict[str, Any], victoria_metrics: VictoriaMetricsServer
) -> None:
    window_ms = WIDTHS_MS[0]
    label = window_label(window_ms)
    want = expected_windows(
        e2e_run["readings"], window_ms=window_ms, grace_ms=GRACE_MS, idle_ms=IDLE_MS
    )
    rows = victoria_metrics.export(
        f'{{__name__=~"(air|traffic)_{label}_.*",city="{e2e_run["city"]}"}}'
    )
    got: dict[tuple[str, str, int, int], dict[str, float]] = {}
    for row in rows:
        metric = row["metric"]
        kind, _, rest = metric["__name__"].partition("_")
        field_stat = rest.removeprefix(f"{label}_")
        lane = int(metric.get("lane", 0))
        for value, ts_ms in zip(row["values"], row["timestamps"], strict=True):
            key = (kind, metric["sensor_id"], lane, ts_ms * 1_000_000)
            got.setdefault(key, {})[field_stat] = value
    assert set(got) == set(want)
    for key, fields in want.items():
        for field, stats in fields.items():
            _check_window(got[key].get, field, stats)


def test_influxdb2_stores_every_reading_exactly(mosquitto: MosquittoServer, influxdb2: Any) -> None:
    """The same end-to-end path against InfluxDB 2.7 (testcontainers; skipped without
    a Docker engine, with the reason stated by the fixture)."""
    from influxdb_client.client.influxdb_client import InfluxDBClient

    city = f"e2e2-{uuid.uuid4().hex[:8]}"
    msgs = _messages(city)
    pipe = _pipeline(
        InfluxV2Writer(
            InfluxV2Options(
                url=influxdb2.url, org=influxdb2.org, bucket=influxdb2.bucket, token=influxdb2.token
            )
        ),
        mosquitto.port,
    )
    asyncio.run(_run_all([pipe], mosquitto.port, msgs))
    expected = {_raw_key(r): r.value for r in expected_readings(msgs)}
    stored: dict[tuple[str, str, int, str, int], float] = {}
    with InfluxDBClient(url=influxdb2.url, token=influxdb2.token, org=influxdb2.org) as client:
        flux = (
            f'from(bucket: "{influxdb2.bucket}") |> range(start: 0) '
            f'|> filter(fn: (r) => (r._measurement == "air" or r._measurement == "traffic") '
            f'and r.city == "{city}")'
        )
        for table in client.query_api().query(flux):
            for rec in table.records:
                # datetime (microseconds: enough, the simulator sends milliseconds)
                ts_ns = (rec.get_time() - EPOCH) // timedelta(microseconds=1) * 1000
                key = (
                    rec.get_measurement(),
                    rec.values["sensor_id"],
                    int(rec.values.get("lane") or 0),
                    rec.get_field(),
                    ts_ns,
                )
                if rec.get_field() != "flags":
                    stored[key] = rec.get_value()
    assert stored == expected
