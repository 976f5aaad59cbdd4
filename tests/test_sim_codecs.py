"""The simulator's payload formats decode through ingest into the native readings.

For each ``SimOptions.payload_format`` the same seed's messages are decoded by
``NativeJsonDecoder`` with the rules of ``codec_rules_for`` and compared with
the native format's decoding: same series (sensor ids mapped by
``wire_sensor_ids``), same timestamps (airrohr: the receive time), same values
(SenML gases within the ppb rounding).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from ingest._codecs import CodecRule
from ingest._decode import DecodeOptions, DecodeResult, NativeJsonDecoder
from ingest._topics import TopicPattern
from sim import (
    PAYLOAD_FORMATS,
    PayloadFormat,
    Scenario,
    SimOptions,
    Simulator,
    codec_rules_for,
    codec_rules_toml,
    format_streams,
)
from urbanpulse import ConfigError, ManualClock
from urbanpulse._batch import SeriesKey, SeriesRegistry
from urbanpulse._schema import Kind, Metric, ReadingFlag

START = int(datetime(2025, 11, 23, 17, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
PATTERN = TopicPattern.compile("urbanpulse/{city}/{district}/{kind}/{sensor_id}")
LATENCY_NS = 1_500_000_000
GASES = {int(Metric.NO2), int(Metric.O3), int(Metric.CO), int(Metric.SO2)}
N_MESSAGES = 6_000

Msg = tuple[str, bytes]
#: (series key, metric, ts_ns) -> (value, flags)
Readings = dict[tuple[SeriesKey, int, int], tuple[float, int]]


def simulate(fmt: PayloadFormat, scenario: Scenario | None = None) -> Simulator:
    opts = SimOptions(seed=7, city="sindangraja", start_ns=START, payload_format=fmt)
    return Simulator(opts, ManualClock(), scenario=scenario)


def native_ts(msgs: Sequence[Msg]) -> list[int]:
    """Reading time of each message of a native run (from dateObserved, ms)."""
    return [round(json.loads(p)["dateObserved"] * 1000) * 1_000_000 for _, p in msgs]


def decode(
    sim: Simulator, msgs: Sequence[Msg], recv_ns: Sequence[int]
) -> tuple[Readings, DecodeResult]:
    rules = tuple(CodecRule(**r) for r in sim.codec_rules())
    registry = SeriesRegistry()
    decoder = NativeJsonDecoder(
        DecodeOptions(codecs=rules),
        pattern=PATTERN,
        registry=registry,
        clock=ManualClock(max(recv_ns)),
    )
    result = decoder.decode([t for t, _ in msgs], [p for _, p in msgs], list(recv_ns))
    assert [(d.topic, d.reason, d.detail) for d in result.dead] == []
    b = result.batch
    out: Readings = {}
    for s, m, t, v, f in zip(
        b.sid.tolist(),
        b.metric.tolist(),
        b.ts_ns.tolist(),
        b.value.tolist(),
        b.flags.tolist(),
        strict=True,
    ):
        out[(registry.key(s), m, t)] = (v, f)
    return out, result


@pytest.fixture(scope="module")
def native() -> tuple[list[Msg], list[int], Readings]:
    sim = simulate("native")
    msgs = sim.messages(N_MESSAGES)
    recv = [t + LATENCY_NS for t in native_ts(msgs)]
    readings, _ = decode(sim, msgs, recv)
    return msgs, recv, readings


@pytest.mark.parametrize("fmt", [f for f in PAYLOAD_FORMATS if f != "native"])
def test_every_format_decodes_to_the_native_readings(
    fmt: PayloadFormat, native: tuple[list[Msg], list[int], Readings]
) -> None:
    base_msgs, recv, base = native
    sim = simulate(fmt)
    msgs = sim.messages(N_MESSAGES)
    assert len(msgs) == len(base_msgs)
    got, result = decode(sim, msgs, recv)
    fleet = sim.fleet
    in_format = format_streams(fleet, fmt)
    wire = dict(zip(fleet.sensor_id, sim.wire_sensor_ids(), strict=True))
    by_native_topic = dict(zip(fleet.topics("urbanpulse"), in_format.tolist(), strict=True))
    # The format's messages use their own topics; the others are unchanged.
    n_format = 0
    for (topic, _), (base_topic, _) in zip(msgs, base_msgs, strict=True):
        if by_native_topic[base_topic]:
            n_format += 1
            assert not topic.startswith("urbanpulse/"), topic
        else:
            assert topic == base_topic
    assert n_format > 1000
    # The message of each native reading time, to find the airrohr receive time.
    recv_of = {
        (base_topic, t): r
        for (base_topic, _), t, r in zip(base_msgs, native_ts(base_msgs), recv, strict=True)
    }
    expected: Readings = {}
    for (key, metric, ts), (value, flags) in base.items():
        topic = f"urbanpulse/{key.city}/{key.district}/{key.kind.label}/{key.sensor_id}"
        mapped = SeriesKey(key.city, key.district, key.kind, wire[key.sensor_id], key.lane)
        if fmt == "airrohr" and by_native_topic[topic]:
            expected[(mapped, metric, recv_of[(topic, ts)])] = (
                value,
                int(ReadingFlag.RECEIVE_TIME),
            )
        else:
            expected[(mapped, metric, ts)] = (value, flags)
    assert got.keys() == expected.keys()
    off = 0
    for k, (value, flags) in expected.items():
        v, f = got[k]
        assert f == flags
        if fmt == "senml" and k[1] in GASES:
            # ppb written with 3 decimals: <= 0.0005 ppb x 2.62 ug/m3 per ppb.
            assert v == pytest.approx(value, abs=2e-3, rel=1e-6), k
            off += v != value
        else:
            assert v == value, k
    if fmt == "senml":
        assert off > 0  # the gases really went through ppb
    if fmt == "ttn":
        assert len(result.radio) == n_format
        assert np.all(result.radio.rssi_dbm < -60)
        assert np.all(result.radio.gateways == 1)
    else:
        assert len(result.radio) == 0


def test_airrohr_keeps_reference_stations_native_and_ids_unique() -> None:
    sim = simulate("airrohr")
    fleet = sim.fleet
    used = format_streams(fleet, "airrohr")
    air = fleet.kind == Kind.AIR
    assert used.any()
    assert (air & ~used).any()  # reference stations stay native
    ids = sim.wire_sensor_ids()
    sent = [ids[i] for i in np.flatnonzero(used).tolist()]
    assert all(s.startswith("esp8266-") and s[8:].isdigit() for s in sent)
    assert len(set(sent)) == len(sent)
    assert [ids[i] for i in np.flatnonzero(~used).tolist()] == [
        fleet.sensor_id[i] for i in np.flatnonzero(~used).tolist()
    ]
    # The same seed gives the same chip numbers.
    assert simulate("airrohr").wire_sensor_ids() == ids
    # Ground truth names sensors as the pipeline will see them.
    i = int(np.flatnonzero(used)[0])
    power = Scenario.model_validate(
        {"faults": [{"kind": "power", "sensor_id": fleet.sensor_id[i], "start_s": 0,
                     "duration_s": 600}]}
    )  # fmt: skip
    (label,) = simulate("airrohr", power).labels
    assert label.sensor_id == ids[i]
    (label,) = simulate("native", power).labels
    assert label.sensor_id == fleet.sensor_id[i]


def test_ttn_time_is_the_networks_so_device_clock_skew_does_not_show() -> None:
    fleet = simulate("native").fleet
    sensor = next(fleet.sensor_id[i] for i in range(fleet.n_streams) if fleet.kind[i] == Kind.AIR)
    skew = Scenario.model_validate(
        {"faults": [{"kind": "clock_skew", "sensor_id": sensor, "start_s": 0,
                     "duration_s": 3600, "offset_s": 120}]}
    )  # fmt: skip
    native = simulate("native", skew).messages(2000)
    ttn = simulate("ttn", skew).messages(2000)
    seen = 0
    for (_, p), (topic, q) in zip(native, ttn, strict=True):
        if f"/devices/{sensor}/up" in topic:
            stamp = json.loads(p)["dateObserved"]
            received = datetime.fromisoformat(json.loads(q)["received_at"]).timestamp()
            assert received == pytest.approx(stamp - 120, abs=1e-3)
            seen += 1
    assert seen > 10


def test_ttn_battery_drops_during_a_power_fault() -> None:
    fleet = simulate("native").fleet
    sensor = next(
        fleet.sensor_id[i]
        for i in range(fleet.n_streams)
        if fleet.kind[i] == Kind.AIR and fleet.model[i] == 0
    )
    power = Scenario.model_validate(
        {"faults": [{"kind": "power", "sensor_id": sensor, "start_s": 1800,
                     "duration_s": 1800}]}
    )  # fmt: skip
    sim = simulate("ttn", power)
    (label,) = sim.labels
    weak: list[float] = []
    healthy: list[float] = []
    for topic, payload in sim.messages(8000):
        if f"/devices/{sensor}/up" not in topic:
            continue
        body: dict[str, Any] = json.loads(payload)
        t = round(datetime.fromisoformat(body["received_at"]).timestamp() * 1000) * 1_000_000
        volts = body["uplink_message"]["decoded_payload"]["battery"]
        (weak if label.start_ns <= t < label.end_ns else healthy).append(volts)
    assert len(weak) > 5
    assert len(healthy) > 5
    assert max(weak) < 3.5
    assert min(healthy) > 3.9


def test_codec_rules_and_options_are_checked() -> None:
    assert codec_rules_for("native", "bandung") == []
    with pytest.raises(ConfigError, match="districts"):
        codec_rules_for("ttn", "bandung")
    with pytest.raises(ConfigError, match="payload_format"):
        SimOptions(payload_format="csv")  # type: ignore[arg-type]
    (rule,) = codec_rules_for("airrohr", "bandung", ["dago"])
    assert rule == {
        "topic_filter": "airrohr/bandung/+",
        "codec": "airrohr",
        "topic_pattern": "airrohr/{city}/{district}",
        "tags": {"kind": "air"},
    }
    # Every rule compiles in ingest, and the TOML form reads back as the same rules.
    for fmt in PAYLOAD_FORMATS:
        dicts = codec_rules_for(fmt, "bandung", ["dago", "coblong"])
        toml_rules = tomllib.loads(codec_rules_toml(dicts)).get("ingest", {}).get("codecs", [])
        assert toml_rules == dicts
        rules = tuple(CodecRule(**r) for r in dicts)
        NativeJsonDecoder(
            DecodeOptions(codecs=rules),
            pattern=PATTERN,
            registry=SeriesRegistry(),
            clock=ManualClock(START),
        )
