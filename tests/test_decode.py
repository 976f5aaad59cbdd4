"""NativeJsonDecoder: raw MQTT micro-batches -> ReadingBatch columns + dead letters.

No test depends on wall time: every decoder reads a ManualClock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ingest._decode import NATIVE_REASONS, REASONS, DecodeOptions, DecodeResult, NativeJsonDecoder
from ingest._topics import TopicPattern
from urbanpulse._batch import DeadLetter, SeriesKey, SeriesRegistry
from urbanpulse._clock import ManualClock
from urbanpulse._schema import KIND_METRICS, METRIC_INFO, Kind, Metric, ReadingFlag

PATTERN = TopicPattern.compile("urbanpulse/{city}/{district}/{kind}/{sensor_id}")

BASE_S = 1_763_892_000  # 2025-11-23T10:00:00Z
BASE_NS = BASE_S * 1_000_000_000
NOW_NS = BASE_NS + 60 * 1_000_000_000  # the receive clock: one minute after BASE
RECV_NS = NOW_NS - 1_000_000_000  # message i is received at RECV_NS + i
DAY_S = 86_400

AIR = "urbanpulse/jakarta/south/air/aq-001"
AIR2 = "urbanpulse/jakarta/north/air/aq-002"
TRAFFIC = "urbanpulse/jakarta/south/traffic/tf-001"
TRAFFIC2 = "urbanpulse/bandung/coblong/traffic/tf-002"

Msg = tuple[str, bytes]
Row = tuple[SeriesKey, int, int, float, int]  # key, metric, ts_ns, value, flags


def js(obj: object) -> bytes:
    return json.dumps(obj).encode()


def make(
    registry: SeriesRegistry | None = None, *, clock: ManualClock | None = None, **options: Any
) -> tuple[NativeJsonDecoder, SeriesRegistry]:
    reg = SeriesRegistry() if registry is None else registry
    decoder = NativeJsonDecoder(
        DecodeOptions(**options),
        pattern=PATTERN,
        registry=reg,
        clock=ManualClock(NOW_NS) if clock is None else clock,
    )
    return decoder, reg


def check(
    result: DecodeResult,
    registry: SeriesRegistry,
    recv: Sequence[int],
    limits: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Invariants of every decode result (``limits``: the decoder's overrides)."""
    assert result.messages_ok + len(result.dead) == len(recv)
    assert 0 <= result.messages_ok <= len(recv)
    batch = result.batch
    assert batch.sid.dtype == np.int32
    assert batch.metric.dtype == np.uint8
    assert batch.ts_ns.dtype == np.int64
    assert batch.value.dtype == np.float64
    assert batch.flags.dtype == np.uint8
    n = len(batch)
    for column in (batch.sid, batch.metric, batch.ts_ns, batch.value, batch.flags):
        assert column.shape == (n,)
    assert np.all(np.isfinite(batch.value))
    assert np.all(batch.ts_ns >= 0)
    assert np.all((batch.flags == 0) | (batch.flags == ReadingFlag.RECEIVE_TIME))
    assert np.all((batch.sid >= 0) & (batch.sid < len(registry)))
    for sid, metric, value in zip(
        batch.sid.tolist(), batch.metric.tolist(), batch.value.tolist(), strict=True
    ):
        info = METRIC_INFO[Metric(metric)]
        assert info.kind is registry.key(sid).kind
        low, high = (limits or {}).get(info.field, (info.low, info.high))
        assert low <= value <= high
    dead_recv = [d.received_ns for d in result.dead]
    assert len(set(dead_recv)) == len(dead_recv), "a message was dead-lettered twice"
    assert set(dead_recv) <= set(recv)
    for d in result.dead:
        assert d.reason in REASONS
        assert isinstance(d.detail, str)  # may be empty, e.g. dateObserved ""


def run(
    decoder: NativeJsonDecoder,
    registry: SeriesRegistry,
    msgs: Sequence[Msg],
    recv: Sequence[int] | None = None,
    *,
    limits: Mapping[str, tuple[float, float]] | None = None,
) -> DecodeResult:
    recv_ns = [RECV_NS + i for i in range(len(msgs))] if recv is None else list(recv)
    result = decoder.decode([t for t, _ in msgs], [p for _, p in msgs], recv_ns)
    check(result, registry, recv_ns, limits)
    return result


def rows(result: DecodeResult, registry: SeriesRegistry) -> list[Row]:
    b = result.batch
    return [
        (registry.key(s), m, t, v, f)
        for s, m, t, v, f in zip(
            b.sid.tolist(),
            b.metric.tolist(),
            b.ts_ns.tolist(),
            b.value.tolist(),
            b.flags.tolist(),
            strict=True,
        )
    ]


def reasons_by_recv(result: DecodeResult) -> dict[int, str]:
    return {d.received_ns: d.reason for d in result.dead}


def decode_one(msg: Msg, **options: Any) -> DecodeResult:
    decoder, registry = make(**options)
    return run(decoder, registry, [msg])


def keys_of(registry: SeriesRegistry) -> list[SeriesKey]:
    return [registry.key(sid) for sid in range(len(registry))]


def key(topic: str, lane: int = 0) -> SeriesKey:
    info = PATTERN.parse(topic)
    return SeriesKey(info.city, info.district, info.kind, info.sensor_id, lane)


# -- valid payloads -> exact columns ---------------------------------------------------------


def test_air_payload_becomes_exact_columns() -> None:
    decoder, registry = make()
    payload = {
        "relativeHumidity": 80.5,
        "pm25": 35.2,
        "temperature": 29.1,
        "dateObserved": BASE_S,
        "so2": 4,
        "pm10": 51.0,
        "co": 400.25,
        "no2": 20.0,
        "o3": 60.5,
    }
    result = run(decoder, registry, [(AIR, js(payload))])
    assert result.messages_ok == 1
    assert result.dead == []
    b = result.batch
    np.testing.assert_array_equal(b.sid, np.zeros(8, np.int32))
    np.testing.assert_array_equal(b.metric, np.arange(8, dtype=np.uint8))
    np.testing.assert_array_equal(b.ts_ns, np.full(8, BASE_NS, np.int64))
    np.testing.assert_array_equal(
        b.value, np.array([35.2, 51.0, 20.0, 60.5, 400.25, 4.0, 29.1, 80.5])
    )
    np.testing.assert_array_equal(b.flags, np.zeros(8, np.uint8))
    assert keys_of(registry) == [SeriesKey("jakarta", "south", Kind.AIR, "aq-001", 0)]


