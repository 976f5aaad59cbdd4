"""Writers against real servers (InfluxDB 1.6.7, VictoriaMetrics, InfluxDB 2.7 via Docker).

Tests marked ``integration`` use the session-scoped server fixtures of
``conftest.py``; the rest run against a scripted local HTTP server or fakes.
"""

from __future__ import annotations

import gzip
import math
import random
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import InfluxDB2Instance
from servers import (
    InfluxDB1Server,
    MosquittoServer,
    QuietHandler,
    VictoriaMetricsServer,
    free_port,
    http_server,
)

from outputs import (
    InfluxV1Options,
    InfluxV1Writer,
    InfluxV2Options,
    InfluxV2Writer,
    LineProtocolFileWriter,
    RetryingWriter,
    RetryPolicy,
    TagCache,
    encode_aggregates,
    encode_readings,
    parse_retry_after,
)
from urbanpulse import (
    Kind,
    Metric,
    OutputError,
    ReadingBatch,
    ReadingFlag,
    RetryableOutputError,
    SeriesKey,
    SeriesRegistry,
)

integration = pytest.mark.integration

T0 = 1_700_000_000_123_456_789  # ns; not a whole millisecond on purpose
R = "\ufffd"

#: (city as sent, city as every backend must read it back)
HOSTILE_CITIES: list[tuple[str, str]] = [
    ("plain", "plain"),
    ("two words", "two words"),
    ("a,b", "a,b"),
    ("k=v x=1", "k=v x=1"),
    ('say "hi"', 'say "hi"'),
    ("it's", "it's"),
    ("back\\slash", "back\\slash"),
    ("trailing\\", f"trailing{R}"),
    ("bs\\,comma", f"bs{R},comma"),
    ("dbl\\\\x", f"dbl{R}\\x"),
    ("new\nline", f"new{R}line"),
    ("tab\there", f"tab{R}here"),
    ("Zürich 東京 🚦", "Zürich 東京 🚦"),
    (b"caf\xe9".decode("utf-8", "surrogateescape"), f"caf{R}"),
    ("#not-a-comment", "#not-a-comment"),
    (" leading and trailing ", " leading and trailing "),
    ("pm25=1 2", "pm25=1 2"),
]


def _hostile_registry(sensor_prefix: str) -> SeriesRegistry:
    registry = SeriesRegistry()
    for i, (city, _) in enumerate(HOSTILE_CITIES):
        registry.resolve(SeriesKey(city, "dist rict,=", Kind.AIR, f"{sensor_prefix}-{i}"))
    registry.resolve(SeriesKey("Madrid", "Centro", Kind.TRAFFIC, f"{sensor_prefix}-tr", lane=3))
    return registry


def _hostile_batch(registry: SeriesRegistry) -> ReadingBatch:
    """Every air series: one message (pm25, pm10, temperature) at T0 + sid; traffic too."""
    n_air = len(registry) - 1
    sid: list[int] = []
    metric: list[int] = []
    ts: list[int] = []
    value: list[float] = []
    flags: list[int] = []
    for s in range(n_air):
        for m, v in ((Metric.PM25, 10.0 + s), (Metric.PM10, 20.25 + s), (Metric.TEMPERATURE, -3.5)):
            sid.append(s)
            metric.append(m)
            ts.append(T0 + s)
            value.append(v)
            flags.append(ReadingFlag.HUMID if s == 1 else 0)
    tr = n_air
    sid += [tr, tr, tr]
    metric += [Metric.INTENSITY, Metric.OCCUPANCY, Metric.AVERAGE_VEHICLE_SPEED]
    ts += [T0] * 3
    value += [42.0, math.nan, 51.5]
    flags += [0, 0, 0]
    return ReadingBatch(
        sid=np.array(sid, np.int32),
        metric=np.array(metric, np.uint8),
        ts_ns=np.array(ts, np.int64),
        value=np.array(value, np.float64),
        flags=np.array(flags, np.uint8),
    )


@dataclass(frozen=True)
class Aggs:
    window_ms: int
    sid: Any
    metric: Any
    start_ns: Any
    count: Any
    mean: Any
    min: Any
    max: Any
    std: Any
    first: Any
    last: Any


