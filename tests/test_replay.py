"""Replay of recorded CSV and line protocol: same readings back, paced by event time."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest._decode import DecodeOptions, NativeJsonDecoder
from ingest._topics import TopicPattern
from outputs._lineprotocol import TagCache, encode_readings
from sim import Recording, Replayer, SimOptions, Simulator, read_csv, read_line_protocol, run_replay
from urbanpulse import ConfigError, ManualClock, SeriesRegistry

START = int(datetime(2025, 11, 24, 6, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
AIR = ("pm25", "pm10", "no2", "o3", "co", "so2", "temperature", "relativeHumidity")
TRAFFIC = ("intensity", "occupancy", "averageVehicleSpeed")

Msg = tuple[str, bytes]


def recorded(n: int = 400) -> list[Msg]:
    opts = SimOptions(seed=5, n_air=12, n_traffic=6, start_ns=START)
    return Simulator(opts, ManualClock()).messages(n)


def canonical(messages: list[Msg]) -> list[tuple[str, float, int, dict[str, object]]]:
    """(topic, time, lane, fields) per message, sorted (ties between streams are unordered)."""
    out = []
    for topic, payload in messages:
        body = json.loads(payload)
        t = body.pop("dateObserved")
        lane = int(body.get("laneId", 0))
        out.append((topic, float(t), lane, body))
    return sorted(out, key=lambda r: (r[1], r[0], r[2]))


def write_csv(path: Path, messages: list[Msg], *, iso: bool) -> None:
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["sensor_id", "kind", "district", "city", "ts", "laneId", *AIR, *TRAFFIC])
        for topic, payload in messages:
            _, city, district, kind, sensor_id = topic.split("/")
            body = json.loads(payload)
            t = body["dateObserved"]
            ts = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") if iso else t
            lane = body.get("laneId", "")
            cells = [body.get(f, "") for f in (*AIR, *TRAFFIC)]
            w.writerow([sensor_id, kind, district, city, ts, lane, *cells])


@pytest.mark.parametrize("iso", [True, False])
def test_csv_round_trips_to_the_same_readings(tmp_path: Path, iso: bool) -> None:
    messages = recorded()
    path = tmp_path / "rec.csv"
    write_csv(path, messages, iso=iso)
    rec = read_csv(path)
    assert len(rec) == len(messages)
    replayed = Replayer(rec).messages()
    assert canonical(replayed) == canonical(messages)
    # In event-time order.
    times = [json.loads(p)["dateObserved"] for _, p in replayed]
    assert times == sorted(times)


def test_csv_formats_and_missing_cells(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(
        "sensor_id,kind,district,ts_ns,pm25,pm10,intensity,lane\n"
        f"aq-1,air,dago,{START + 2_000_000_000},17.25,,,\n"
        f"tc-1,traffic,dago,{START},,,12,2\n"
    )
    rec = read_csv(path, city="bdg")
    msgs = Replayer(rec, prefix="up").messages()
    assert [(t, json.loads(p)) for t, p in msgs] == [
        ("up/bdg/dago/traffic/tc-1", {"dateObserved": START / 1e9, "laneId": 2, "intensity": 12}),
        ("up/bdg/dago/air/aq-1", {"dateObserved": START / 1e9 + 2, "pm25": 17.25}),
    ]
    # intensity is written as an integer.
    assert msgs[0][1].endswith(b'"intensity":12}')


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sensor_id,kind,ts,pm25\na,air,0,1\n", "district"),
        ("sensor_id,kind,district,pm25\na,air,d,1\n", "time column"),
        ("sensor_id,kind,district,ts\na,air,d,0\n", "metric columns"),
        ("sensor_id,kind,district,ts,pm25\na,air,d,2025-11-24T06:00:00,1\n", "offset"),
        ("sensor_id,kind,district,ts,pm25\na,bus,d,0,1\n", "unknown sensor kind"),
        ("sensor_id,kind,district,ts,pm25\na,air,d,yesterday,1\n", r"x\.csv:2"),
        ("sensor_id,kind,district,ts,pm25\na/b,air,d,0,1\n", "topic segment"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_csv(path)


def to_line_protocol(messages: list[Msg]) -> bytes:
    """Decode and encode with the pipeline's own ingest and output code."""
    registry = SeriesRegistry()
    decoder = NativeJsonDecoder(
        DecodeOptions(),
        pattern=TopicPattern.compile("urbanpulse/{city}/{district}/{kind}/{sensor_id}"),
        registry=registry,
        clock=ManualClock(START + 3_600_000_000_000),
    )
    result = decoder.decode(
        [t for t, _ in messages], [p for _, p in messages], [START] * len(messages)
    )
    assert result.messages_ok == len(messages)
    return encode_readings(result.batch, TagCache(registry)).data