def test_traffic_payload_becomes_exact_columns() -> None:
    decoder, registry = make()
    payload = {
        "laneId": 2,
        "averageVehicleSpeed": 42.5,
        "occupancy": 0.35,
        "intensity": 120,
        "dateObserved": "2025-11-23T10:00:00Z",
    }
    result = run(decoder, registry, [(TRAFFIC, js(payload))])
    assert result.messages_ok == 1
    b = result.batch
    np.testing.assert_array_equal(b.sid, np.zeros(3, np.int32))
    np.testing.assert_array_equal(
        b.metric,
        np.array(
            [Metric.INTENSITY, Metric.OCCUPANCY, Metric.AVERAGE_VEHICLE_SPEED], dtype=np.uint8
        ),
    )
    np.testing.assert_array_equal(b.ts_ns, np.full(3, BASE_NS, np.int64))
    np.testing.assert_array_equal(b.value, np.array([120.0, 0.35, 42.5]))
    np.testing.assert_array_equal(b.flags, np.zeros(3, np.uint8))
    assert keys_of(registry) == [SeriesKey("jakarta", "south", Kind.TRAFFIC, "tf-001", 2)]


def test_partial_payloads_only_yield_present_metrics() -> None:
    decoder, registry = make()
    msgs = [
        (AIR, js({"dateObserved": BASE_S, "temperature": 30.0})),
        (AIR2, js({"dateObserved": BASE_S + 1, "pm10": 20.0, "o3": 1.5})),
        (AIR, js({"dateObserved": BASE_S + 2, "relativeHumidity": 60.0, "pm25": 10.0})),
    ]
    result = run(decoder, registry, msgs)
    assert result.messages_ok == 3
    b = result.batch
    np.testing.assert_array_equal(b.sid, np.array([0, 1, 1, 0, 0], np.int32))
    np.testing.assert_array_equal(b.metric, np.array([6, 1, 3, 0, 7], np.uint8))
    np.testing.assert_array_equal(
        b.ts_ns, np.array([BASE_NS, *[BASE_NS + 10**9] * 2, *[BASE_NS + 2 * 10**9] * 2])
    )
    np.testing.assert_array_equal(b.value, np.array([30.0, 20.0, 1.5, 10.0, 60.0]))
    assert keys_of(registry) == [key(AIR), key(AIR2)]


def test_sids_are_dense_per_topic_and_lane() -> None:
    decoder, registry = make()
    topics = [TRAFFIC, TRAFFIC2, TRAFFIC, TRAFFIC, TRAFFIC2, TRAFFIC, TRAFFIC]
    lanes: list[int | None] = [1, 1, 2, 1, None, None, 64]
    msgs = [
        (t, js({"intensity": 10.0 + i} | ({} if lane is None else {"laneId": lane})))
        for i, (t, lane) in enumerate(zip(topics, lanes, strict=True))
    ]
    result = run(decoder, registry, msgs)
    assert result.messages_ok == 7
    # one row per message, in message order within a kind; ids by first appearance
    np.testing.assert_array_equal(result.batch.sid, np.array([0, 1, 2, 0, 3, 4, 5], np.int32))
    np.testing.assert_array_equal(result.batch.value, 10.0 + np.arange(7))
    assert keys_of(registry) == [
        key(TRAFFIC, 1),
        key(TRAFFIC2, 1),
        key(TRAFFIC, 2),
        key(TRAFFIC2, 0),
        key(TRAFFIC, 0),
        key(TRAFFIC, 64),
    ]


def test_sids_persist_across_batches_and_decoders_sharing_a_registry() -> None:
    decoder, registry = make()
    run(decoder, registry, [(AIR, js({"pm25": 1.0})), (AIR2, js({"pm25": 2.0}))])
    second = run(decoder, registry, [(AIR2, js({"pm25": 3.0})), (AIR, js({"pm25": 4.0}))])
    np.testing.assert_array_equal(second.batch.sid, np.array([1, 0], np.int32))
    other, _ = make(registry)
    third = run(other, registry, [(TRAFFIC, js({"intensity": 1})), (AIR2, js({"pm25": 5.0}))])
    assert rows(third, registry)[0][0] == key(AIR2)
    assert third.batch.sid.tolist() == [1, 2]
    assert len(registry) == 3


def test_same_series_key_from_different_topics_shares_one_sid() -> None:
    pattern = TopicPattern.compile("{_}/{city}/{district}/{kind}/{sensor_id}")
    registry = SeriesRegistry()
    decoder = NativeJsonDecoder(
        DecodeOptions(), pattern=pattern, registry=registry, clock=ManualClock(NOW_NS)
    )
    msgs = [
        ("gw-1/jkt/south/air/s1", js({"pm25": 1.0})),
        ("gw-2/jkt/south/air/s1", js({"pm25": 2.0})),
    ]
    result = run(decoder, registry, msgs)
    assert result.batch.sid.tolist() == [0, 0]
    assert keys_of(registry) == [SeriesKey("jkt", "south", Kind.AIR, "s1", 0)]


def test_message_rows_are_contiguous_in_increasing_metric_order() -> None:
    rng = random.Random(7)
    decoder, registry = make()
    msgs: list[Msg] = []
    expected: list[tuple[SeriesKey, list[int]]] = []
    for i in range(40):
        kind = rng.choice(list(Kind))
        topic = rng.choice([AIR, AIR2] if kind is Kind.AIR else [TRAFFIC, TRAFFIC2])
        metrics = [m for m in KIND_METRICS[kind] if rng.random() < 0.6] or [KIND_METRICS[kind][-1]]
        fields = [METRIC_INFO[m].field for m in metrics]
        rng.shuffle(fields)  # key order in the JSON must not matter
        payload: dict[str, object] = dict.fromkeys(fields, 0.5)
        payload["dateObserved"] = BASE_S + i  # unique ts per message
        msgs.append((topic, js(payload)))
        expected.append((key(topic), sorted(int(m) for m in metrics)))
    result = run(decoder, registry, msgs)
    assert result.messages_ok == 40
    got = rows(result, registry)
    # rows of message i are the contiguous block with ts BASE + i
    ts = result.batch.ts_ns
    change = np.flatnonzero(np.diff(ts)) + 1
    blocks = np.split(np.arange(len(ts)), change)
    assert len(blocks) == 40
    by_ts: dict[int, tuple[SeriesKey, list[int]]] = {}
    for block in blocks:
        first = got[int(block[0])]
        assert all(got[int(r)][0] == first[0] for r in block)
        metrics_in_block = [got[int(r)][1] for r in block]
        assert metrics_in_block == sorted(set(metrics_in_block))
        by_ts[first[2]] = (first[0], metrics_in_block)
    for i, exp in enumerate(expected):
        assert by_ts[BASE_NS + i * 10**9] == exp
    # within one kind, messages keep their arrival order
    for kind in Kind:
        kind_ts = [r[2] for r in got if r[0].kind is kind]
        assert kind_ts == sorted(kind_ts)


# -- timestamps ----------------------------------------------------------------------------

