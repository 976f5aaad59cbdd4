"""Codecs (SenML, airrohr, TTN v3) and unit normalisation through the decoder.

Golden cases live in tests/golden/ (one payload file each, expectations in
cases.json); the hypothesis tests check that no payload on any codec topic
raises, that every refusal has a reason from REASONS, and that decoding a batch
gives exactly what decoding each message alone gives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ingest._codecs import (
    AIRROHR_NAMES,
    CODEC_REASONS,
    CodecRule,
    compile_rules,
    topic_matches,
    validate_topic_filter,
)
from ingest._decode import NATIVE_REASONS, REASONS, DecodeOptions, DecodeResult, NativeJsonDecoder
from ingest._topics import TopicPattern
from ingest._units import UNIT_FACTOR, UNIT_OFFSET, Unit, normalise_units, parse_unit
from urbanpulse._batch import SeriesKey, SeriesRegistry
from urbanpulse._clock import ManualClock
from urbanpulse._schema import METRIC_INFO, Kind, Metric, ReadingFlag

GOLDEN = Path(__file__).parent / "golden"
PATTERN = TopicPattern.compile("urbanpulse/{city}/{district}/{kind}/{sensor_id}")
NOW_NS = int(datetime.fromisoformat("2025-03-01T03:16:45Z").timestamp()) * 10**9
RECV_NS = NOW_NS - 10**9
_BANDUNG_AIR = {"city": "bandung", "district": "dago", "kind": "air"}

RULES = (
    CodecRule(
        topic_filter="senml/#",
        codec="senml",
        topic_pattern="senml/{city}/{district}/{kind}/{sensor_id}",
    ),
    CodecRule(
        topic_filter="gw/senml/+",
        codec="senml",
        topic_pattern="gw/senml/{city}",
        tags={"district": "dago", "kind": "air"},
    ),
    CodecRule(
        topic_filter="airrohr/+/+",
        codec="airrohr",
        topic_pattern="airrohr/{city}/{district}",
        tags={"kind": "air"},
    ),
    CodecRule(
        topic_filter="airrohr-t/#",
        codec="airrohr",
        topic_pattern="airrohr-t/{city}/{district}/{sensor_id}",
        tags={"kind": "air"},
    ),
    CodecRule(
        topic_filter="v3/+/devices/+/up",
        codec="ttn",
        topic_pattern="v3/{_}/devices/{sensor_id}/up",
        tags=_BANDUNG_AIR,
        names={"battery": ""},
    ),
    CodecRule(
        topic_filter="ttn-any/+",
        codec="ttn",
        topic_pattern="ttn-any/{_}",
        tags=_BANDUNG_AIR,
    ),
)

Msg = tuple[str, bytes]
Row = tuple[SeriesKey, int, int, float, int]


def make(**options: Any) -> tuple[NativeJsonDecoder, SeriesRegistry]:
    registry = SeriesRegistry()
    options.setdefault("codecs", RULES)
    decoder = NativeJsonDecoder(
        DecodeOptions(**options), pattern=PATTERN, registry=registry, clock=ManualClock(NOW_NS)
    )
    return decoder, registry


def check(result: DecodeResult, registry: SeriesRegistry, n_messages: int) -> None:
    """Invariants of every decode result."""
    assert result.messages_ok + len(result.dead) == n_messages
    b = result.batch
    assert b.sid.dtype == np.int32
    assert b.metric.dtype == np.uint8
    assert b.ts_ns.dtype == np.int64
    assert b.value.dtype == np.float64
    assert np.all(np.isfinite(b.value))
    assert np.all(b.ts_ns >= 0)
    assert np.all((b.flags == 0) | (b.flags == ReadingFlag.RECEIVE_TIME))
    for sid, metric, value in zip(b.sid.tolist(), b.metric.tolist(), b.value.tolist(), strict=True):
        info = METRIC_INFO[Metric(metric)]
        assert info.kind is registry.key(sid).kind
        assert info.low <= value <= info.high
    for d in result.dead:
        assert d.reason in REASONS, d.reason
        assert isinstance(d.detail, str)
    received = [d.received_ns for d in result.dead]
    assert len(set(received)) == len(received), "a message was dead-lettered twice"
    r = result.radio
    for col in (r.ts_ns, r.rssi_dbm, r.snr_db, r.gateways):
        assert col.shape == r.sid.shape
    assert set(r.sid.tolist()) <= set(b.sid.tolist())


def run(
    decoder: NativeJsonDecoder,
    registry: SeriesRegistry,
    msgs: Sequence[Msg],
    recv: Sequence[int] | None = None,
) -> DecodeResult:
    recv_ns = [RECV_NS + i for i in range(len(msgs))] if recv is None else list(recv)
    result = decoder.decode([t for t, _ in msgs], [p for _, p in msgs], recv_ns)
    check(result, registry, len(msgs))
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


# -- golden cases ------------------------------------------------------------------------

_CASES: list[dict[str, Any]] = json.loads((GOLDEN / "cases.json").read_text(encoding="utf-8"))
_FIELD_CODE = {info.field: int(m) for m, info in METRIC_INFO.items()}


def _ts(text: str) -> int:
    if text == "recv":
        return RECV_NS
    if text.startswith("recv"):
        return RECV_NS + int(float(text[4:]) * 10**9)
    dt = datetime.fromisoformat(text)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def test_golden_cases_cover_every_codec_reason() -> None:
    seen = {case["reason"] for case in _CASES if "reason" in case}
    assert set(CODEC_REASONS) <= seen
    assert {case["codec"] for case in _CASES} == {"senml", "airrohr", "ttn"}
    assert sum("rows" in case for case in _CASES) >= 15


@pytest.mark.parametrize("case", _CASES, ids=[c["file"] for c in _CASES])
def test_golden(case: dict[str, Any]) -> None:
    decoder, registry = make()
    payload = (GOLDEN / case["file"]).read_bytes()
    result = run(decoder, registry, [(case["topic"], payload)])
    if "reason" in case:
        assert [(d.reason, d.payload) for d in result.dead] == [(case["reason"], payload)], (
            result.dead[0].detail if result.dead else "accepted"
        )
        assert len(result.batch) == 0
        assert len(registry) == 0
        return
    assert result.dead == []
    assert result.messages_ok == 1
    got = [(k.sensor_id, m, t, v, f) for k, m, t, v, f in rows(result, registry)]
    want = [(s, _FIELD_CODE[f], _ts(t), v, flags) for s, f, t, v, flags in case["rows"]]
    assert [g[:3] + g[4:] for g in got] == [w[:3] + w[4:] for w in want]
    np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-12)
    r = result.radio
    got_radio = [
        (registry.key(s).sensor_id, t, rssi, snr, gws)
        for s, t, rssi, snr, gws in zip(
            r.sid.tolist(),
            r.ts_ns.tolist(),
            r.rssi_dbm.tolist(),
            r.snr_db.tolist(),
            r.gateways.tolist(),
            strict=True,
        )
    ]
    assert got_radio == [(s, _ts(t), rssi, snr, g) for s, t, rssi, snr, g in case.get("radio", [])]


def test_tags_come_from_topic_and_rule_constants() -> None:
    decoder, registry = make()
    msgs = [
        ("senml/jakarta/south/air/aq-1", b'[{"n":"pm25","v":1}]'),
        ("gw/senml/bogor", b'[{"bn":"dev-9:","n":"pm25","v":1}]'),
        ("v3/app@ttn/devices/aq-2/up", json.dumps(_ttn({"pm10": 2})).encode()),
        ("airrohr/surabaya/gubeng", b'{"esp8266id":"77","sensordatavalues":[]}'),
    ]
    result = run(decoder, registry, msgs)
    assert [d.reason for d in result.dead] == ["no_metrics"]
    assert registry.all_keys() == [
        SeriesKey("jakarta", "south", Kind.AIR, "aq-1"),
        SeriesKey("bogor", "dago", Kind.AIR, "dev-9"),
        SeriesKey("bandung", "dago", Kind.AIR, "aq-2"),
    ]


def test_unknown_fields_ignore_drops_unknown_names_labels_and_value_types() -> None:
    decoder, registry = make(unknown_fields="ignore")
    msgs = [
        ("senml/x/y/air/s1", b'[{"n":"pm25","v":1,"foo":2},{"n":"battery","v":3.7}]'),
        ("senml/x/y/air/s2", b'[{"n":"pm25","v":1,"bt_":2}]'),  # must-understand: still refused
        (
            "airrohr/x/y",
            b'{"esp8266id":"5","sensordatavalues":[{"value_type":"CCS811_VOC","value":"3"},'
            b'{"value_type":"SDS_P2","value":"4"}]}',
        ),
        ("v3/a/devices/d/up", json.dumps(_ttn({"pm25": 5, "voc_index": 100})).encode()),
    ]
    result = run(decoder, registry, msgs)
    assert [d.reason for d in result.dead] == ["senml_unknown_label"]
    assert result.batch.value.tolist() == [1.0, 4.0, 5.0]


def test_native_topics_still_decode_natively_next_to_codecs() -> None:
    decoder, registry = make()
    native = ("urbanpulse/bandung/dago/air/n-1", b'{"pm25": 3.0}')
    as_senml = ("senml/bandung/dago/air/n-1", b'{"pm25": 3.0}')
    result = run(decoder, registry, [native, as_senml])
    assert result.messages_ok == 1
    assert [d.reason for d in result.dead] == ["senml_bad_pack"]
    assert result.batch.value.tolist() == [3.0]


def test_first_matching_rule_wins_and_native_rule_overrides() -> None:
    rules = (
        CodecRule(topic_filter="urbanpulse/+/+/air/legacy", codec="native"),
        CodecRule(topic_filter="urbanpulse/+/+/air/#", codec="senml"),
        CodecRule(topic_filter="urbanpulse/#", codec="airrohr"),
    )
    decoder, registry = make(codecs=rules)
    msgs = [
        ("urbanpulse/a/b/air/s-1", b'[{"n":"pm25","v":1}]'),
        ("urbanpulse/a/b/air/legacy", b'{"pm25": 2}'),
        ("urbanpulse/a/b/traffic/t-1", b'{"sensordatavalues": []}'),
        ("urbanpulse/a/b/traffic/t-2", b'{"intensity": 3}'),
    ]
    result = run(decoder, registry, msgs)
    assert result.batch.value.tolist() == [1.0, 2.0]
    assert [d.reason for d in result.dead] == ["no_metrics", "airrohr_bad_shape"]


# -- MQTT filters and rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/b/c", "a/b", False),
        ("a/b", "a/b/c", False),
        ("a/+/c", "a/x/c", True),
        ("a/+/c", "a//c", True),
        ("a/+/c", "a/x/y/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c/d", True),
        ("a/#", "ab/c", False),
        ("#", "x/y", True),
        ("+/+", "x/y", True),
        ("+", "x/y", False),
        ("#", "$SYS/broker", False),
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
        ("a/+", "a/", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    validate_topic_filter(topic_filter)
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "a/++"])
def test_invalid_topic_filters(bad: str) -> None:
    with pytest.raises(ValueError, match="filter"):
        validate_topic_filter(bad)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (CodecRule(topic_filter="a/#", codec="csv"), "unknown codec"),  # type: ignore[arg-type]
        (CodecRule(topic_filter="a/#/b", codec="senml"), "'#' must be"),
        (CodecRule(topic_filter="a/#", codec="ttn", names={"x": "pm1"}), "not a metric"),
        (CodecRule(topic_filter="a/#", codec="ttn", names={"x": "pm25[Cel]"}), "cannot express"),
        (CodecRule(topic_filter="a/#", codec="ttn", names={"x": "co[lb]"}), "unknown unit"),
        (CodecRule(topic_filter="a/#", codec="native", names={"x": "pm25"}), "no name map"),
        (CodecRule(topic_filter="a/#", codec="ttn", tags={"kind": "air"}), "need a topic_pattern"),
        (CodecRule(topic_filter="a/#", codec="ttn", topic_pattern="a/{city}"), "lacks"),
        (
            CodecRule(topic_filter="a/#", codec="ttn", topic_pattern="a/{city}", tags=_BANDUNG_AIR),
            "also in tags",
        ),
        (
            CodecRule(
                topic_filter="a/#",
                codec="ttn",
                topic_pattern="a/{x}",
                tags={**_BANDUNG_AIR, "kind": "water"},
            ),
            "unknown sensor kind",
        ),
        (
            CodecRule(topic_filter="a/#", codec="native", topic_pattern="a/{_}", tags=_BANDUNG_AIR),
            "needs \\{sensor_id\\}",
        ),
    ],
)
def test_invalid_rules_are_refused_naming_the_rule(rule: CodecRule, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        compile_rules([rule], "reject")
    assert "codecs[0]" in str(info.value)


def test_name_map_unit_applies_when_the_payload_states_none() -> None:
    rule = CodecRule(
        topic_filter="v3/#",
        codec="ttn",
        topic_pattern="v3/{_}/devices/{sensor_id}/up",
        tags=_BANDUNG_AIR,
        names={"co_ppm": "co[ppm]", "no2_ppb": "no2[ppb]", "rh_frac": "relativeHumidity[/]"},
    )
    decoder, registry = make(codecs=(rule,))
    payload = _ttn({"co_ppm": 1.0, "no2_ppb": 10.0, "rh_frac": 0.5})
    result = run(decoder, registry, [("v3/a/devices/d/up", json.dumps(payload).encode())])
    np.testing.assert_allclose(
        result.batch.value, [10 * 46.0055 / 24.45, 1000 * 28.010 / 24.45, 50.0], rtol=1e-12
    )


def test_airrohr_defaults_map_p1_to_pm10_and_p2_to_pm25() -> None:
    for sensor in ("SDS", "PMS", "SPS30", "HPM"):
        assert AIRROHR_NAMES[f"{sensor}_P1"] == "pm10"
        assert AIRROHR_NAMES[f"{sensor}_P2"] == "pm25"
    assert AIRROHR_NAMES["BME280_pressure"] == ""


# -- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "symbol", "raw", "canonical"),
    [
        # Published 25 C / 1 atm conversion factors (WHO/EEA tables: 1 ppb NO2 = 1.88
        # ug/m3, O3 1.96, SO2 2.62; 1 ppm CO = 1.145 mg/m3).
        (Metric.NO2, "ppb", 1.0, 1.88),
        (Metric.O3, "ppb", 1.0, 1.96),
        (Metric.SO2, "ppb", 1.0, 2.62),
        (Metric.CO, "ppm", 1.0, 1145.6),
        (Metric.CO, "mg/m3", 1.2, 1200.0),
        (Metric.PM25, "µg/m3", 17.2, 17.2),
        (Metric.PM10, "μg/m³", 24.4, 24.4),
        (Metric.TEMPERATURE, "K", 273.15, 0.0),
        (Metric.TEMPERATURE, "degF", 212.0, 100.0),
        (Metric.TEMPERATURE, "degF", -40.0, -40.0),
        (Metric.RELATIVE_HUMIDITY, "/", 0.81, 81.0),
        (Metric.RELATIVE_HUMIDITY, "%RH", 81.0, 81.0),
        (Metric.OCCUPANCY, "%", 35.0, 0.35),
        (Metric.AVERAGE_VEHICLE_SPEED, "m/s", 10.0, 36.0),
    ],
)
def test_unit_conversion(metric: Metric, symbol: str, raw: float, canonical: float) -> None:
    unit = parse_unit(symbol)
    assert unit is not None
    values, mismatch = normalise_units(
        np.array([[raw]]), np.array([metric], np.uint8), np.array([[unit]], np.uint8)
    )
    assert not mismatch.any()
    assert values[0, 0] == pytest.approx(canonical, rel=2e-3, abs=1e-9)


def test_normalise_units_matches_a_per_cell_reference() -> None:
    rng = np.random.default_rng(3)
    metrics = np.array(list(Metric), dtype=np.uint8)
    values = rng.uniform(-50, 500, size=(40, len(metrics)))
    values[rng.random(values.shape) < 0.2] = np.nan
    units = rng.integers(0, len(Unit), size=values.shape).astype(np.uint8)
    got, mismatch = normalise_units(values, metrics, units)
    for (r, c), v in np.ndenumerate(values):
        f, o = UNIT_FACTOR[metrics[c], units[r, c]], UNIT_OFFSET[metrics[c], units[r, c]]
        if math.isnan(v):
            assert math.isnan(got[r, c])
            assert not mismatch[r, c]
        elif math.isnan(f):
            assert mismatch[r, c]
        else:
            assert not mismatch[r, c]
            assert got[r, c] == v * f + o
    assert mismatch.any()


@pytest.mark.parametrize(
    ("metric", "symbol"),
    [
        (Metric.PM25, "Cel"),
        (Metric.PM10, "ppb"),  # no molar mass for an aerosol
        (Metric.OCCUPANCY, "%RH"),
        (Metric.TEMPERATURE, "%"),
        (Metric.RELATIVE_HUMIDITY, "ug/m3"),
        (Metric.INTENSITY, "km/h"),
    ],
)
def test_units_that_cannot_express_a_metric_are_a_mismatch(metric: Metric, symbol: str) -> None:
    unit = parse_unit(symbol)
    assert unit is not None
    _, mismatch = normalise_units(
        np.array([[1.0]]), np.array([metric], np.uint8), np.array([[unit]], np.uint8)
    )
    assert mismatch.tolist() == [[True]]


def test_canonical_unit_is_identity_for_every_metric() -> None:
    assert np.all(UNIT_FACTOR[:, Unit.CANONICAL] == 1.0)
    assert np.all(UNIT_OFFSET[:, Unit.CANONICAL] == 0.0)


def test_codec_reasons_extend_native_reasons_without_renaming() -> None:
    assert REASONS[: len(NATIVE_REASONS)] == NATIVE_REASONS
    assert NATIVE_REASONS[0] == "topic_mismatch"
    assert NATIVE_REASONS[-1] == "out_of_range"
    assert len(set(REASONS)) == len(REASONS)


# -- hypothesis ------------------------------------------------------------------------------

_NOW_S = NOW_NS // 10**9


def _ttn(decoded: Any = ..., *, received: Any = "2025-03-01T03:15:45.912Z", **extra: Any) -> Any:
    up: dict[str, Any] = {
        "f_port": 1,
        "rx_metadata": [{"gateway_ids": {"gateway_id": "gw"}, "rssi": -97, "snr": 7.5}],
    }
    if decoded is not ...:
        up["decoded_payload"] = decoded
    msg: dict[str, Any] = {"end_device_ids": {"device_id": "aq-9"}, "uplink_message": up}
    if received is not None:
        msg["received_at"] = received
    return msg | extra


_NUM = st.one_of(
    st.floats(min_value=-100, max_value=6000),
    st.integers(-10, 200),
    st.floats(allow_nan=False, allow_infinity=False),
)
_ANY_LEAF = st.one_of(st.none(), st.booleans(), _NUM, st.text(max_size=6))
_UNITS = st.sampled_from(["ug/m3", "ppb", "ppm", "Cel", "K", "%RH", "/", "degF", "lb", "", "mg/m3"])
_SENML_NAMES = st.sampled_from(
    ["pm25", "pm10", "no2", "co", "temp", "hum", "battery", "pm2_5", "-x", "", "intensity", "o3"]
)
_SENML_GOOD = st.fixed_dictionaries(
    {"n": _SENML_NAMES, "v": _NUM},
    optional={
        "u": _UNITS,
        "t": st.one_of(st.integers(-600, 30), st.integers(_NOW_S - 86400, _NOW_S + 600)),
        "bn": st.sampled_from(["dev-1:", "dev-2:", "urn:dev:mac:0024:", "", "bad name:"]),
        "bt": st.one_of(st.just(0), st.integers(_NOW_S - 3600, _NOW_S)),
        "bv": st.integers(-5, 5),
        "bu": _UNITS,
    },
)
_SENML_LABELS = st.sampled_from(
    [
        "bn",
        "bt",
        "bu",
        "bv",
        "bs",
        "bver",
        "n",
        "u",
        "v",
        "vs",
        "vb",
        "vd",
        "s",
        "t",
        "ut",
        "x",
        "x_",
    ]
)
_SENML_WILD = st.dictionaries(_SENML_LABELS, _ANY_LEAF, max_size=5)
_SENML = st.lists(st.one_of(_SENML_GOOD, _SENML_GOOD, _SENML_WILD), min_size=0, max_size=4)

_VALUE_TYPES = st.sampled_from(
    [
        *("SDS_P1", "SDS_P2", "BME280_temperature", "BME280_humidity", "BME280_pressure"),
        *("signal", "temperature", "PMS_P2", "PMS_P0", "NOPE"),
    ]
)
_AIRROHR_VALUE = st.one_of(
    st.floats(min_value=-60, max_value=6000).map(lambda f: f"{f:.2f}"),
    st.sampled_from(["", "n/a", "nan", "inf", "-71 dBm", "1e999"]),
    _NUM,
    st.none(),
)
_AIRROHR = st.fixed_dictionaries(
    {
        "sensordatavalues": st.lists(
            st.one_of(
                st.fixed_dictionaries({"value_type": _VALUE_TYPES, "value": _AIRROHR_VALUE}),
                st.dictionaries(st.sampled_from(["value_type", "value"]), _ANY_LEAF),
            ),
            max_size=4,
        )
    },
    optional={"esp8266id": st.sampled_from(["12331981", 42, "", "a b", None, -1])},
)
_TTN_DECODED = st.one_of(
    st.dictionaries(
        st.sampled_from(["pm25", "pm2_5", "pm10", "temperature", "humidity", "battery", "x"]),
        st.one_of(_NUM, _NUM, _ANY_LEAF),
        max_size=4,
    ),
    _ANY_LEAF,
)
_TTN = st.builds(
    lambda decoded, received, meta: (
        _ttn(decoded, received=received) | ({"uplink_message": meta} if meta is not None else {})
    ),
    st.one_of(st.just(...), _TTN_DECODED),
    st.sampled_from(
        [
            *("2025-03-01T03:15:45.912Z", "2025-03-01T03:16:40.1+07:00", None, "nope", 5),
            *("2025-03-01T03:15:45.912345678Z", "2025-03-01T09:00:00Z", "2024-01-01T00:00:00Z"),
        ]
    ),
    st.one_of(st.none(), st.none(), st.none(), _ANY_LEAF),
)
_NATIVE = st.fixed_dictionaries(
    {}, optional={"pm25": _NUM, "intensity": _NUM, "dateObserved": st.integers(_NOW_S - 99, _NOW_S)}
)

_JUNK = st.one_of(
    st.binary(max_size=40),
    st.recursive(
        _ANY_LEAF,
        lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=3), c)),
        max_leaves=5,
    ).map(lambda o: json.dumps(o).encode()),
)


def _dump(obj: object) -> bytes:
    return json.dumps(obj).encode()


# Mostly valid payloads, so that the accept path is exercised as much as the refusals.
_OK_VALUE = st.floats(min_value=0, max_value=99)
_SENML_CLEAN = st.builds(
    lambda bn, bt, recs: [{"bn": bn, "bt": bt, **recs[0]}, *recs[1:]],
    st.sampled_from(["dev-1:", "urn:dev:mac:0024:", "dev-2/"]),
    st.integers(_NOW_S - 3600, _NOW_S),
    st.lists(
        st.fixed_dictionaries(
            {
                "n": st.sampled_from(["pm25", "pm10", "temp", "hum", "no2"]),
                "v": _OK_VALUE,
            },
            optional={"t": st.sampled_from([0, -60, -120]), "u": st.sampled_from(["%RH", "/"])},
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda r: (r["n"], r.get("t", 0)),
    ),
)
_AIRROHR_CLEAN = st.builds(
    lambda chip, items: {
        "esp8266id": chip,
        "sensordatavalues": [{"value_type": t, "value": f"{v:.2f}"} for t, v in items],
    },
    st.sampled_from(["12331981", "3847560"]),
    st.lists(
        st.tuples(
            st.sampled_from(["SDS_P1", "SDS_P2", "BME280_temperature", "BME280_pressure"]),
            _OK_VALUE,
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda item: item[0],
    ),
)
_TTN_CLEAN = st.builds(
    lambda decoded, received: _ttn(decoded, received=received),
    st.dictionaries(st.sampled_from(["pm25", "pm10", "temperature", "humidity"]), _OK_VALUE),
    st.sampled_from(["2025-03-01T03:15:45.912Z", None, "2025-03-01T03:16:44.5+07:00"]),
)


def _messages() -> st.SearchStrategy[Msg]:
    return st.one_of(
        st.tuples(
            st.sampled_from(["senml/bdg/dago/air/s1", "gw/senml/bdg"]), _SENML_CLEAN.map(_dump)
        ),
        st.tuples(
            st.sampled_from(["airrohr/bdg/dago", "airrohr-t/bdg/dago/n1"]),
            _AIRROHR_CLEAN.map(_dump),
        ),
        st.tuples(
            st.sampled_from(["v3/app@ttn/devices/aq-1/up", "ttn-any/app"]), _TTN_CLEAN.map(_dump)
        ),
        st.tuples(
            st.sampled_from(["senml/bdg/dago/air/s1", "senml/bdg/dago/air/s2", "gw/senml/bdg"]),
            _SENML.map(_dump),
        ),
        st.tuples(
            st.sampled_from(["airrohr/bdg/dago", "airrohr-t/bdg/dago/n1"]), _AIRROHR.map(_dump)
        ),
        st.tuples(
            st.sampled_from(["v3/app@ttn/devices/aq-1/up", "ttn-any/app", "v3/a/devices/_x/up"]),
            _TTN.map(_dump),
        ),
        st.tuples(
            st.sampled_from(
                ["urbanpulse/bdg/dago/air/n1", "urbanpulse/bdg/dago/traffic/t1", "senml/a/b/bike/x"]
            ),
            _NATIVE.map(_dump),
        ),
        st.tuples(
            st.sampled_from(
                ["senml/bdg/dago/air/s1", "airrohr/bdg/dago", "v3/a/devices/d/up", "gw/senml/x"]
            ),
            _JUNK,
        ),
    )


_OPTIONS: tuple[dict[str, Any], ...] = (
    {},
    {"unknown_fields": "ignore"},
    {"max_payload_bytes": 200, "max_past_s": None, "limits": {"pm25": (0.0, 100.0)}},
)


@cache
def _decoder(options_index: int, role: str) -> tuple[NativeJsonDecoder, SeriesRegistry]:
    del role
    return make(**_OPTIONS[options_index])


_BATCHES = st.tuples(st.integers(0, len(_OPTIONS) - 1), st.lists(_messages(), max_size=8))


@settings(max_examples=100, deadline=None)
@given(case=_BATCHES)
def test_fuzz_codec_payloads_never_raise(case: tuple[int, list[Msg]]) -> None:
    options_index, msgs = case
    decoder, registry = _decoder(options_index, "fuzz")
    result = run(decoder, registry, msgs)
    limits = _OPTIONS[options_index].get("limits", {})
    for metric, value in zip(
        result.batch.metric.tolist(), result.batch.value.tolist(), strict=True
    ):
        low, high = limits.get(METRIC_INFO[Metric(metric)].field, (-math.inf, math.inf))
        assert low <= value <= high


@settings(max_examples=100, deadline=None)
@given(case=_BATCHES)
def test_fuzz_batch_equals_each_message_alone(case: tuple[int, list[Msg]]) -> None:
    options_index, msgs = case
    batch_decoder, batch_registry = _decoder(options_index, "batch")
    alone_decoder, alone_registry = _decoder(options_index, "alone")
    recv = [RECV_NS + i for i in range(len(msgs))]
    together = run(batch_decoder, batch_registry, msgs, recv)

    expected_rows: list[Row] = []
    expected_dead: dict[int, str] = {}
    expected_radio: list[tuple[SeriesKey, int, float, float, int]] = []
    ok = 0
    for msg, r in zip(msgs, recv, strict=True):
        alone = run(alone_decoder, alone_registry, [msg], [r])
        ok += alone.messages_ok
        expected_dead |= {d.received_ns: d.reason for d in alone.dead}
        expected_rows += rows(alone, alone_registry)
        expected_radio += _radio_rows(alone, alone_registry)
    expected_rows.sort(key=lambda row: row[0].kind)  # kinds in order, arrival order within

    for reason in sorted(set(expected_dead.values())):
        event(f"reason: {reason}")
    event("some accepted" if ok else "none accepted")
    assert together.messages_ok == ok
    assert {d.received_ns: d.reason for d in together.dead} == expected_dead
    assert rows(together, batch_registry) == expected_rows
    assert _radio_rows(together, batch_registry) == expected_radio


def _radio_rows(
    result: DecodeResult, registry: SeriesRegistry
) -> list[tuple[SeriesKey, int, float, float, int]]:
    r = result.radio
    return [
        (registry.key(s), t, a, b if not math.isnan(b) else -999.0, g)
        for s, t, a, b, g in zip(
            r.sid.tolist(),
            r.ts_ns.tolist(),
            r.rssi_dbm.tolist(),
            r.snr_db.tolist(),
            r.gateways.tolist(),
            strict=True,
        )
    ]


# -- configuration -----------------------------------------------------------------------------

_TOML = """
[ingest]
unknown_fields = "reject"