def test_line_protocol_round_trips_to_the_same_readings(tmp_path: Path) -> None:
    messages = recorded()
    body = to_line_protocol(messages)
    # Aggregates and comments in the same file are skipped, not replayed.
    extra = b"\n# comment\nair_1m,city=bandung,sensor_id=x pm25_mean=1.0 1\n"
    path = tmp_path / "rec.lp"
    path.write_bytes(body + extra)
    rec = read_line_protocol(path)
    assert rec.skipped == 1
    assert len(rec) == len(messages)
    assert canonical(Replayer(rec).messages()) == canonical(messages)


def test_line_protocol_escapes_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.lp"
    path.write_text(
        r"traffic,city=kota\ baru,district=a\,b,lane=2,sensor_id=tc\=1 "
        r'intensity=7.0,occupancy=0.25,flags=1i,note="a b" ' + f"{START}\n"
    )
    rec = read_line_protocol(path)
    key = rec.series[0]
    assert (key.city, key.district, key.sensor_id, key.lane) == ("kota baru", "a,b", "tc=1", 2)
    (topic, payload), *_ = Replayer(rec).messages()
    assert topic == "urbanpulse/kota baru/a,b/traffic/tc=1"
    assert json.loads(payload) == {
        "dateObserved": START / 1e9,
        "laneId": 2,
        "intensity": 7,
        "occupancy": 0.25,
    }
    path.write_text("air,city=c,district=d,sensor_id=s pm25=1.0\n")
    with pytest.raises(ConfigError, match=r"x\.lp:1"):
        read_line_protocol(path)


def test_shift_moves_every_timestamp(tmp_path: Path) -> None:
    messages = recorded(50)
    path = tmp_path / "rec.csv"
    write_csv(path, messages, iso=False)
    rec = read_csv(path)
    shifted = Replayer(rec, shift_ns=86_400_000_000_000).messages()
    a = [json.loads(p)["dateObserved"] for _, p in Replayer(rec).messages()]
    b = [json.loads(p)["dateObserved"] for _, p in shifted]
    assert [round(y - x, 3) for x, y in zip(a, b, strict=True)] == [86_400.0] * len(a)


class FakeTime:
    def __init__(self) -> None:
        self.clock = ManualClock(START)

    async def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)


class RecordingPublisher:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sent: list[tuple[str, bytes, float]] = []
        self.flushes = 0

    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        assert qos == 1
        self.sent.append((topic, payload, self.clock.monotonic_s()))

    async def flush(self) -> None:
        self.flushes += 1


def test_replay_is_paced_by_event_time(tmp_path: Path) -> None:
    messages = recorded(600)
    path = tmp_path / "rec.csv"
    write_csv(path, messages, iso=False)
    rec: Recording = read_csv(path)
    t = FakeTime()
    pub = RecordingPublisher(t.clock)
    stats = asyncio.run(run_replay(rec, pub, t.clock, speed=30.0, qos=1, sleep=t.sleep))
    assert stats.sent == len(pub.sent) == 600
    assert pub.flushes == 1
    first = min(json.loads(p)["dateObserved"] for _, p in messages)
    span = max(json.loads(p)["dateObserved"] for _, p in messages) - first
    assert stats.duration_s == pytest.approx(span / 30.0, abs=0.02)
    for _, payload, at in pub.sent:
        due = (json.loads(payload)["dateObserved"] - first) / 30.0
        assert due - 0.001 <= at <= due + 0.011
    assert canonical([(tp, p) for tp, p, _ in pub.sent]) == canonical(messages)