_TS_CASES = [
    pytest.param("s", None, BASE_S, BASE_NS, id="s-int"),
    pytest.param("s", None, 1763892000.123, 1763892000123000000, id="s-float-ms"),
    pytest.param("s", None, 1763892000.5, BASE_NS + 500_000_000, id="s-float-half"),
    pytest.param("s", None, 1763892000.000001, BASE_NS + 1_000, id="s-float-us"),
    pytest.param("s", None, 1763891999.999, BASE_NS - 1_000_000, id="s-float-below"),
    pytest.param("ms", None, 1763892000123, BASE_NS + 123_000_000, id="ms-int"),
    pytest.param("ms", None, 1763892000123.25, BASE_NS + 123_250_000, id="ms-float"),
    pytest.param("us", None, 1763892000123456, BASE_NS + 123_456_000, id="us-int"),
    pytest.param("us", None, 1763892000123456.0, BASE_NS + 123_456_000, id="us-float"),
    pytest.param("ns", None, 1763892000123456789, BASE_NS + 123_456_789, id="ns-int"),
    pytest.param("ns", None, 1.763892e18, BASE_NS, id="ns-float"),
    pytest.param("s", None, "2025-11-23T10:00:00Z", BASE_NS, id="iso-Z"),
    pytest.param("s", None, "2025-11-23T10:00:00+00:00", BASE_NS, id="iso-+00:00"),
    pytest.param("s", None, "2025-11-23T17:00:00+07:00", BASE_NS, id="iso-+07:00"),
    pytest.param("s", None, "2025-11-23T03:30:00-06:30", BASE_NS, id="iso--06:30"),
    pytest.param("s", None, "2025-11-23T10:00:00.123Z", BASE_NS + 123_000_000, id="iso-ms"),
    pytest.param("s", None, "2025-11-23T10:00:00.123456Z", BASE_NS + 123_456_000, id="iso-us"),
    pytest.param("ms", None, "2025-11-23T17:00:00+07:00", BASE_NS, id="iso-unit-ignored"),
    pytest.param("s", "Asia/Jakarta", "2025-11-23T17:00:00", BASE_NS, id="naive-jakarta"),
    pytest.param("s", "Asia/Jakarta", "2025-11-23T10:00:00Z", BASE_NS, id="aware-ignores-tz"),
    pytest.param("s", "UTC", "2025-11-23T10:00:00", BASE_NS, id="naive-utc"),
]


@pytest.mark.parametrize("neighbour", [False, True], ids=["alone", "with-neighbour"])
@pytest.mark.parametrize(("unit", "naive_tz", "observed", "expected_ns"), _TS_CASES)
def test_timestamps_are_exact(
    unit: str, naive_tz: str | None, observed: object, expected_ns: int, neighbour: bool
) -> None:
    # The neighbour (no dateObserved) forces the per-row path instead of the vectorised one.
    decoder, registry = make(timestamp_unit=unit, naive_timezone=naive_tz)
    msgs = [(AIR, js({"pm25": 12.5, "dateObserved": observed}))]
    if neighbour:
        msgs.append((AIR2, js({"pm25": 1.0})))
    result = run(decoder, registry, msgs)
    assert result.dead == []
    assert result.batch.ts_ns[0] == expected_ns
    assert result.batch.ts_ns.dtype == np.int64
    assert result.batch.flags[0] == 0


def test_float_seconds_with_ms_fraction_is_exact_ns() -> None:
    result = decode_one((AIR, b'{"pm25": 1, "dateObserved": 1763892000.123}'))
    assert int(result.batch.ts_ns[0]) == 1763892000123000000


@pytest.mark.parametrize(
    "observed", ["2025-11-23T17:00:00", "2025-11-23 17:00:00", "2025-11-23", "2025-11-23T17:00"]
)
def test_naive_iso_rejected_unless_a_naive_timezone_is_configured(observed: str) -> None:
    msg = (AIR, js({"pm25": 3.0, "dateObserved": observed}))
    rejected = decode_one(msg)
    assert [d.reason for d in rejected.dead] == ["bad_timestamp"]
    assert rejected.messages_ok == 0
    as_utc = decode_one(msg, naive_timezone="UTC", max_past_s=None, max_future_s=DAY_S)
    in_jakarta = decode_one(msg, naive_timezone="Asia/Jakarta", max_past_s=None)
    assert as_utc.messages_ok == in_jakarta.messages_ok == 1
    shift = int(as_utc.batch.ts_ns[0]) - int(in_jakarta.batch.ts_ns[0])
    assert shift == 7 * 3600 * 10**9


def test_missing_date_observed_uses_receive_time_and_flags_it() -> None:
    decoder, registry = make()
    msgs = [
        (AIR, js({"pm25": 1.0, "pm10": 2.0})),
        (AIR2, js({"pm25": 3.0, "dateObserved": BASE_S})),
        (TRAFFIC, js({"intensity": 4.0, "occupancy": 0.5})),
    ]
    recv = [NOW_NS - 5_000_000_123, NOW_NS - 7, NOW_NS - 123_456_789]
    result = run(decoder, registry, msgs, recv)
    assert result.messages_ok == 3
    got = rows(result, registry)
    rt = int(ReadingFlag.RECEIVE_TIME)
    assert got == [
        (key(AIR), int(Metric.PM25), recv[0], 1.0, rt),
        (key(AIR), int(Metric.PM10), recv[0], 2.0, rt),
        (key(AIR2), int(Metric.PM25), BASE_NS, 3.0, 0),
        (key(TRAFFIC), int(Metric.INTENSITY), recv[2], 4.0, rt),
        (key(TRAFFIC), int(Metric.OCCUPANCY), recv[2], 0.5, rt),
    ]


def test_numeric_timestamps_are_never_flagged() -> None:
    # Numbers-only rows take the vectorised path; none of them is RECEIVE_TIME.
    decoder, registry = make()
    msgs = [(AIR, js({"pm25": 1.0, "dateObserved": BASE_S + i})) for i in range(5)]
    result = run(decoder, registry, msgs)
    assert not result.batch.flags.any()


def test_lane_id_makes_separate_series() -> None:
    decoder, registry = make()
    msgs = [
        (TRAFFIC, js({"intensity": 1.0, "laneId": 1})),
        (TRAFFIC, js({"intensity": 2.0, "laneId": 2})),
        (TRAFFIC, js({"intensity": 3.0})),
        (TRAFFIC, js({"intensity": 4.0, "laneId": 1})),
    ]
    result = run(decoder, registry, msgs)
    assert [(r[0].lane, r[3]) for r in rows(result, registry)] == [
        (1, 1.0),
        (2, 2.0),
        (0, 3.0),
        (1, 4.0),
    ]
    assert result.batch.sid.tolist() == [0, 1, 2, 0]
    assert {k.lane for k in keys_of(registry)} == {0, 1, 2}
    assert {k.sensor_id for k in keys_of(registry)} == {"tf-001"}