def _aggs_for(sids: list[int], start_ns: int) -> Aggs:
    n = len(sids)
    return Aggs(
        60_000,
        np.array(sids, np.int32),
        np.full(n, Metric.PM25, np.uint8),
        np.full(n, start_ns, np.int64),
        np.full(n, 3, np.int64),
        np.full(n, 12.5),
        np.full(n, 10.0),
        np.full(n, 15.0),
        np.full(n, math.nan),
        np.full(n, 10.0),
        np.full(n, 15.0),
    )


# =========================================================================== InfluxDB 1.6.7


def _rows(server: InfluxDB1Server, q: str, db: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for series in server.series(q, db):
        for values in series["values"]:
            out.append(dict(zip(series["columns"], values, strict=True)))
    return out


@integration
def test_v1_parser_accepts_every_point_with_hostile_tags(
    influxdb1: InfluxDB1Server, influx_db_name: str
) -> None:
    registry = _hostile_registry("h")
    tags = TagCache(registry)
    raw = encode_readings(_hostile_batch(registry), tags)
    aggs = encode_aggregates(_aggs_for(list(range(len(HOSTILE_CITIES))), T0 - 123_456_789), tags)
    writer = InfluxV1Writer(InfluxV1Options(url=influxdb1.url, database=influx_db_name))
    writer.write(raw.data + b"\n" + aggs.data)
    writer.close()

    values = _rows(influxdb1, 'SHOW TAG VALUES FROM "air" WITH KEY = "city"', influx_db_name)
    assert sorted(v["value"] for v in values) == sorted(expected for _, expected in HOSTILE_CITIES)

    rows = _rows(influxdb1, 'SELECT * FROM "air"', influx_db_name)
    assert len(rows) == len(HOSTILE_CITIES) == raw.points - 1
    by_sensor = {row["sensor_id"]: row for row in rows}
    for i, (_, expected_city) in enumerate(HOSTILE_CITIES):
        row = by_sensor[f"h-{i}"]
        assert row["city"] == expected_city
        assert row["district"] == "dist rict,="
        assert row["time"] == T0 + i  # exact ns
        assert row["pm25"] == 10.0 + i
        assert row["pm10"] == 20.25 + i
        assert row["temperature"] == -3.5
        assert row["flags"] == (int(ReadingFlag.HUMID) if i == 1 else None)

    (traffic,) = _rows(influxdb1, 'SELECT * FROM "traffic"', influx_db_name)
    assert traffic == {
        "time": T0,
        "averageVehicleSpeed": 51.5,
        "city": "Madrid",
        "district": "Centro",
        "intensity": 42.0,
        "lane": "3",
        "sensor_id": "h-tr",
    }

    agg_rows = _rows(influxdb1, 'SELECT * FROM "air_1m"', influx_db_name)
    assert len(agg_rows) == len(HOSTILE_CITIES)
    assert {r["time"] for r in agg_rows} == {T0 - 123_456_789}
    assert all(r["pm25_count"] == 3 for r in agg_rows)
    assert all(r.get("pm25_std") is None for r in agg_rows)
    keys = influxdb1.series('SHOW FIELD KEYS FROM "air_1m"', influx_db_name)[0]["values"]
    assert ["pm25_count", "integer"] in keys
    assert ["pm25_mean", "float"] in keys


@integration
def test_v1_same_series_and_time_overwrites(
    influxdb1: InfluxDB1Server, influx_db_name: str
) -> None:
    registry = SeriesRegistry()
    registry.resolve(SeriesKey("Oslo", "Sentrum", Kind.AIR, "o-1"))
    tags = TagCache(registry)
    writer = InfluxV1Writer(InfluxV1Options(url=influxdb1.url, database=influx_db_name, gzip=True))
    for value in (1.5, 2.5):
        batch = ReadingBatch(
            sid=np.array([0], np.int32),
            metric=np.array([Metric.PM25], np.uint8),
            ts_ns=np.array([T0], np.int64),
            value=np.array([value]),
        )
        writer.write(encode_readings(batch, tags).data)
    rows = _rows(influxdb1, 'SELECT * FROM "air"', influx_db_name)
    assert [(r["time"], r["pm25"]) for r in rows] == [(T0, 2.5)]


@integration
def test_v1_rejection_surfaces_server_text(influxdb1: InfluxDB1Server, influx_db_name: str) -> None:
    writer = InfluxV1Writer(InfluxV1Options(url=influxdb1.url, database=influx_db_name))
    writer.write(f"air,city=x pm25=1.5 {T0}".encode())

    with pytest.raises(OutputError, match="field type conflict") as conflict:
        writer.write(f'air,city=x pm25="text" {T0}'.encode())
    assert not isinstance(conflict.value, RetryableOutputError)
    assert conflict.value.status == 400

    with pytest.raises(OutputError, match="unable to parse") as bad:
        writer.write(b"air,city=x pm25=1.5,=2 1")
    assert bad.value.status == 400
    assert not isinstance(bad.value, RetryableOutputError)

    missing = InfluxV1Writer(InfluxV1Options(url=influxdb1.url, database="no_such_db"))
    with pytest.raises(OutputError, match="database not found") as nodb:
        missing.write(b"air,city=x pm25=1.5 1")
    assert nodb.value.status == 404


@integration
def test_v1_auth(influxdb1_auth: InfluxDB1Server) -> None:
    server = influxdb1_auth
    server.create_database("authdb")
    line = f"air,city=a pm25=1.0 {T0}".encode()
    for in_query in (False, True):
        InfluxV1Writer(
            InfluxV1Options(
                url=server.url,
                database="authdb",
                retention_policy="autogen",
                username=server.admin_user,
                password=server.admin_password,
                auth_in_query=in_query,
            )
        ).write(line)
    wrong = InfluxV1Writer(
        InfluxV1Options(url=server.url, database="authdb", username="admin", password="nope")
    )
    with pytest.raises(OutputError, match="authorization failed") as exc:
        wrong.write(line)
    assert exc.value.status == 401
    assert len(_rows(server, 'SELECT * FROM "air"', "authdb")) == 1


@integration
def test_file_writer_output_loads_into_influxdb1(
    influxdb1: InfluxDB1Server, influx_db_name: str, tmp_path: Path
) -> None:
    registry = _hostile_registry("f")
    tags = TagCache(registry)
    body = encode_readings(_hostile_batch(registry), tags)
    writer = LineProtocolFileWriter(tmp_path, rotate_bytes=1000)
    lines = body.data.split(b"\n")
    for start in range(0, len(lines), 3):
        writer.write(b"\n".join(lines[start : start + 3]))
    writer.close()
    assert len(writer.paths) > 1
    for path in writer.paths:  # what `curl --data-binary @file /write` does
        request = urllib.request.Request(
            f"{influxdb1.url}/write?db={influx_db_name}&precision=ns",
            data=path.read_bytes(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
    rows = _rows(influxdb1, 'SELECT count("pm25") FROM "air"', influx_db_name)
    assert rows[0]["count"] == len(HOSTILE_CITIES)


# =========================================================================== VictoriaMetrics


def _vm_series(vm: VictoriaMetricsServer, match: str) -> dict[tuple[str, str], dict[str, Any]]:
    vm.force_flush()
    return {(s["metric"]["__name__"], s["metric"]["sensor_id"]): s for s in vm.export(match)}


@integration
@pytest.mark.parametrize("use_gzip", [False, True])
def test_v2_writer_to_victoria_metrics(
    victoria_metrics: VictoriaMetricsServer, use_gzip: bool
) -> None:
    prefix = f"vm{uuid.uuid4().hex[:8]}"
    registry = _hostile_registry(prefix)
    tags = TagCache(registry)
    writer = InfluxV2Writer(
        InfluxV2Options(
            url=victoria_metrics.write_url,
            org="ignored",
            bucket="urbanpulse",
            token="ignored",
            timeout_s=5,
            gzip=use_gzip,
        )
    )
    raw = encode_readings(_hostile_batch(registry), tags)
    agg = encode_aggregates(_aggs_for([0, 1], T0 - 123_456_789), tags)
    writer.write(raw.data)
    writer.write(agg.data)
    writer.close()

    series = _vm_series(victoria_metrics, f'{{sensor_id=~"{prefix}-.*"}}')
    for i, (_, expected_city) in enumerate(HOSTILE_CITIES):
        pm25 = series[("air_pm25", f"{prefix}-{i}")]
        assert pm25["metric"]["city"] == expected_city
        assert pm25["metric"]["district"] == "dist rict,="
        assert pm25["values"] == [10.0 + i]
        assert pm25["timestamps"] == [(T0 + i) // 1_000_000]  # VM keeps milliseconds
    assert series[("air_flags", f"{prefix}-1")]["values"] == [float(ReadingFlag.HUMID)]
    assert ("air_flags", f"{prefix}-0") not in series
    traffic = series[("traffic_intensity", f"{prefix}-tr")]
    assert traffic["metric"]["lane"] == "3"
    assert ("traffic_occupancy", f"{prefix}-tr") not in series  # NaN never written
    count = series[("air_1m_pm25_count", f"{prefix}-0")]
    assert count["values"] == [3.0]
    assert count["timestamps"] == [(T0 - 123_456_789) // 1_000_000]
    assert ("air_1m_pm25_std", f"{prefix}-0") not in series


@integration
def test_v1_writer_to_victoria_metrics(victoria_metrics: VictoriaMetricsServer) -> None:
    prefix = f"v1{uuid.uuid4().hex[:8]}"
    writer = InfluxV1Writer(
        InfluxV1Options(url=victoria_metrics.write_url, database="city_db", gzip=True)
    )
    writer.write(f"air,sensor_id={prefix} pm25=7.25 {T0}".encode())
    series = _vm_series(victoria_metrics, f'{{sensor_id="{prefix}"}}')
    sample = series[("air_pm25", prefix)]
    assert sample["metric"]["db"] == "city_db"
    assert sample["values"] == [7.25]


# =========================================================================== failures and retries


@integration
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_connection_refused_is_retryable(version: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    writer = (
        InfluxV1Writer(InfluxV1Options(url=url, database="db", timeout_s=2))
        if version == "v1"
        else InfluxV2Writer(InfluxV2Options(url=url, org="o", bucket="b", timeout_s=2))
    )
    with pytest.raises(RetryableOutputError, match="Connection refused") as exc:
        writer.write(b"air,city=x pm25=1.0 1")
    assert exc.value.status is None
    writer.close()


@integration
def test_retrying_writer_recovers_when_server_comes_back(tmp_path: Path) -> None:
    server = VictoriaMetricsServer(tmp_path / "vm", port=free_port())  # not started yet
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:  # the outage lasts two attempts
            server.start()

    writer = RetryingWriter(
        InfluxV2Writer(InfluxV2Options(url=server.write_url, org="o", bucket="b", timeout_s=5)),
        RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=4.0, jitter=False),
        sleep=sleep,
    )
    try:
        writer.write(f"air,sensor_id=back pm25=3.5 {T0}".encode())
        assert slept == [1.0, 2.0]
        assert writer.retries == 2
        server.force_flush()
        (sample,) = server.export('{sensor_id="back"}')
        assert sample["values"] == [3.5]
    finally:
        writer.close()
        server.stop()


# --------------------------------------------------------------------------- scripted HTTP server


@dataclass
class Scripted:
    """Replies from a list of (status, headers, body); records request paths and bodies."""

    replies: list[tuple[int, dict[str, str], bytes]]
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    state = Scripted(replies=[])

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib handler's name
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            state.requests.append(
                (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            status, headers, reply = state.replies.pop(0) if state.replies else (204, {}, b"")
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    with http_server(Handler) as server:
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield state


def _writers(url: str) -> list[InfluxV1Writer | InfluxV2Writer]:
    return [
        InfluxV1Writer(InfluxV1Options(url=url, database="db", username="u", password="p")),
        InfluxV2Writer(InfluxV2Options(url=url, org="o", bucket="b", token="tok", gzip=True)),
    ]


def test_status_translation(scripted: Scripted) -> None:
    for writer in _writers(scripted.url):
        scripted.replies[:] = [
            (429, {"Retry-After": "7"}, b'{"code":"too many requests","message":"slow down"}'),
            (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b""),
            (500, {}, b'{"error":"engine: cache-max-memory-size exceeded"}'),
            (400, {}, b'{"code":"invalid","message":"unable to parse \'x\': missing fields"}'),
            (413, {}, b'{"error":"Request Entity Too Large"}'),
            (401, {"X-Influxdb-Error": "authorization failed"}, b""),
        ]
        with pytest.raises(RetryableOutputError, match="slow down") as e429:
            writer.write(b"m f=1 1")
        assert (e429.value.status, e429.value.retry_after_s) == (429, 7.0)
        with pytest.raises(RetryableOutputError) as e503:
            writer.write(b"m f=1 1")
        assert (e503.value.status, e503.value.retry_after_s) == (503, 0.0)  # date in the past
        with pytest.raises(RetryableOutputError, match="cache-max-memory-size") as e500:
            writer.write(b"m f=1 1")
        assert e500.value.retry_after_s is None
        for status, text in ((400, "missing fields"), (413, "Too Large"), (401, "authorization")):
            with pytest.raises(OutputError, match=text) as exc:
                writer.write(b"m f=1 1")
            assert exc.value.status == status
            assert not isinstance(exc.value, RetryableOutputError)
        writer.close()

    v1_path, v1_headers, v1_body = scripted.requests[0]
    assert v1_path == "/write?db=db&precision=ns"
    assert v1_headers["authorization"].startswith("Basic ")
    assert v1_body == b"m f=1 1"
    v2_path, v2_headers, v2_body = scripted.requests[6]
    assert v2_path.startswith("/api/v2/write?")
    assert "precision=ns" in v2_path
    assert "bucket=b" in v2_path
    assert v2_headers["authorization"] == "Token tok"
    assert v2_headers["content-encoding"] == "gzip"
    assert v2_body == b"m f=1 1"


def test_empty_body_is_not_sent(scripted: Scripted) -> None:
    for writer in _writers(scripted.url):
        writer.write(b"")
    assert scripted.requests == []


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    now = 1_445_412_470.0  # 2015-10-21 07:27:50 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=now) == 10.0


# --------------------------------------------------------------------------- RetryingWriter (fakes)


class FlakyWriter:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0
        self.written: list[bytes] = []
        self.closed = False

    def write(self, lines: bytes) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.written.append(lines)

    def close(self) -> None:
        self.closed = True


def test_retrying_writer_backoff_is_capped_and_honours_retry_after() -> None:
    errors: list[Exception] = [RetryableOutputError("down") for _ in range(6)]
    errors.insert(2, RetryableOutputError("429", status=429, retry_after_s=30.0))
    inner = FlakyWriter(errors)
    slept: list[float] = []
    writer = RetryingWriter(
        inner,
        RetryPolicy(max_attempts=None, base_delay_s=0.5, max_delay_s=4.0, jitter=False),
        sleep=slept.append,
    )
    writer.write(b"x")
    assert slept == [0.5, 1.0, 30.0, 4.0, 4.0, 4.0, 4.0]
    assert inner.written == [b"x"]
    writer.close()
    assert inner.closed


def test_retrying_writer_full_jitter_stays_below_the_cap() -> None:
    inner = FlakyWriter([RetryableOutputError("down") for _ in range(40)])
    slept: list[float] = []
    writer = RetryingWriter(
        inner,
        RetryPolicy(max_attempts=None, base_delay_s=0.1, max_delay_s=2.0),
        sleep=slept.append,
        rng=random.Random(7),
    )
    writer.write(b"x")
    caps = [min(2.0, 0.1 * 2**k) for k in range(40)]
    assert all(0.0 <= s <= c for s, c in zip(slept, caps, strict=True))
    assert len(set(slept)) == 40  # jittered


def test_retrying_writer_gives_up_after_max_attempts() -> None:
    inner = FlakyWriter([RetryableOutputError(f"e{i}") for i in range(5)])
    slept: list[float] = []
    writer = RetryingWriter(
        inner, RetryPolicy(max_attempts=3, base_delay_s=0.0), sleep=slept.append
    )
    with pytest.raises(RetryableOutputError, match="e2"):
        writer.write(b"x")
    assert inner.calls == 3
    assert len(slept) == 2


def test_retrying_writer_does_not_retry_permanent_errors() -> None:
    inner = FlakyWriter([OutputError("bad line", status=400)])
    slept: list[float] = []
    writer = RetryingWriter(inner, RetryPolicy(max_attempts=None), sleep=slept.append)
    with pytest.raises(OutputError, match="bad line"):
        writer.write(b"x")
    assert (inner.calls, slept) == (1, [])


def test_retry_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# --------------------------------------------------------------------------- file writer


def test_file_writer_rotates_and_continues_numbering(tmp_path: Path) -> None:
    writer = LineProtocolFileWriter(tmp_path, rotate_bytes=20)
    writer.write(b"m f=1 1")  # 8 bytes with the newline
    writer.write(b"m f=2 2\n")  # 16
    writer.write(b"m f=3 3")  # would be 24 > 20: next file
    writer.write(b"m,tag=long_enough_for_its_own_file f=4 4")  # oversized: own file, whole
    writer.write(b"")
    writer.close()
    assert [p.name for p in writer.paths] == [
        "urbanpulse-000001.lp",
        "urbanpulse-000002.lp",
        "urbanpulse-000003.lp",
    ]
    assert writer.paths[0].read_bytes() == b"m f=1 1\nm f=2 2\n"
    assert writer.paths[1].read_bytes() == b"m f=3 3\n"
    with pytest.raises(OutputError, match="closed"):
        writer.write(b"m f=5 5")

    again = LineProtocolFileWriter(tmp_path)
    again.write(b"m f=6 6")
    again.close()
    assert [p.name for p in again.paths] == ["urbanpulse-000004.lp"]


# =========================================================================== server helpers

_MQTT_CONNECT = bytes([0x10, 13, 0, 4, *b"MQTT", 4, 2, 0, 30, 0, 1, ord("t")])


def _mqtt_connack(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(_MQTT_CONNECT)
        return sock.recv(4)


@integration
def test_mosquitto_fixture_accepts_mqtt_and_survives_restart(mosquitto: MosquittoServer) -> None:
    assert _mqtt_connack(mosquitto.port) == bytes([0x20, 2, 0, 0])  # CONNACK, accepted
    mosquitto.restart()
    assert _mqtt_connack(mosquitto.port) == bytes([0x20, 2, 0, 0])
    assert (mosquitto.data_dir / "mosquitto.log").exists()


# =========================================================================== InfluxDB 2.7 (Docker)


@integration
@pytest.mark.docker
def test_v2_writer_to_influxdb2(influxdb2: InfluxDB2Instance) -> None:
    from influxdb_client.client.influxdb_client import InfluxDBClient

    registry = _hostile_registry("i2")
    tags = TagCache(registry)
    writer = InfluxV2Writer(
        InfluxV2Options(
            url=influxdb2.url, org=influxdb2.org, bucket=influxdb2.bucket, token=influxdb2.token
        )
    )
    raw = encode_readings(_hostile_batch(registry), tags)
    writer.write(raw.data)
    writer.close()
    with InfluxDBClient(url=influxdb2.url, token=influxdb2.token, org=influxdb2.org) as client:
        tables = client.query_api().query(
            f'from(bucket: "{influxdb2.bucket}") |> range(start: 0) '
            '|> filter(fn: (r) => r._measurement == "air" and r._field == "pm25")'
        )
        records = [rec for table in tables for rec in table.records]
    assert len(records) == len(HOSTILE_CITIES)
    assert sorted(r.values["city"] for r in records) == sorted(c for _, c in HOSTILE_CITIES)
    with pytest.raises(OutputError) as exc:
        InfluxV2Writer(
            InfluxV2Options(
                url=influxdb2.url, org=influxdb2.org, bucket="nope", token=influxdb2.token
            )
        ).write(raw.data)
    assert exc.value.status == 404
