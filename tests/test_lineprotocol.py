"""Unit tests of the line-protocol builder (outputs._lineprotocol)."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from outputs import (
    InvalidTagError,
    TagCache,
    encode_aggregates,
    encode_readings,
    escape_measurement,
    escape_string_field,
    escape_tag,
    window_label,
)
from urbanpulse import Kind, Metric, ReadingBatch, ReadingFlag, SeriesKey, SeriesRegistry

# --------------------------------------------------------------------------- a small parser

_ESCAPABLE = ",= "


@dataclasses.dataclass
class ParsedPoint:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | int | str]
    ts: int


def _scan(line: str, i: int, stops: str) -> tuple[str, int]:
    """Read a token up to an unescaped char in ``stops``; unescape ``\\,`` ``\\=`` ``\\ ``.

    Like InfluxDB 1.x, a backslash escapes the next char only if it is special;
    any other backslash is literal.
    """
    out: list[str] = []
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and line[i + 1] in _ESCAPABLE:
            out.append(line[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _field_value(text: str) -> float | int | str:
    if text.startswith('"'):
        assert len(text) >= 2, text
        assert text.endswith('"'), text
        return re.sub(r"\\([\\\"])", r"\1", text[1:-1])
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def _scan_field_value(line: str, i: int) -> tuple[str, int]:
    if line[i] != '"':
        j = i
        while j < len(line) and line[j] not in ", ":
            j += 1
        return line[i:j], j
    j = i + 1
    while line[j] != '"':
        j += 2 if line[j] == "\\" else 1
    return line[i : j + 1], j + 1


def parse_line(line: str) -> ParsedPoint:
    """Parse one line-protocol line (measurement[,tags] fields [timestamp])."""
    assert "\n" not in line
    measurement, i = _scan(line, 0, ", ")
    assert measurement, line
    tags: dict[str, str] = {}
    while line[i] == ",":
        key, i = _scan(line, i + 1, "=")
        assert line[i] == "=", line
        value, i = _scan(line, i + 1, ", =")
        assert line[i] != "=", f"unescaped '=' in a tag value: {line!r}"
        assert key, line
        assert value, line
        assert key not in tags, f"duplicate tag {key!r}"
        tags[key] = value
    assert line[i] == " ", line
    fields: dict[str, float | int | str] = {}
    i += 1
    while True:
        key, i = _scan(line, i, "=")
        assert line[i] == "=", line
        raw, i = _scan_field_value(line, i + 1)
        assert key not in fields, f"duplicate field {key!r}"
        fields[key] = _field_value(raw)
        if i >= len(line) or line[i] == " ":
            break
        assert line[i] == ",", line
        i += 1
    rest = line[i:].strip()
    assert re.fullmatch(r"-?\d+", rest), f"bad timestamp in {line!r}"
    return ParsedPoint(measurement, tags, fields, int(rest))


def parse_body(data: bytes) -> list[ParsedPoint]:
    if not data:
        return []
    return [parse_line(line) for line in data.decode("utf-8").split("\n")]


# --------------------------------------------------------------------------- helpers


def _batch(
    sid: list[int],
    metric: list[int],
    ts: list[int],
    value: list[float],
    flags: list[int] | None = None,
) -> ReadingBatch:
    return ReadingBatch(
        sid=np.array(sid, dtype=np.int32),
        metric=np.array(metric, dtype=np.uint8),
        ts_ns=np.array(ts, dtype=np.int64),
        value=np.array(value, dtype=np.float64),
        flags=np.array(flags if flags is not None else [0] * len(sid), dtype=np.uint8),
    )


def _registry(*keys: SeriesKey) -> SeriesRegistry:
    registry = SeriesRegistry()
    for key in keys:
        registry.resolve(key)
    return registry


AIR = SeriesKey("Madrid", "Centro", Kind.AIR, "aq-1")
TRAFFIC = SeriesKey("Madrid", "Centro", Kind.TRAFFIC, "tr-7", lane=2)
T0 = 1_700_000_000_123_456_789


# --------------------------------------------------------------------------- escaping

REPLACED = "\ufffd"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("two words", r"two\ words"),
        ("a,b", r"a\,b"),
        ("k=v", r"k\=v"),
        ('say "hi"', r'say\ "hi"'),
        ("it's", "it's"),
        ("back\\slash", "back\\slash"),  # literal everywhere: kept as is
        ("trailing\\", "trailing" + REPLACED),  # no portable spelling
        ("\\,", REPLACED + "\\,"),
        ("\\=", REPLACED + "\\="),
        ("\\ x", REPLACED + "\\ x"),
        ("a\\\\b", "a" + REPLACED + "\\b"),
        ("new\nline", f"new{REPLACED}line"),
        ("cr\rlf", f"cr{REPLACED}lf"),
        ("tab\tbed", f"tab{REPLACED}bed"),
        ("nul\x00", f"nul{REPLACED}"),
        ("del\x7f", f"del{REPLACED}"),
        ("c1\x85", f"c1{REPLACED}"),
        ("Zürich", "Zürich"),
        ("東京 駅", r"東京\ 駅"),
        ("🚦", "🚦"),
        (b"caf\xe9".decode("utf-8", "surrogateescape"), f"caf{REPLACED}"),
        ("#comment", "#comment"),
        ("=,  ,=", r"\=\,\ \ \,\="),
    ],
)
def test_escape_tag_table(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped
    # Every escaped value parses back to one tag, equal to the sanitised text.
    point = parse_line(f"m,k={escaped} f=1 1")
    assert point.tags == {"k": escaped.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")}


@pytest.mark.parametrize("raw", ["new\nline", "trailing\\", "a\\,b", "ok\udcff"])
def test_escape_tag_reject_policy(raw: str) -> None:
    with pytest.raises(InvalidTagError):
        escape_tag(raw, "reject")


def test_escape_tag_reject_policy_accepts_clean_text() -> None:
    assert escape_tag("a b\\c", "reject") == "a\\ b\\c"


def test_escape_measurement() -> None:
    assert escape_measurement("air quality,x=1") == r"air\ quality\,x=1"
    assert escape_measurement("m\n") == "m" + REPLACED
    with pytest.raises(ValueError, match="empty"):
        escape_measurement("")


def test_escape_string_field() -> None:
    assert escape_string_field('he said "a\\b"\n') == '"he said \\"a\\\\b\\"\n"'
    assert _field_value(escape_string_field('q"\\')) == 'q"\\'


# --------------------------------------------------------------------------- raw readings


def test_rows_of_one_message_fold_into_one_point() -> None:
    registry = _registry(AIR)
    enc = encode_readings(
        _batch(
            [0, 0, 0], [Metric.PM25, Metric.PM10, Metric.TEMPERATURE], [T0] * 3, [17.2, 24.4, -3.5]
        ),
        TagCache(registry),
    )
    assert enc.data == (
        b"air,city=Madrid,district=Centro,sensor_id=aq-1 "
        b"pm25=17.2,pm10=24.4,temperature=-3.5 1700000000123456789"
    )
    assert enc.points == 1
    assert enc.skipped_no_fields == 0


def test_folding_breaks_on_series_time_and_metric_order() -> None:
    registry = _registry(AIR, TRAFFIC)
    batch = _batch(
        sid=[0, 0, 0, 0, 1, 1, 0],
        metric=[Metric.PM25, Metric.PM10, Metric.PM25, Metric.PM25, 8, 9, Metric.NO2],
        ts=[T0, T0, T0, T0 + 1, T0 + 1, T0 + 1, T0 + 1],
        value=[1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 6.0],
    )
    points = parse_body(encode_readings(batch, TagCache(registry)).data)
    assert [(p.measurement, p.fields, p.ts) for p in points] == [
        ("air", {"pm25": 1.0, "pm10": 2.0}, T0),
        ("air", {"pm25": 3.0}, T0),  # same metric again: a second message, same time
        ("air", {"pm25": 4.0}, T0 + 1),
        ("traffic", {"intensity": 5.0, "occupancy": 0.5}, T0 + 1),
        ("air", {"no2": 6.0}, T0 + 1),
    ]
    assert points[3].tags == {
        "city": "Madrid",
        "district": "Centro",
        "lane": "2",
        "sensor_id": "tr-7",
    }
    assert "lane" not in points[0].tags


def test_flags_field_only_when_set() -> None:
    registry = _registry(AIR)
    batch = _batch(
        [0, 0, 0],
        [Metric.PM25, Metric.PM10, Metric.PM25],
        [T0, T0, T0 + 1],
        [1.0, 2.0, 3.0],
        flags=[ReadingFlag.HUMID, ReadingFlag.RECEIVE_TIME, 0],
    )
    points = parse_body(encode_readings(batch, TagCache(registry)).data)
    assert points[0].fields == {"pm25": 1.0, "pm10": 2.0, "flags": 3}
    assert points[1].fields == {"pm25": 3.0}


def test_nan_and_inf_are_skipped_and_empty_points_counted() -> None:
    registry = _registry(AIR)
    batch = _batch(
        [0, 0, 0, 0, 0],
        [Metric.PM25, Metric.PM10, Metric.PM25, Metric.PM10, Metric.PM25],
        [T0, T0, T0 + 1, T0 + 1, T0 + 2],
        [math.nan, 2.0, math.inf, -math.inf, 5.0],
        flags=[0, 0, ReadingFlag.LATE, 0, 0],
    )
    enc = encode_readings(batch, TagCache(registry))
    points = parse_body(enc.data)
    assert [(p.fields, p.ts) for p in points] == [({"pm10": 2.0}, T0), ({"pm25": 5.0}, T0 + 2)]
    assert enc.points == 2
    assert enc.skipped_no_fields == 1


def test_all_nan_batch_gives_empty_body() -> None:
    enc = encode_readings(_batch([0], [0], [T0], [math.nan]), TagCache(_registry(AIR)))
    assert enc.data == b""
    assert (enc.points, enc.skipped_no_fields) == (0, 1)


def test_empty_batch() -> None:
    enc = encode_readings(ReadingBatch.empty(), TagCache(_registry()))
    assert (enc.data, enc.points) == (b"", 0)


def test_unknown_series_id_is_an_error() -> None:
    with pytest.raises(ValueError, match="series id"):
        encode_readings(_batch([3], [0], [T0], [1.0]), TagCache(_registry(AIR)))


def test_tag_cache_grows_with_the_registry() -> None:
    registry = _registry(AIR)
    cache = TagCache(registry)
    encode_readings(_batch([0], [0], [T0], [1.0]), cache)
    assert len(cache) == 1
    registry.resolve(SeriesKey("Oslo", "Sentrum", Kind.AIR, "n-2"))
    points = parse_body(encode_readings(_batch([0, 1], [0, 0], [T0, T0], [1.0, 2.0]), cache).data)
    assert [p.tags["city"] for p in points] == ["Madrid", "Oslo"]
    assert len(cache) == 2


def test_reject_policy_skips_series_and_counts() -> None:
    registry = _registry(AIR, SeriesKey("bad\ncity", "d", Kind.AIR, "x"))
    enc = encode_readings(
        _batch([0, 1, 1], [0, 0, 1], [T0, T0, T0], [1.0, 2.0, 3.0]),
        TagCache(registry, invalid_tags="reject"),
    )
    assert [p.tags["city"] for p in parse_body(enc.data)] == ["Madrid"]
    assert (enc.points, enc.skipped_invalid_tags) == (1, 1)


def test_empty_tag_values_are_left_out() -> None:
    registry = _registry(SeriesKey("Madrid", "", Kind.AIR, "s"))
    (point,) = parse_body(encode_readings(_batch([0], [0], [T0], [1.0]), TagCache(registry)).data)
    assert point.tags == {"city": "Madrid", "sensor_id": "s"}


@pytest.mark.parametrize(
    "value",
    [0.1, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 1e16, 123456789.123456789, 2.0**53 + 2],
)
def test_floats_round_trip(value: float) -> None:
    (point,) = parse_body(
        encode_readings(_batch([0], [0], [T0], [value]), TagCache(_registry(AIR))).data
    )
    assert point.fields["pm25"] == value
    assert isinstance(point.fields["pm25"], float)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_round_trips(value: float) -> None:
    (point,) = parse_body(
        encode_readings(_batch([0], [0], [T0], [value]), TagCache(_registry(AIR))).data
    )
    assert point.fields["pm25"] == value


# --------------------------------------------------------------------------- hypothesis: tags

_HOSTILE = st.sampled_from([*",= \\\"'\n\r\t\x00#\x85\u2028", "\udcff", "\ud800", "é", "東", "🚦"])
_TAG_TEXT = st.lists(st.one_of(st.characters(), _HOSTILE), max_size=12).map("".join)


def _expected_tag(text: str) -> str:
    """What the tag should read back as: ambiguous backslashes and controls -> U+FFFD."""
    text = re.sub(r"\\(?=[\\,= ]|\Z)", REPLACED, text)
    return re.sub("[\x00-\x1f\x7f-\x9f\ud800-\udfff]", REPLACED, text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_TAG_TEXT, _TAG_TEXT, _TAG_TEXT), min_size=1, max_size=6, unique=True))
def test_random_tags_round_trip_one_point_per_series(triples: list[tuple[str, str, str]]) -> None:
    registry = SeriesRegistry()
    for city, district, sensor in triples:
        registry.resolve(SeriesKey(city, district, Kind.AIR, sensor))
    n = len(registry)
    batch = _batch(
        list(range(n)), [Metric.PM25] * n, [T0 + i for i in range(n)], [float(i) for i in range(n)]
    )
    enc = encode_readings(batch, TagCache(registry))
    points = parse_body(enc.data)
    assert len(points) == n == enc.points
    for i, point in enumerate(points):
        key = registry.key(i)
        expected = {
            k: _expected_tag(v)
            for k, v in (
                ("city", key.city),
                ("district", key.district),
                ("sensor_id", key.sensor_id),
            )
            if v
        }
        assert point.measurement == "air"
        assert point.tags == expected
        assert point.fields == {"pm25": float(i)}
        assert point.ts == T0 + i


@settings(max_examples=100, deadline=None)
@given(_TAG_TEXT)
def test_text_without_hostile_chars_is_exact(text: str) -> None:
    clean = _expected_tag(text)
    # After sanitising once, text is stable and round-trips exactly.
    assert _expected_tag(clean) == clean
    registry = _registry(SeriesKey("c", "d", Kind.AIR, clean or "x"))
    (point,) = parse_body(encode_readings(_batch([0], [0], [T0], [1.0]), TagCache(registry)).data)
    assert point.tags["sensor_id"] == (clean or "x")


# --------------------------------------------------------------------------- aggregates


@dataclasses.dataclass(frozen=True)
class FakeAggregates:
    window_ms: int | NDArray[np.int64]
    sid: NDArray[np.int32]
    metric: NDArray[np.uint8]
    start_ns: NDArray[np.int64]
    count: NDArray[np.int64]
    mean: NDArray[np.float64]
    min: NDArray[np.float64]
    max: NDArray[np.float64]
    std: NDArray[np.float64]
    first: NDArray[np.float64]
    last: NDArray[np.float64]


def _aggs(window_ms: int, rows: list[tuple[Any, ...]]) -> FakeAggregates:
    cols = list(zip(*rows, strict=True))
    return FakeAggregates(
        window_ms,
        np.array(cols[0], np.int32),
        np.array(cols[1], np.uint8),
        np.array(cols[2], np.int64),
        np.array(cols[3], np.int64),
        *(np.array(c, np.float64) for c in cols[4:]),
    )


@pytest.mark.parametrize(
    ("window_ms", "label"),
    [
        (60_000, "1m"),
        (900_000, "15m"),
        (30_000, "30s"),
        (3_600_000, "1h"),
        (86_400_000, "1d"),
        (90_000, "90s"),
        (5_400_000, "90m"),
        (250, "250ms"),
    ],
)
def test_window_label(window_ms: int, label: str) -> None:
    assert window_label(window_ms) == label


def test_window_label_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        window_label(0)


def test_aggregate_lines() -> None:
    registry = _registry(AIR, TRAFFIC)
    nan = math.nan
    aggs = _aggs(
        60_000,
        [
            # sid, metric, start, count, mean, min, max, std, first, last
            (1, Metric.INTENSITY, T0, 4, 10.5, 7.0, 14.0, 2.5, 7.0, 14.0),
            (0, Metric.PM10, T0, 1, 24.4, 24.4, 24.4, nan, 24.4, 24.4),
            (0, Metric.PM25, T0, 3, 17.2, 15.0, 19.0, 1.5, 15.0, 19.0),
            (0, Metric.PM25, T0 + 60_000_000_000, 0, nan, nan, nan, nan, nan, nan),
        ],
    )
    enc = encode_aggregates(aggs, TagCache(registry))
    lines = enc.data.decode().split("\n")
    assert lines == [
        "air_1m,city=Madrid,district=Centro,sensor_id=aq-1 "
        "pm25_count=3i,pm25_mean=17.2,pm25_min=15.0,pm25_max=19.0,pm25_std=1.5,"
        "pm25_first=15.0,pm25_last=19.0,"
        "pm10_count=1i,pm10_mean=24.4,pm10_min=24.4,pm10_max=24.4,pm10_first=24.4,pm10_last=24.4"
        f" {T0}",
        "traffic_1m,city=Madrid,district=Centro,lane=2,sensor_id=tr-7 "
        "intensity_count=4i,intensity_mean=10.5,intensity_min=7.0,intensity_max=14.0,"
        f"intensity_std=2.5,intensity_first=7.0,intensity_last=14.0 {T0}",
    ]
    assert enc.points == 2
    for point in parse_body(enc.data):
        assert all(isinstance(v, int) for k, v in point.fields.items() if k.endswith("_count"))


def test_aggregates_with_per_row_window_column() -> None:
    registry = _registry(AIR)
    aggs = _aggs(0, [(0, 0, T0, 2, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0)] * 2)
    aggs = dataclasses.replace(aggs, window_ms=np.array([60_000, 900_000], dtype=np.int64))
    points = parse_body(encode_aggregates(aggs, TagCache(registry)).data)
    assert sorted(p.measurement for p in points) == ["air_15m", "air_1m"]


def test_empty_aggregates() -> None:
    aggs = _aggs(60_000, [(0, 0, T0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)])
    assert encode_aggregates(aggs, TagCache(_registry(AIR))).data == b""


def test_raw_prefixes_stay_right_when_the_registry_grows_between_batches() -> None:
    """Regression: series added after the first raw batch got a bogus measurement."""
    registry = SeriesRegistry()
    tags = TagCache(registry)
    first = registry.resolve(SeriesKey("bandung", "coblong", Kind.AIR, "a1"))
    batch = ReadingBatch(
        sid=np.array([first], np.int32),
        metric=np.array([0], np.uint8),
        ts_ns=np.array([1], np.int64),
        value=np.array([1.0]),
    )
    encode_readings(batch, tags)
    later = registry.resolve(SeriesKey("bandung", "coblong", Kind.TRAFFIC, "t1", 2))
    tags.sync()  # the pipeline syncs before each batch
    batch2 = ReadingBatch(
        sid=np.array([first, later], np.int32),
        metric=np.array([0, 8], np.uint8),
        ts_ns=np.array([2, 2], np.int64),
        value=np.array([2.0, 3.0]),
    )
    lines = encode_readings(batch2, tags).data.decode().split("\n")
    assert lines == [
        "air,city=bandung,district=coblong,sensor_id=a1 pm25=2.0 2",
        "traffic,city=bandung,district=coblong,lane=2,sensor_id=t1 intensity=3.0 2",
    ]