@pytest.mark.parametrize("seconds_ahead", [0, 1, 299, 300])
def test_future_up_to_max_future_s_is_accepted(seconds_ahead: int) -> None:
    result = decode_one((AIR, js({"pm25": 1.0, "dateObserved": NOW_NS // 10**9 + seconds_ahead})))
    assert result.messages_ok == 1


def test_clock_skew_boundaries_are_exact_in_ns() -> None:
    decoder, registry = make(timestamp_unit="ns")
    ahead = NOW_NS + 300 * 10**9
    behind = NOW_NS - 30 * DAY_S * 10**9
    msgs = [
        (AIR, js({"pm25": 1.0, "dateObserved": ts}))
        for ts in (ahead, ahead + 1, behind, behind - 1)
    ]
    result = run(decoder, registry, msgs)
    assert result.messages_ok == 2
    assert result.batch.ts_ns.tolist() == [ahead, behind]
    assert reasons_by_recv(result) == {
        RECV_NS + 1: "timestamp_future",
        RECV_NS + 3: "timestamp_too_old",
    }


def test_skew_is_judged_against_the_injected_clock() -> None:
    clock = ManualClock(NOW_NS)
    decoder, registry = make(clock=clock)
    msg = (AIR, js({"pm25": 1.0, "dateObserved": NOW_NS // 10**9 + 400}))
    assert reasons_by_recv(run(decoder, registry, [msg])) == {RECV_NS: "timestamp_future"}
    clock.advance(100)
    assert run(decoder, registry, [msg]).messages_ok == 1
    clock.advance(31 * DAY_S)
    assert reasons_by_recv(run(decoder, registry, [msg])) == {RECV_NS: "timestamp_too_old"}


def test_custom_skew_policy() -> None:
    msg = (AIR, js({"pm25": 1.0, "dateObserved": 0}))
    assert decode_one(msg).dead[0].reason == "timestamp_too_old"
    accepted = decode_one(msg, max_past_s=None)
    assert accepted.messages_ok == 1
    assert accepted.batch.ts_ns.tolist() == [0]
    msg = (AIR, js({"pm25": 1.0, "dateObserved": NOW_NS // 10**9 + 10}))
    assert decode_one(msg, max_future_s=5.0).dead[0].reason == "timestamp_future"
    msg = (AIR, js({"pm25": 1.0, "dateObserved": NOW_NS // 10**9 - 3600}))
    assert decode_one(msg, max_past_s=60.0).dead[0].reason == "timestamp_too_old"


# -- every reason ----------------------------------------------------------------------------

_OK_AIR = js({"pm25": 12.0, "dateObserved": BASE_S})
_TOO_OLD = BASE_S - 31 * DAY_S
_FUTURE = BASE_S + 60 + 301

# (topic, payload, options, reason). "not_finite" is deliberately absent: see
# test_not_finite_is_unreachable_from_json.
_REJECTIONS: list[Any] = [
    # topics
    pytest.param("urbanpulse/jakarta/air/s1", _OK_AIR, {}, "topic_mismatch", id="depth"),
    pytest.param("urbanpulse/jakarta/south/air/s1/x", _OK_AIR, {}, "topic_mismatch", id="deep"),
    pytest.param("city/jakarta/south/air/s1", _OK_AIR, {}, "topic_mismatch", id="literal"),
    pytest.param(
        "urbanpulse/_deadletter/south/air/s1", _OK_AIR, {}, "topic_reserved", id="deadletter"
    ),
    pytest.param("urbanpulse/jakarta/south/air/_s1", _OK_AIR, {}, "topic_reserved", id="_sensor"),
    pytest.param("urbanpulse/jakarta/south/air/s\x001", _OK_AIR, {}, "topic_bad_segment", id="nul"),
    pytest.param("urbanpulse/jakarta//air/s1", _OK_AIR, {}, "topic_bad_segment", id="empty"),
    pytest.param("urbanpulse/jakarta/south/water/s1", _OK_AIR, {}, "topic_unknown_kind", id="kind"),
    # topic errors win over payload errors
    pytest.param("urbanpulse/jakarta/south/water/s1", b"\xff", {}, "topic_unknown_kind", id="t>p"),
    # size
    pytest.param(AIR, _OK_AIR + b" " * 4096, {}, "payload_too_large", id="4096+"),
    pytest.param(AIR, _OK_AIR, {"max_payload_bytes": 8}, "payload_too_large", id="small-max"),
    pytest.param(AIR, b"\xff" * 5000, {}, "payload_too_large", id="size-before-json"),
    # not JSON
    pytest.param(AIR, b"", {}, "not_json", id="empty-payload"),
    pytest.param(AIR, b"{", {}, "not_json", id="truncated"),
    pytest.param(AIR, b"\xff\xfe{}", {}, "not_json", id="invalid-utf8"),
    pytest.param(AIR, b'{"pm25": 1, "x": "\xc3\x28"}', {}, "not_json", id="invalid-utf8-in-str"),
    pytest.param(AIR, b'{"pm25": NaN}', {}, "not_json", id="NaN"),
    pytest.param(AIR, b'{"pm25": Infinity}', {}, "not_json", id="Infinity"),
    pytest.param(AIR, b'{"pm25": -Infinity}', {}, "not_json", id="-Infinity"),
    pytest.param(AIR, b'{"pm25": 1e999}', {}, "not_json", id="1e999"),
    pytest.param(AIR, b"{'pm25': 1}", {}, "not_json", id="single-quotes"),
    pytest.param(AIR, b'{"pm25": 1,}', {}, "not_json", id="trailing-comma"),
    pytest.param(AIR, b'{"pm25": 1}{"pm25": 2}', {}, "not_json", id="two-documents"),
    pytest.param(AIR, b'\xef\xbb\xbf{"pm25": 1}', {}, "not_json", id="bom"),
    pytest.param(AIR, b'{"pm25": "\\ud800"}', {}, "not_json", id="lone-surrogate"),
    # not an object
    pytest.param(AIR, b"[]", {}, "not_object", id="array"),
    pytest.param(AIR, b'[{"pm25": 1}]', {}, "not_object", id="array-of-object"),
    pytest.param(AIR, b"42", {}, "not_object", id="int"),
    pytest.param(AIR, b"1.5", {}, "not_object", id="float"),
    pytest.param(AIR, b'"pm25"', {}, "not_object", id="string"),
    pytest.param(AIR, b"null", {}, "not_object", id="null"),
    pytest.param(TRAFFIC, b"true", {}, "not_object", id="bool"),
    # unknown fields under "reject"
    pytest.param(AIR, js({"pm25": 1.0, "foo": 1}), {}, "unknown_field", id="foo"),
    pytest.param(AIR, js({"PM25": 1.0}), {}, "unknown_field", id="case"),
    pytest.param(AIR, js({"pm25": 1.0, "laneId": 1}), {}, "unknown_field", id="air-laneId"),
    pytest.param(TRAFFIC, js({"intensity": 1.0, "pm25": 1}), {}, "unknown_field", id="cross-kind"),
    pytest.param(AIR, js({"pm25": 1.0, "id": "x", "type": "A"}), {}, "unknown_field", id="ngsi"),
    # wrong types
    pytest.param(AIR, js({"pm25": "12.5"}), {}, "wrong_type", id="str-number"),
    pytest.param(AIR, js({"pm25": True}), {}, "wrong_type", id="bool-number"),
    pytest.param(TRAFFIC, js({"intensity": False}), {}, "wrong_type", id="false-number"),
    pytest.param(AIR, js({"pm25": None}), {}, "wrong_type", id="null-number"),
    pytest.param(AIR, js({"pm25": [1.0]}), {}, "wrong_type", id="list-number"),
    pytest.param(AIR, js({"pm25": {"value": 1.0}}), {}, "wrong_type", id="object-number"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": True}), {}, "wrong_type", id="bool-ts"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": None}), {}, "wrong_type", id="null-ts"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": [BASE_S]}), {}, "wrong_type", id="list-ts"),
    pytest.param(TRAFFIC, js({"intensity": 1, "laneId": "1"}), {}, "wrong_type", id="str-lane"),
    pytest.param(TRAFFIC, js({"intensity": 1, "laneId": 1.0}), {}, "wrong_type", id="float-lane"),
    pytest.param(TRAFFIC, js({"intensity": 1, "laneId": True}), {}, "wrong_type", id="bool-lane"),
    # invalid field values
    pytest.param(TRAFFIC, js({"intensity": 1, "laneId": 0}), {}, "invalid_field", id="lane-0"),
    pytest.param(TRAFFIC, js({"intensity": 1, "laneId": 65}), {}, "invalid_field", id="lane-65"),
    pytest.param(TRAFFIC, js({"intensity": 1, "laneId": -3}), {}, "invalid_field", id="lane-neg"),
    # no metrics
    pytest.param(AIR, b"{}", {}, "no_metrics", id="empty-object"),
    pytest.param(AIR, js({"dateObserved": BASE_S}), {}, "no_metrics", id="only-ts"),
    pytest.param(TRAFFIC, js({"laneId": 3, "dateObserved": BASE_S}), {}, "no_metrics", id="lane"),
    pytest.param(
        AIR, js({"foo": 1}), {"unknown_fields": "ignore"}, "no_metrics", id="only-ignored"
    ),
    # bad timestamps
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": "yesterday"}), {}, "bad_timestamp", id="w"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": ""}), {}, "bad_timestamp", id="empty-ts"),
    pytest.param(AIR, js({"pm25": 1, "dateObserved": str(BASE_S)}), {}, "bad_timestamp", id="nstr"),
    pytest.param(
        AIR, js({"pm25": 1, "dateObserved": "2025-11-23T10:00:00"}), {}, "bad_timestamp", id="naive"
    ),
    pytest.param(
        AIR, js({"pm25": 1, "dateObserved": "1969-12-31T23:59:59Z"}), {}, "bad_timestamp", id="<0"
    ),
    pytest.param(
        AIR,
        js({"pm25": 1, "dateObserved": "9999-12-31T23:59:59Z"}),
        {},
        "bad_timestamp",
        id="iso-past-int64",
    ),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": -1}), {}, "bad_timestamp", id="neg-int"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": -1.5}), {}, "bad_timestamp", id="neg-float"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": 10**10}), {}, "bad_timestamp", id="2286+"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": 2**64 - 1}), {}, "bad_timestamp", id="u64"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": 1e300}), {}, "bad_timestamp", id="1e300"),
    pytest.param(
        AIR,
        js({"pm25": 1.0, "dateObserved": 2**63}),
        {"timestamp_unit": "ns"},
        "bad_timestamp",
        id="ns-2^63",
    ),
    pytest.param(
        AIR, js({"pm25": 1.0, "dateObserved": "garbage"}), {}, "bad_timestamp", id="ts-before-range"
    ),
    pytest.param(AIR, js({"dateObserved": "garbage"}), {}, "bad_timestamp", id="ts-before-metrics"),
    # clock skew
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": _FUTURE}), {}, "timestamp_future", id="f"),
    pytest.param(
        AIR,
        js({"pm25": 1.0, "dateObserved": "2026-01-01T00:00:00+07:00"}),
        {},
        "timestamp_future",
        id="iso-future",
    ),
    pytest.param(
        AIR,
        js({"pm25": 1.0, "dateObserved": BASE_S * 1000 + 3_600_000}),
        {"timestamp_unit": "ms"},
        "timestamp_future",
        id="ms-future",
    ),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": _TOO_OLD}), {}, "timestamp_too_old", id="o"),
    pytest.param(AIR, js({"pm25": 1.0, "dateObserved": 0}), {}, "timestamp_too_old", id="epoch"),
    pytest.param(
        AIR,
        js({"pm25": 1.0, "dateObserved": "2000-01-01T00:00:00Z"}),
        {},
        "timestamp_too_old",
        id="y2k",
    ),
    pytest.param(
        AIR,
        js({"pm25": 1.0, "dateObserved": BASE_S}),
        {"timestamp_unit": "ms"},
        "timestamp_too_old",
        id="s-read-as-ms",
    ),
    # out of the hard physical limits
    pytest.param(TRAFFIC, js({"occupancy": 1.5}), {}, "out_of_range", id="occupancy-1.5"),
    pytest.param(AIR, js({"pm25": -100}), {}, "out_of_range", id="pm25--100"),
    pytest.param(AIR, js({"pm25": 5000.5}), {}, "out_of_range", id="pm25-high"),
    pytest.param(AIR, js({"temperature": 90.01}), {}, "out_of_range", id="temperature"),
    pytest.param(AIR, js({"relativeHumidity": -5.5}), {}, "out_of_range", id="rh"),
    pytest.param(TRAFFIC, js({"intensity": -1}), {}, "out_of_range", id="intensity"),
    pytest.param(TRAFFIC, js({"averageVehicleSpeed": 401}), {}, "out_of_range", id="speed"),
    pytest.param(AIR, js({"pm25": 1e308}), {}, "out_of_range", id="1e308"),
    pytest.param(AIR, js({"pm25": 2**64 - 1}), {}, "out_of_range", id="u64-value"),
    pytest.param(AIR, js({"pm25": 1.0, "co": -1e6}), {}, "out_of_range", id="one-bad-metric"),
    pytest.param(
        AIR, js({"pm25": 2500.0}), {"limits": {"pm25": (0.0, 2000.0)}}, "out_of_range", id="lim"
    ),
    pytest.param(
        AIR, js({"pm25": 12.0, "dateObserved": _TOO_OLD}), {}, "timestamp_too_old", id="ok-range"
    ),
    pytest.param(
        AIR, js({"pm25": -100, "dateObserved": _TOO_OLD}), {}, "out_of_range", id="range>skew"
    ),
]


@pytest.mark.parametrize(("topic", "payload", "options", "reason"), _REJECTIONS)
def test_every_rejection_has_its_reason(
    topic: str, payload: bytes, options: dict[str, Any], reason: str
) -> None:
    decoder, registry = make(**options)
    recv = NOW_NS - 42
    result = run(decoder, registry, [(topic, payload)], [recv], limits=options.get("limits"))
    assert result.messages_ok == 0
    assert len(result.batch) == 0
    assert result.dead == [DeadLetter(topic, payload, reason, result.dead[0].detail, recv)]


def test_rejection_table_covers_every_reachable_reason() -> None:
    covered = {p.values[3] for p in _REJECTIONS}
    assert covered == set(NATIVE_REASONS) - {"not_finite"}
    assert len(set(REASONS)) == len(REASONS)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"pm25": NaN}',
        b'{"pm25": nan}',
        b'{"pm25": Infinity}',
        b'{"pm25": -Infinity}',
        b'{"pm25": 1e999}',
        b'{"pm25": -1e999}',
        b'{"pm25": 1' + b"0" * 400 + b"}",
        b'{"pm25": 1.0, "dateObserved": 1e999}',
        b'{"pm25": 1.7976931348623157e308}',
        b'{"pm25": 100000000000000000000000}',
        b'{"pm25": 1.0, "dateObserved": 1.7976931348623157e308}',
    ],
)
def test_not_finite_is_unreachable_from_json(payload: bytes) -> None:
    """orjson refuses NaN/Infinity literals and numbers that overflow a double
    (not_json), and any JSON number it does accept is a finite double: pydantic's
    finite_number check ("not_finite") can never fire on a JSON payload, so the
    reason is absent from the rejection table."""
    for unknown_fields in ("reject", "ignore"):
        result = decode_one((AIR, payload), unknown_fields=unknown_fields)
        assert result.messages_ok == 0
        assert result.dead[0].reason in {"not_json", "out_of_range", "bad_timestamp"}
        assert result.dead[0].reason != "not_finite"


@pytest.mark.parametrize(
    ("topic", "payload", "options"),
    [
        pytest.param(AIR, js({"pm25": 1.0, "foo": [1, {"x": None}]}), {"unknown_fields": "ignore"}),
        pytest.param(AIR, js({"pm25": 1.0, "laneId": "x"}), {"unknown_fields": "ignore"}),
        pytest.param(TRAFFIC, js({"intensity": 1, "pm25": "x"}), {"unknown_fields": "ignore"}),
        pytest.param(AIR, _OK_AIR + b" " * (4096 - len(_OK_AIR)), {}, id="exactly-max-bytes"),
        pytest.param(AIR, _OK_AIR, {"max_payload_bytes": len(_OK_AIR)}, id="exact-custom-max"),
        pytest.param(TRAFFIC, js({"occupancy": 0.0}), {}, id="occupancy-0"),
        pytest.param(TRAFFIC, js({"occupancy": 1}), {}, id="occupancy-1"),
        pytest.param(AIR, js({"pm25": -50, "pm10": 5000}), {}, id="pm-limits"),
        pytest.param(AIR, js({"temperature": -90.0, "relativeHumidity": 150}), {}, id="limits"),
        pytest.param(TRAFFIC, js({"averageVehicleSpeed": 400, "laneId": 64}), {}, id="speed"),
        pytest.param(AIR, js({"pm25": 7000.0}), {"limits": {"pm25": (0.0, 8000.0)}}, id="wider"),
        pytest.param(AIR, js({"pm25": 1, "dateObserved": _TOO_OLD}), {"max_past_s": None}, id="p"),
        pytest.param(AIR, b' \n{"pm25" : 1 }\t', {}, id="whitespace"),
        pytest.param(AIR, b'{"pm25": "x", "pm25": 2.5}', {}, id="duplicate-key-last-wins"),
    ],
)
def test_accepted_edge_cases(topic: str, payload: bytes, options: dict[str, Any]) -> None:
    decoder, registry = make(**options)
    result = run(decoder, registry, [(topic, payload)], limits=options.get("limits"))
    assert result.dead == []
    assert result.messages_ok == 1
    assert len(result.batch) >= 1


def test_unknown_fields_policy_switches_reject_and_ignore() -> None:
    msg = (AIR, js({"pm25": 9.0, "comment": "hello", "dateObserved": BASE_S}))
    assert [d.reason for d in decode_one(msg).dead] == ["unknown_field"]
    ignored = decode_one(msg, unknown_fields="ignore")
    assert ignored.messages_ok == 1
    assert ignored.batch.value.tolist() == [9.0]
    assert ignored.batch.ts_ns.tolist() == [BASE_NS]
    # Under "ignore", a laneId on an air topic is just another unknown field: lane 0.
    decoder, registry = make(unknown_fields="ignore")
    run(decoder, registry, [(AIR, js({"pm25": 1.0, "laneId": 5}))])
    assert keys_of(registry) == [key(AIR, 0)]


def test_unknown_limit_field_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown metric 'pm1'"):
        make(limits={"pm1": (0.0, 1.0)})


def test_out_of_range_detail_names_the_field() -> None:
    result = decode_one((TRAFFIC, js({"intensity": 5, "occupancy": 1.5})))
    assert result.dead[0].reason == "out_of_range"
    assert "occupancy" in result.dead[0].detail
    assert "intensity" not in result.dead[0].detail


def test_empty_batch() -> None:
    decoder, registry = make()
    result = run(decoder, registry, [])
    assert result.messages_ok == 0
    assert result.dead == []
    assert len(result.batch) == 0


# -- bad messages never affect good ones -----------------------------------------------------

_GOOD: list[Msg] = [
    (AIR, js({"pm25": 10.0, "pm10": 20.0, "dateObserved": BASE_S})),
    (TRAFFIC, js({"intensity": 30, "laneId": 1, "dateObserved": "2025-11-23T10:00:01Z"})),
    (AIR2, js({"temperature": 29.5, "relativeHumidity": 70.0})),
    (AIR, js({"no2": 5.0, "dateObserved": 1763892002.25})),
    (TRAFFIC2, js({"occupancy": 0.25, "averageVehicleSpeed": 55.5})),
    (TRAFFIC, js({"intensity": 12, "laneId": 2, "dateObserved": BASE_S + 3})),
    (AIR2, js({"co": 300.0, "so2": 2.0, "o3": 40.0, "dateObserved": "2025-11-23T17:00:04+07:00"})),
    (TRAFFIC, js({"intensity": 7, "occupancy": 0.1, "dateObserved": BASE_S + 5})),
]

_BAD: list[tuple[str, bytes, str]] = [
    ("urbanpulse/jakarta/air/zz", _OK_AIR, "topic_mismatch"),
    ("urbanpulse/_deadletter/south/air/zz", _OK_AIR, "topic_reserved"),
    ("urbanpulse/jakarta/south/air/z\nz", _OK_AIR, "topic_bad_segment"),
    ("urbanpulse/jakarta/south/bike/zz", _OK_AIR, "topic_unknown_kind"),
    ("urbanpulse/x/y/air/big", b"{" + b" " * 5000 + b"}", "payload_too_large"),
    ("urbanpulse/x/y/air/nj", b'{"pm25": NaN}', "not_json"),
    ("urbanpulse/x/y/air/nj2", b"\xff\xff", "not_json"),
    ("urbanpulse/x/y/traffic/no", b"[1, 2]", "not_object"),
    ("urbanpulse/x/y/air/uf", js({"pm25": 1.0, "bogus": 1}), "unknown_field"),
    ("urbanpulse/x/y/air/wt", js({"pm25": "1.0"}), "wrong_type"),
    ("urbanpulse/x/y/traffic/wt", js({"intensity": True}), "wrong_type"),
    ("urbanpulse/x/y/traffic/if", js({"intensity": 1, "laneId": 0}), "invalid_field"),
    ("urbanpulse/x/y/air/nm", b"{}", "no_metrics"),
    ("urbanpulse/x/y/traffic/nm", js({"dateObserved": BASE_S}), "no_metrics"),
    (
        "urbanpulse/x/y/air/bt",
        js({"pm25": 1.0, "dateObserved": "2025-11-23T10:00"}),
        "bad_timestamp",
    ),
    ("urbanpulse/x/y/air/bt2", js({"pm25": 1.0, "dateObserved": -5}), "bad_timestamp"),
    ("urbanpulse/x/y/air/tf", js({"pm25": 1.0, "dateObserved": _FUTURE}), "timestamp_future"),
    ("urbanpulse/x/y/traffic/to", js({"intensity": 1, "dateObserved": 0}), "timestamp_too_old"),
    ("urbanpulse/x/y/traffic/or", js({"occupancy": 1.5}), "out_of_range"),
    ("urbanpulse/x/y/air/or", js({"pm25": -100}), "out_of_range"),
]


def test_bad_pool_covers_every_reachable_reason() -> None:
    assert {reason for _, _, reason in _BAD} == set(NATIVE_REASONS) - {"not_finite"}


@pytest.mark.parametrize("seed", range(12))
def test_bad_messages_never_affect_good_ones(seed: int) -> None:
    rng = random.Random(seed)
    good_only, good_registry = make()
    baseline = run(good_only, good_registry, _GOOD)
    assert baseline.messages_ok == len(_GOOD)
    assert baseline.dead == []

    bads = [rng.choice(_BAD) for _ in range(rng.randint(1, 25))]
    tagged: list[tuple[Msg, str | None]] = [(m, None) for m in _GOOD]
    for topic, payload, bad_reason in bads:
        tagged.insert(rng.randint(0, len(tagged)), ((topic, payload), bad_reason))
    # recv times: good messages keep the receive times they had in the baseline
    recv: list[int] = []
    good_i = 0
    for i, (_, reason) in enumerate(tagged):
        if reason is None:
            recv.append(RECV_NS + good_i)
            good_i += 1
        else:
            recv.append(NOW_NS - 10**6 - i)
    mixed_decoder, mixed_registry = make()
    mixed = run(mixed_decoder, mixed_registry, [m for m, _ in tagged], recv)

    assert mixed.messages_ok == len(_GOOD)
    assert len(mixed.dead) == len(bads)
    assert rows(mixed, mixed_registry) == rows(baseline, good_registry)
    expected_dead = {r: reason for r, (_, reason) in zip(recv, tagged, strict=True) if reason}
    assert reasons_by_recv(mixed) == expected_dead
    for d in mixed.dead:
        msg = tagged[recv.index(d.received_ns)][0]
        assert (d.topic, d.payload) == msg


# -- hypothesis ------------------------------------------------------------------------------

_FIELDS = tuple(info.field for info in METRIC_INFO.values())
_KEYS = st.sampled_from((*_FIELDS, "dateObserved", "laneId", "extra", "PM25", ""))

# Every finite float, including the huge and tiny negative ones that once broke the
# per-row timestamp path (see the regressions at the end).
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
_NUMBERS = st.one_of(
    st.integers(-(2**64), 2**64),
    st.integers(-5, 70),
    _FLOATS,
    st.floats(min_value=-60.0, max_value=6000.0),
)


def _iso(dt: datetime) -> str:
    return dt.isoformat()


_OPTION_SETS: tuple[Mapping[str, Any], ...] = (
    {},
    {"unknown_fields": "ignore", "timestamp_unit": "ms"},
    {"timestamp_unit": "ns", "naive_timezone": "Asia/Jakarta", "max_past_s": None},
    {"timestamp_unit": "us", "max_payload_bytes": 64, "limits": {"pm25": (0.0, 100.0)}},
    {"naive_timezone": "UTC", "max_future_s": 0.0, "max_past_s": 3600.0},
)
_SCALE = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_NOW_S = NOW_NS // 10**9


def _timestamps(unit: str) -> st.SearchStrategy[object]:
    """dateObserved values, mostly plausible in the configured unit."""
    scale = _SCALE[unit]
    near = (_NOW_S - 3000) * scale, _NOW_S * scale
    wide = (BASE_S - 40 * DAY_S) * scale, (BASE_S + 600) * scale
    return st.one_of(
        st.integers(*near),
        st.integers(*wide),
        st.floats(min_value=near[0], max_value=near[1]),
        st.floats(min_value=wide[0], max_value=wide[1]),
        st.integers(BASE_S - DAY_S, BASE_S + 600),  # seconds whatever the unit
        st.datetimes(
            min_value=datetime(2025, 11, 22, 12),
            max_value=datetime(2025, 11, 23, 18),
            timezones=st.sampled_from(
                [UTC, timezone(timedelta(hours=7)), timezone(-timedelta(hours=5))]
            ),
        ).map(_iso),
        st.datetimes(min_value=datetime(2025, 11, 22), max_value=datetime(2025, 11, 23, 18)).map(
            _iso
        ),
        st.sampled_from(["", "garbage", "2025-11-23", str(BASE_S), "2025-11-23T10:00:00Z"]),
        _FLOATS,
        st.integers(-(2**63), 2**64 - 1),
    )


def _metric_value(metric: Metric) -> st.SearchStrategy[float | int]:
    info = METRIC_INFO[metric]
    span = info.high - info.low
    return st.one_of(
        st.floats(min_value=max(info.low, 0.0), max_value=min(info.high, 100.0)),
        st.floats(min_value=info.low - 0.01 * span, max_value=info.high + 0.01 * span),
        st.integers(0, 1),
    )


_TS_BY_UNIT = {unit: _timestamps(unit) for unit in _SCALE}
_LEAVES = st.one_of(
    st.none(), st.booleans(), _NUMBERS, st.text(max_size=8), st.one_of(*_TS_BY_UNIT.values())
)
_JSONISH = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_KEYS, children, max_size=4)
    ),
    max_leaves=6,
)
_SPECIAL_PAYLOADS = st.sampled_from(
    [b"", b"{", b"[]", b"{}", b'{"pm25": NaN}', b"\xff", b'{"pm25": 1e999}', b" " * 5000]
)
_TOPICS_BY_KIND = {Kind.AIR: [AIR, AIR2], Kind.TRAFFIC: [TRAFFIC, TRAFFIC2]}
_TOPICS = st.sampled_from(
    [
        AIR,
        AIR2,
        TRAFFIC,
        TRAFFIC2,
        "urbanpulse/jakarta/south/air",
        "urbanpulse/_deadletter/south/air/x",
        "urbanpulse/jakarta/south/bus/x",
        "urbanpulse/jakarta/south/air/\x00",
    ]
)
_METRIC_VALUES = {m: _metric_value(m) for m in Metric}
_STRAY_FIELDS = st.dictionaries(_KEYS, _LEAVES, max_size=2)