[[ingest.codecs]]
topic_filter = "v3/+/devices/+/up"
codec = "ttn"
topic_pattern = "v3/{_}/devices/{sensor_id}/up"
tags = { city = "bandung", district = "dago", kind = "air" }
names = { battery = "", co_ppm = "co[ppm]" }

[[ingest.codecs]]
topic_filter = "urbanpulse/+/+/air/+"
codec = "senml"
"""


def test_config_rules_reach_the_decoder(tmp_path: Path) -> None:
    from urbanpulse._app import pipeline_options
    from urbanpulse._config import load_settings

    path = tmp_path / "c.toml"
    path.write_text(_TOML, encoding="utf-8")
    opts = pipeline_options(load_settings(path)).decode
    assert opts.codecs == (
        CodecRule(
            topic_filter="v3/+/devices/+/up",
            codec="ttn",
            topic_pattern="v3/{_}/devices/{sensor_id}/up",
            tags=_BANDUNG_AIR,
            names={"battery": "", "co_ppm": "co[ppm]"},
        ),
        CodecRule(topic_filter="urbanpulse/+/+/air/+", codec="senml"),
    )
    decoder, registry = make(codecs=opts.codecs)
    msgs = [
        ("v3/a/devices/d-1/up", _dump(_ttn({"co_ppm": 0.5, "battery": 3.3}))),
        ("urbanpulse/x/y/air/s", b'[{"n":"pm25","v":1}]'),
        ("urbanpulse/x/y/traffic/t", b'{"intensity": 4}'),
    ]
    result = run(decoder, registry, msgs)
    assert result.dead == []
    np.testing.assert_allclose(result.batch.value, [500 * 28.010 / 24.45, 1.0, 4.0])


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ('[[ingest.codecs]]\ntopic_filter = "a/#/b"\ncodec = "senml"\n', "'#' must be"),
        ('[[ingest.codecs]]\ntopic_filter = "a/#"\ncodec = "csv"\n', "ingest.codecs.0.codec"),
        (
            '[[ingest.codecs]]\ntopic_filter = "a/#"\ncodec = "ttn"\nnames = { x = "pm1" }\n',
            "not a metric",
        ),
    ],
)
def test_config_refuses_bad_rules(tmp_path: Path, snippet: str, message: str) -> None:
    from urbanpulse._config import load_settings
    from urbanpulse._errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(snippet, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_settings(path)