def _with_stray(obj: dict[str, object], stray: dict[str, object] | None) -> bytes:
    return json.dumps(obj | (stray or {})).encode()


def _plausible(unit: str, kind: Kind) -> st.SearchStrategy[Msg]:
    """Messages that are valid, or nearly so, for a topic of ``kind``."""
    optional: dict[str, st.SearchStrategy[object]] = {
        METRIC_INFO[m].field: _METRIC_VALUES[m] for m in KIND_METRICS[kind]
    }
    optional["dateObserved"] = _TS_BY_UNIT[unit]
    if kind is Kind.TRAFFIC:
        optional["laneId"] = st.integers(0, 66)
    payloads = st.builds(
        _with_stray,
        st.fixed_dictionaries({}, optional=optional),
        # now and then a stray or cross-kind field
        st.one_of(st.none(), st.none(), st.none(), _STRAY_FIELDS),
    )
    return st.tuples(st.sampled_from(_TOPICS_BY_KIND[kind]), payloads)


def _messages(unit: str, *, raw_bytes: bool) -> st.SearchStrategy[Msg]:
    junk: st.SearchStrategy[bytes] = st.one_of(
        _JSONISH.map(lambda o: json.dumps(o).encode()),
        st.dictionaries(_KEYS, _LEAVES, max_size=6).map(lambda o: json.dumps(o).encode()),
        _SPECIAL_PAYLOADS,
        st.binary(max_size=64 if raw_bytes else 16),
    )
    air, traffic = _plausible(unit, Kind.AIR), _plausible(unit, Kind.TRAFFIC)
    return st.one_of(air, traffic, st.tuples(_TOPICS, junk))


def _batches(*, raw_bytes: bool) -> st.SearchStrategy[tuple[int, list[Msg]]]:
    return st.one_of(
        *(
            st.tuples(
                st.just(i),
                st.lists(
                    _messages(opts.get("timestamp_unit", "s"), raw_bytes=raw_bytes), max_size=8
                ),
            )
            for i, opts in enumerate(_OPTION_SETS)
        )
    )


@cache
def _decoder(options_index: int, role: str) -> tuple[NativeJsonDecoder, SeriesRegistry]:
    """Decoders are reused across examples (building one costs ~10 ms); results are
    compared through registry keys, so shared registries do not matter."""
    del role
    return make(**_OPTION_SETS[options_index])


@settings(max_examples=200, deadline=None)
@given(case=_batches(raw_bytes=True))
def test_fuzz_random_payloads_never_raise(case: tuple[int, list[Msg]]) -> None:
    options_index, msgs = case
    decoder, registry = _decoder(options_index, "fuzz")
    limits = _OPTION_SETS[options_index].get("limits")
    result = run(decoder, registry, msgs, limits=limits)  # run() checks the invariants
    assert len(result.dead) + result.messages_ok == len(msgs)


@settings(max_examples=200, deadline=None)
@given(case=_batches(raw_bytes=False))
def test_fuzz_batch_equals_each_message_alone(case: tuple[int, list[Msg]]) -> None:
    options_index, msgs = case
    batch_decoder, batch_registry = _decoder(options_index, "batch")
    alone_decoder, alone_registry = _decoder(options_index, "alone")
    limits = _OPTION_SETS[options_index].get("limits")
    recv = [RECV_NS + i for i in range(len(msgs))]
    together = run(batch_decoder, batch_registry, msgs, recv, limits=limits)

    expected_rows: list[Row] = []
    expected_dead: dict[int, str] = {}
    ok = 0
    for msg, r in zip(msgs, recv, strict=True):
        alone = run(alone_decoder, alone_registry, [msg], [r], limits=limits)
        ok += alone.messages_ok
        expected_dead |= reasons_by_recv(alone)
        expected_rows += rows(alone, alone_registry)
    # The batch groups messages by kind (air, then traffic) and keeps arrival order
    # within a kind; a message's rows always stay together.
    expected_rows.sort(key=lambda row: row[0].kind)

    event("some accepted" if ok else "none accepted")
    for reason in sorted(set(expected_dead.values())):
        event(f"reason: {reason}")
    event(f"kinds in batch: {sorted({row[0].kind.label for row in expected_rows})}")
    assert together.messages_ok == ok
    assert reasons_by_recv(together) == expected_dead
    assert rows(together, batch_registry) == expected_rows


# -- regressions: bugs these tests found, now fixed --------------------------------


@pytest.mark.parametrize(
    "neighbour",
    [js({"pm25": 1.0}), js({"pm25": 1.0, "dateObserved": "2025-11-23T10:00:00Z"})],
    ids=["receive-time", "iso"],
)
def test_huge_float_timestamp_is_dead_lettered_not_raised(neighbour: bytes) -> None:
    decoder, registry = make()
    msgs = [(AIR, js({"pm25": 1.0, "dateObserved": 1e303})), (AIR2, neighbour)]
    result = run(decoder, registry, msgs)
    assert reasons_by_recv(result) == {RECV_NS: "bad_timestamp"}
    assert result.messages_ok == 1


def test_tiny_negative_timestamp_has_the_same_fate_alone_and_in_a_batch() -> None:
    msg = (AIR, js({"pm25": 1.0, "dateObserved": -1e-7}))
    decoder, registry = make(max_past_s=None)
    alone = run(decoder, registry, [msg])
    assert reasons_by_recv(alone) == {RECV_NS: "bad_timestamp"}
    together = run(decoder, registry, [msg, (AIR2, js({"pm25": 2.0}))])
    assert reasons_by_recv(together) == {RECV_NS: "bad_timestamp"}


@pytest.mark.parametrize(
    "bad",
    [
        js({"pm25": -100}),
        js({}),
        js({"pm25": 1.0, "dateObserved": "garbage"}),
        js({"pm25": 1.0, "dateObserved": 0}),
    ],
    ids=["out_of_range", "no_metrics", "bad_timestamp", "timestamp_too_old"],
)
def test_dead_lettered_message_does_not_register_a_series(bad: bytes) -> None:
    decoder, registry = make()
    result = run(decoder, registry, [(AIR2, bad), (AIR, js({"pm25": 1.0}))])
    assert result.messages_ok == 1
    assert keys_of(registry) == [key(AIR)]
    assert result.batch.sid.tolist() == [0]
