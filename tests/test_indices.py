"""ISPU, US AQI, NowCast, traffic LOS and the index tracker: worked examples and edges."""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors._indices import (
    AQI_CATEGORIES,
    AQI_POLLUTANTS,
    DEFAULT_ISPU_TABLE,
    ISPU_CATEGORIES,
    LOS_LETTERS,
    MOLAR_VOLUME_L_MOL,
    IndexTracker,
    IndexTrackerConfig,
    IspuTable,
    aqi,
    aqi_category,
    is_congested,
    ispu,
    ispu_category,
    ispu_subindex,
    level_of_service,
    nowcast,
    ppb_to_ugm3,
    truncate,
    ugm3_to_ppb,
    ugm3_to_ppm,
)
from processors._rolling import HOUR_NS
from urbanpulse import Kind, ManualClock, Metric, ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._events import Severity

# --------------------------------------------------------------------------- ISPU

# upper concentration of each band (domain.md section 1), ISPU 50/100/200/300/500
ISPU_EDGES = {
    "pm10": (50, 150, 350, 420, 500),
    "pm25": (15.5, 55.4, 150.4, 250.4, 500),
    "so2": (52, 180, 400, 800, 1200),
    "co": (4000, 8000, 15000, 30000, 45000),
    "o3": (120, 235, 400, 800, 1000),
    "no2": (80, 200, 1130, 2260, 3000),
    "hc": (45, 100, 215, 432, 648),
}
ISPU_BOUNDS = (50, 100, 200, 300, 500)


def sub(p: str, *conc: float, table: IspuTable = DEFAULT_ISPU_TABLE) -> list[float]:
    return [float(x) for x in ispu_subindex(p, np.array(conc), table=table)]


def test_ispu_worked_example_pm25_35_is_74_sedang() -> None:
    r = ispu({"pm25": np.array([35.0])})
    assert r.index.tolist() == [74.0]
    assert ISPU_CATEGORIES[int(r.category[0])].name == "Sedang"
    assert r.pollutants[int(r.dominant[0])] == "pm25"


@pytest.mark.parametrize("pollutant", sorted(ISPU_EDGES))
def test_ispu_every_band_edge(pollutant: str) -> None:
    edges = ISPU_EDGES[pollutant]
    lower = (0.0, *edges[:-1])
    lower_i = (0, *ISPU_BOUNDS[:-1])
    for k, (xa, ia) in enumerate(zip(edges, ISPU_BOUNDS, strict=True)):
        # at the upper edge: exactly the band's upper index, in the band's category
        assert sub(pollutant, xa) == [ia], (pollutant, xa)
        if k < 4:
            assert ispu_category([ia]).tolist() == [k]
        # one index step above the edge: the next band (from the next band's slope)
        if k + 1 < len(edges):
            step = (edges[k + 1] - xa) / (ISPU_BOUNDS[k + 1] - ia)
            above = sub(pollutant, xa + step)[0]
            assert above == ia + 1, (pollutant, xa)
            assert int(ispu_category([above])[0]) == min(k + 1, 4)
        # the middle of the band interpolates linearly
        mid = (lower[k] + xa) / 2
        want = math.floor((lower_i[k] + ia) / 2 + 0.5)
        assert sub(pollutant, mid) == [want], (pollutant, mid)


def test_ispu_categories_and_colours() -> None:
    idx = [0, 50, 51, 100, 101, 200, 201, 300, 301, 500, math.nan]
    assert ispu_category(idx).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, -1]
    assert [c.name for c in ISPU_CATEGORIES] == [
        "Baik",
        "Sedang",
        "Tidak Sehat",
        "Sangat Tidak Sehat",
        "Berbahaya",
    ]
    assert [c.name_en for c in ISPU_CATEGORIES] == [
        "Good",
        "Moderate",
        "Unhealthy",
        "Very Unhealthy",
        "Hazardous",
    ]
    assert [c.colour for c in ISPU_CATEGORIES] == [
        "#00cc00",
        "#0000cc",
        "#cccc00",
        "#cc0000",
        "#000000",
    ]
    assert ISPU_CATEGORIES[1].rgb == (0, 0, 204)


def test_ispu_above_top_is_capped_and_flagged_or_extrapolated() -> None:
    r = ispu({"pm25": np.array([499.0, 500.0, 600.0])})
    assert r.index.tolist() == [499.0, 500.0, 500.0]
    assert r.beyond[:, r.pollutants.index("pm25")].tolist() == [False, False, True]
    extra = dataclasses.replace(DEFAULT_ISPU_TABLE, above_top="extrapolate")
    # last band: 200 index points over 249.6 ug/m3
    assert sub("pm25", 600.0, table=extra) == [math.floor(200 / 249.6 * 349.6 + 300 + 0.5)]


def test_ispu_rounding_and_band_start_options() -> None:
    # PM10 first band: I = X exactly, so 12.5 -> 12.5
    assert sub("pm10", 12.5, 12.49) == [13.0, 12.0]
    floor = dataclasses.replace(DEFAULT_ISPU_TABLE, rounding="floor")
    assert sub("pm10", 12.5, 12.99, table=floor) == [12.0, 12.0]
    # bands starting at 51: just above 15.5 the index is 51, not 50
    plus_one = dataclasses.replace(DEFAULT_ISPU_TABLE, band_start_offset=1.0)
    assert sub("pm25", 15.5, 15.51, table=plus_one) == [50.0, 51.0]
    assert sub("pm25", 15.51) == [50.0]
    assert sub("pm25", 35.0, table=plus_one) == [math.floor(49 / 39.9 * 19.5 + 51 + 0.5)]


def test_ispu_missing_negative_and_overall() -> None:
    r = ispu(
        {
            "pm25": np.array([35.0, np.nan, -3.0, np.nan]),
            "pm10": np.array([180.0, 20.0, np.nan, np.nan]),
            "co": np.array([1000.0, np.nan, np.nan, np.nan]),
        }
    )
    j = r.pollutants.index
    assert r.sub[0, j("pm10")] == 115.0  # 100 + 100/200 * 30
    assert r.index.tolist()[:3] == [115.0, 20.0, 0.0]
    assert math.isnan(r.index[3])
    assert [r.pollutants[d] if d >= 0 else "" for d in r.dominant] == ["pm10", "pm10", "pm25", ""]
    assert r.category.tolist() == [2, 0, 0, -1]
    assert np.isnan(r.sub[:, j("hc")]).all()
    # ties: the first pollutant in table order (pm10 before pm25)
    tie = ispu({"pm25": np.array([15.5]), "pm10": np.array([50.0])})
    assert tie.pollutants[int(tie.dominant[0])] == "pm10"


def test_ispu_table_is_overridable_and_validated() -> None:
    t = IspuTable(averaging_hours={**DEFAULT_ISPU_TABLE.averaging_hours, "o3": 8})
    assert t.averaging_hours["o3"] == 8
    assert DEFAULT_ISPU_TABLE.averaging_hours["pm25"] == 24
    with pytest.raises(ValueError, match="increase"):
        IspuTable(upper_ugm3={**DEFAULT_ISPU_TABLE.upper_ugm3, "pm25": (15.5, 10, 20, 30, 40)})
    with pytest.raises(ValueError, match="misses"):
        IspuTable(averaging_hours={"pm25": 24})
    with pytest.raises(ValueError, match="not ISPU pollutants"):
        ispu({"benzene": np.array([1.0])})


# --------------------------------------------------------------------------- AQI

# (input, concentration, expected AQI) on both sides of every breakpoint
AQI_EDGES: dict[str, list[tuple[float, int]]] = {
    "pm25": [
        (0.0, 0),
        (9.0, 50),
        (9.05, 50),
        (9.1, 51),
        (35.0, 99),
        (35.4, 100),
        (35.49, 100),
        (35.5, 101),
        (55.4, 150),
        (55.5, 151),
        (125.4, 200),
        (125.5, 201),
        (225.4, 300),
        (225.5, 301),
        (325.4, 500),
        (325.5, 500),
    ],
    "pm10": [
        (54, 50),
        (54.9, 50),
        (55, 51),
        (154, 100),
        (155, 101),
        (254, 150),
        (255, 151),
        (354, 200),
        (355, 201),
        (424, 300),
        (425, 301),
        (604, 500),
    ],
    "co": [
        (4.4, 50),
        (4.49, 50),
        (4.5, 51),
        (9.4, 100),
        (9.5, 101),
        (12.4, 150),
        (12.5, 151),
        (15.4, 200),
        (15.5, 201),
        (30.4, 300),
        (30.5, 301),
        (50.4, 500),
    ],
    "no2": [
        (53, 50),
        (53.9, 50),
        (54, 51),
        (100, 100),
        (101, 101),
        (360, 150),
        (361, 151),
        (649, 200),
        (650, 201),
        (1249, 300),
        (1250, 301),
        (2049, 500),
    ],
    "so2": [(35, 50), (35.9, 50), (36, 51), (75, 100), (76, 101), (185, 150), (186, 151)],
    "o3_8h": [
        (0.054, 50),
        (0.0549, 50),
        (0.055, 51),
        (0.070, 100),
        (0.071, 101),
        (0.085, 150),
        (0.086, 151),
        (0.105, 200),
        (0.106, 201),
        (0.200, 300),
    ],
}
COLUMN = {"o3_8h": "o3", "so2": "so2"}


@pytest.mark.parametrize("key", sorted(AQI_EDGES))
def test_aqi_every_breakpoint_with_truncation(key: str) -> None:
    conc, want = zip(*AQI_EDGES[key], strict=True)
    r = aqi({key: np.array(conc, dtype=np.float64)})
    got = r.sub[:, AQI_POLLUTANTS.index(COLUMN.get(key, key))]
    assert got.tolist() == [float(w) for w in want]
    assert r.index.tolist() == [float(w) for w in want]


def test_aqi_worked_example_and_beyond() -> None:
    r = aqi({"pm25": np.array([35.0, 325.4, 400.0])})
    assert r.index.tolist() == [99.0, 500.0, 500.0]
    assert AQI_CATEGORIES[int(r.category[0])].name == "Moderate"
    assert r.beyond[:, 0].tolist() == [False, False, True]


def test_aqi_o3_one_hour_and_so2_24h_rules() -> None:
    r = aqi(
        {
            "o3_8h": np.array([0.060, 0.060, 0.250, 0.250, np.nan]),
            "o3_1h": np.array([0.100, 0.170, 0.300, np.nan, 0.125]),
        }
    )
    o3 = r.sub[:, AQI_POLLUTANTS.index("o3")]
    # 8-h 0.060 -> 51 + 49/15*5 = 67.3; 1-h below 0.125 defines nothing;
    # 0.170 -> 151 + 49/39*5 = 157.3; 0.300 -> 201 + 99/199*95 = 248.3
    assert o3.tolist() == [67.0, 157.0, 248.0, 300.0, 101.0]
    assert r.beyond[:, AQI_POLLUTANTS.index("o3")].tolist() == [False, False, False, True, False]
    s = aqi(
        {
            "so2": np.array([304.0, 305.0, 400.0, 400.0, 400.0]),
            "so2_24h": np.array([700.0, np.nan, 200.0, 305.0, 700.0]),
        }
    )
    so2 = s.sub[:, AQI_POLLUTANTS.index("so2")]
    assert so2.tolist() == [200.0, 200.0, 200.0, 201.0, 348.0]


def test_aqi_categories_and_colours() -> None:
    idx = [0, 50, 51, 100, 101, 150, 151, 200, 201, 300, 301, 500, math.nan]
    assert aqi_category(idx).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, -1]
    assert [c.rgb for c in AQI_CATEGORIES] == [
        (0, 228, 0),
        (255, 255, 0),
        (255, 126, 0),
        (255, 0, 0),
        (143, 63, 151),
        (126, 0, 35),
    ]
    assert AQI_CATEGORIES[2].name == "Unhealthy for Sensitive Groups"


def test_unit_conversions_at_25c_1atm() -> None:
    assert pytest.approx(24.465, abs=1e-3) == MOLAR_VOLUME_L_MOL
    # 1 ppb NO2 = 46.01 / 24.465 ug/m3; 1 ppm CO = 1145 ug/m3; 1 ppm O3 = 1962 ug/m3
    assert ppb_to_ugm3([1.0], 46.01)[0] == pytest.approx(1.8806, abs=1e-4)
    assert ugm3_to_ppm([1145.0], 28.01)[0] == pytest.approx(1.0, abs=1e-3)
    assert ugm3_to_ppm([1962.0], 48.00)[0] == pytest.approx(1.0, abs=1e-3)
    assert ugm3_to_ppb([261.9], 64.07)[0] == pytest.approx(100.0, abs=0.01)
    x = np.array([0.0, 12.3, 4567.0])
    np.testing.assert_allclose(ppb_to_ugm3(ugm3_to_ppb(x, 64.07), 64.07), x)


def test_truncate_absorbs_binary_error() -> None:
    assert truncate([9.1, 9.19, 35.45, 0.0549, -0.05], 1).tolist() == [9.1, 9.1, 35.4, 0.0, -0.1]
    assert truncate([0.0549, 0.055], 3).tolist() == [0.054, 0.055]
    # 1.001 * 1000 is 1000.9999999999999 in binary: a plain floor would give 1.0
    assert truncate([1.001, 1.015], 3).tolist() == [1.001, 1.015]


# --------------------------------------------------------------------------- NowCast


def nowcast_ref(hours: list[float]) -> float:
    """Straight from the EPA fact sheet, one row at a time."""
    recent = [c for c in hours[:3] if not math.isnan(c)]
    if len(recent) < 2:
        return math.nan
    present = [(i, c) for i, c in enumerate(hours) if not math.isnan(c)]
    cmax = max(c for _, c in present)
    cmin = min(c for _, c in present)
    w = 1.0 if cmax <= 0 else max(1 - (cmax - cmin) / cmax, 0.5)
    return math.fsum(w**i * c for i, c in present) / math.fsum(w**i for i, _ in present)


def test_nowcast_pulse_example() -> None:
    # a single 71 ug/m3 hour after hours of 0: w = 0.5, NowCast = 71 / sum(0.5^i)
    hours = np.zeros((1, 12))
    hours[0, 0] = 71.0
    nc = nowcast(hours)
    assert nc[0] == pytest.approx(71 / (2 - 0.5**11))
    r = aqi({"pm25": nc})
    assert r.index.tolist() == [101.0]  # 35.508 -> 35.5 -> USG
    assert AQI_CATEGORIES[int(r.category[0])].name == "Unhealthy for Sensitive Groups"


def test_nowcast_weights_and_missing_hours() -> None:
    nan = math.nan
    rows: list[list[float]] = [
        [20.0] * 12,  # constant -> w = 1 -> the mean
        [30, 28, 26, 24, 22, 20, 19, 18, 17, 16, 15, 15],  # w = 0.5 exactly
        [30, 29, 28, 27, 26, 25, 25, 25, 25, 25, 25, 24],  # w = 0.8
        [nan, 10, 12, *[11.0] * 9],  # 2 of the 3 most recent: valid
        [10, nan, 12, *[nan] * 9],  # valid, gaps skipped
        [nan, nan, 12, *[11.0] * 9],  # only 1 of 3: NaN
        [10, nan, nan, *[11.0] * 9],  # only 1 of 3: NaN
        [0.0] * 12,  # max 0: w = 1, NowCast 0
    ]
    got = nowcast(np.array(rows, dtype=np.float64))
    want = [nowcast_ref([float(x) for x in r]) for r in rows]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == 20.0
    assert math.isnan(got[5])
    assert math.isnan(got[6])
    w = 0.8
    assert got[2] == pytest.approx(
        sum(w**i * c for i, c in enumerate(rows[2])) / sum(w**i for i in range(12))
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.just(math.nan), st.floats(0, 500)), min_size=12, max_size=12),
        min_size=1,
        max_size=6,
    )
)
def test_nowcast_matches_reference(rows: list[list[float]]) -> None:
    got = nowcast(np.array(rows, dtype=np.float64))
    np.testing.assert_allclose(got, [nowcast_ref(r) for r in rows], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- traffic


def test_level_of_service_boundaries() -> None:
    speeds = [81, 80, 67.1, 67, 50.1, 50, 40.1, 40, 30.1, 30, 0]
    codes = level_of_service(speeds, 100.0)
    assert "".join(LOS_LETTERS[c] for c in codes) == "ABBCCDDEEFF"
    assert level_of_service([90.0], [100.0], vc_ratio=[1.01]).tolist() == [5]
    assert level_of_service([90.0], [100.0], vc_ratio=[1.0]).tolist() == [0]
    assert level_of_service([np.nan, 50, 50], [100, np.nan, 0]).tolist() == [-1, -1, -1]


def test_congestion_flag() -> None:
    assert is_congested([89.9, 90.0, 95.0, np.nan], 100.0).tolist() == [True, False, False, False]
    assert is_congested([40.0], [50.0], share=0.8).tolist() == [False]


# --------------------------------------------------------------------------- tracker

T0 = 1_700_000_000 * 10**9 // HOUR_NS * HOUR_NS


def registry_of(n_per_district: int = 2, districts: int = 2) -> SeriesRegistry:
    reg = SeriesRegistry()
    for d in range(districts):
        for i in range(n_per_district):
            reg.resolve(SeriesKey("bandung", f"d{d}", Kind.AIR, f"s{d}{i}"))
    return reg


def pm_batch(hour: int, values: dict[int, float], metric: Metric = Metric.PM25) -> ReadingBatch:
    sid = np.array(sorted(values), np.int32)
    return ReadingBatch(
        sid=sid,
        metric=np.full(sid.shape[0], metric, np.uint8),
        ts_ns=np.full(sid.shape[0], T0 + hour * HOUR_NS + 60 * 10**9, np.int64),
        value=np.array([values[s] for s in sorted(values)], np.float64),
    )


def test_tracker_one_event_per_category_change() -> None:
    reg = registry_of(1, 1)
    tracker = IndexTracker(reg, clock=ManualClock())
    seen = []
    # steady 12 ug/m3 for 24 h, then 60 ug/m3 (AQI climbs through the NowCast)
    for h in range(40):
        u = tracker.update(pm_batch(h, {0: 12.0 if h < 24 else 60.0}))
        seen += [
            (h, e.detector, e.labels["previous_category"], e.labels["category"]) for e in u.events
        ]
        # one row per touched sensor once the NowCast has 2 hours
        assert len(u.sensors) == (h >= 1)
    # the reference: category per hour from the pure functions over the same means
    hours = [12.0] * 24 + [60.0] * 16
    want = []
    prev: dict[str, int] = {}
    for h in range(40):
        window = hours[max(0, h - 23) : h + 1]
        mean24 = sum(window) / len(window) if len(window) >= 18 else math.nan
        last12 = np.array([hours[h - i] if h - i >= 0 else math.nan for i in range(12)])
        cats = {
            "ispu": int(ispu({"pm25": np.array([mean24])}).category[0]),
            "aqi": int(aqi({"pm25": nowcast(last12[None, :])}).category[0]),
        }
        for det, cat in cats.items():
            names = ISPU_CATEGORIES if det == "ispu" else AQI_CATEGORIES
            old = prev.get(det, -1)
            if cat >= 0 and cat != old and old >= 0:
                want.append((h, det, names[old].name, names[cat].name))
            if cat >= 0:
                prev[det] = cat
    want_sensor = sorted(want)
    got_sensor = sorted(s for s in seen)
    # every change appears twice: once for the sensor, once for its district (1 sensor)
    assert got_sensor == sorted(want_sensor * 2)
    assert len(want) >= 3  # the scenario really moves through categories


def test_tracker_event_fields_and_severity() -> None:
    reg = registry_of(1, 1)
    clock = ManualClock()
    tracker = IndexTracker(reg, clock=clock)
    for h in range(12):
        tracker.update(pm_batch(h, {0: 5.0}))
    u = tracker.update(pm_batch(12, {0: 150.0}))
    aqi_events = [e for e in u.events if e.detector == "aqi"]
    assert len(aqi_events) == 2
    sensor, district = sorted(aqi_events, key=lambda e: e.sensor_id, reverse=True)
    assert sensor.sensor_id == "s00"
    assert district.sensor_id == ""
    assert district.labels["scope"] == "district"
    assert sensor.state == "change"
    assert sensor.severity is Severity.WARNING  # NowCast ~77 -> 163 Unhealthy
    assert sensor.labels["category"] == "Unhealthy"
    assert sensor.labels["previous_category"] == "Good"
    assert sensor.labels["direction"] == "worse"
    assert sensor.labels["dominant"] == "pm25"
    assert sensor.metric == "pm25"
    assert sensor.event_ns == T0 + 12 * HOUR_NS + 60 * 10**9
    assert sensor.detected_ns == clock.now_ns()
    assert sensor.city == "bandung"
    assert sensor.district == "d0"
    # stable afterwards: no event
    assert tracker.update(pm_batch(12, {0: 150.0})).events == []


def test_first_category_is_silent_unless_severe() -> None:
    reg = registry_of(2, 1)
    tracker = IndexTracker(reg, clock=ManualClock())
    events = []
    for h in range(3):
        events += tracker.update(pm_batch(h, {0: 10.0, 1: 300.0})).events
    # sensor 1 starts Hazardous (AQI): one event for it and one for the district
    firsts = [(e.sensor_id, e.labels["category"], e.severity) for e in events]
    assert ("s01", "Hazardous", Severity.CRITICAL) in firsts
    assert ("", "Hazardous", Severity.CRITICAL) in firsts
    assert all(e.labels["direction"] == "first" for e in events)
    assert not [e for e in events if e.sensor_id == "s00"]
    loud = IndexTracker(
        reg, clock=ManualClock(), config=IndexTrackerConfig(first_event_min_severity=Severity.INFO)
    )
    first = loud.update(pm_batch(0, {0: 10.0}))
    assert first.events == []  # NowCast needs 2 of the 3 most recent hours
    second = loud.update(pm_batch(1, {0: 10.0}))
    assert [e.labels["category"] for e in second.events if e.sensor_id == "s00"] == ["Moderate"]


def test_district_index_is_max_over_sensors_and_mean_is_exposed() -> None:
    reg = registry_of(3, 2)  # sids 0-2 in d0, 3-5 in d1
    tracker = IndexTracker(reg, clock=ManualClock())
    vals = {0: 10.0, 1: 40.0, 2: 20.0, 3: 5.0, 4: 5.0, 5: 5.0}
    u = None
    for h in range(24):
        u = tracker.update(pm_batch(h, vals))
    assert u is not None
    sensors = {int(s): float(i) for s, i in zip(u.sensors.sid, u.sensors.ispu, strict=True)}
    d = u.districts
    assert sorted(tracker.district_keys[i] for i in d.district) == [
        ("bandung", "d0"),
        ("bandung", "d1"),
    ]
    k = d.district.tolist().index(0)
    assert d.ispu[k] == max(sensors[0], sensors[1], sensors[2])
    assert d.ispu_mean[k] == pytest.approx((sensors[0] + sensors[1] + sensors[2]) / 3)
    assert d.n_sensors[k] == 3
    assert d.sid[k] == -1
    aqi_s = {int(s): float(i) for s, i in zip(u.sensors.sid, u.sensors.aqi, strict=True)}
    assert d.aqi[k] == max(aqi_s[0], aqi_s[1], aqi_s[2])
    assert d.ispu_sub.shape == (2, len(DEFAULT_ISPU_TABLE.pollutants))
    # a batch touching only d1 yields only d1's row
    u2 = tracker.update(pm_batch(23, {4: 5.0}))
    assert u2.districts.district.tolist() == [1]
    # a sensor that went silent drops out of its district after the max age
    for h in range(24, 28):
        u3 = tracker.update(pm_batch(h, {0: 10.0, 2: 20.0}))
    k = u3.districts.district.tolist().index(0)
    assert u3.districts.n_sensors[k] == 2
    assert u3.districts.ispu[k] == u3.sensors.ispu.max()


def test_district_events_follow_the_district_max() -> None:
    reg = registry_of(2, 1)
    tracker = IndexTracker(reg, clock=ManualClock())
    for h in range(12):
        tracker.update(pm_batch(h, {0: 5.0, 1: 5.0}))
    # one sensor turns bad: both it and the district change; the other sensor does not
    u = tracker.update(pm_batch(12, {0: 5.0, 1: 150.0}))
    got = sorted((e.detector, e.sensor_id) for e in u.events)
    assert got == [("aqi", ""), ("aqi", "s01")]
    # the other sensor worsening within the district's category: only its own event
    u = tracker.update(pm_batch(13, {0: 60.0, 1: 150.0}))
    assert sorted((e.detector, e.sensor_id) for e in u.events) == [("aqi", "s00")]


def test_tracker_snapshot_restore_does_not_refire() -> None:
    reg = registry_of(1, 1)
    tracker = IndexTracker(reg, clock=ManualClock())
    for h in range(12):
        tracker.update(pm_batch(h, {0: 5.0}))
    assert tracker.update(pm_batch(12, {0: 150.0})).events
    buf = io.BytesIO()
    np.savez(buf, **cast(dict[str, Any], tracker.snapshot()))
    buf.seek(0)
    with np.load(buf) as npz:
        restored = IndexTracker.restore(dict(npz), reg, clock=ManualClock())
    assert restored.district_keys == tracker.district_keys
    assert restored.update(pm_batch(12, {0: 150.0})).events == []
    a = tracker.update(pm_batch(13, {0: 500.0}))
    b = restored.update(pm_batch(13, {0: 500.0}))
    assert [e.message for e in a.events] == [e.message for e in b.events]
    assert a.events


def test_tracker_ignores_non_pollutant_readings_and_converts_gases() -> None:
    reg = registry_of(1, 1)
    tracker = IndexTracker(reg, clock=ManualClock())
    u = tracker.update(pm_batch(0, {0: 29.0}, Metric.TEMPERATURE))
    assert len(u.sensors) == 0
    assert u.events == []
    # NO2 1 h: 200 ug/m3 = 106.3 ppb -> 101 + 49/259 * 5 = 101.9 -> 102; ISPU NO2 1 h 200 -> 100
    u = tracker.update(pm_batch(0, {0: 200.0}, Metric.NO2))
    assert u.sensors.aqi.tolist() == [102.0]
    assert u.sensors.ispu.tolist() == [100.0]
    assert u.sensors.aqi_sub[0, AQI_POLLUTANTS.index("no2")] == 102.0


def test_observe_then_evaluate_equals_one_update_of_the_same_readings() -> None:
    """The pipeline observes every micro-batch and evaluates on a timer."""
    reg = registry_of(2, 2)
    batches = [pm_batch(h, {s: 10.0 + 7 * h + s for s in range(4)}) for h in range(30)]
    split = IndexTracker(reg, clock=ManualClock())
    whole = IndexTracker(reg, clock=ManualClock())
    for group in (batches[:20], batches[20:26], batches[26:]):
        for b in group:
            split.observe(b)
        got = split.evaluate()
        want = whole.update(ReadingBatch.concat(group))
        assert [(e.detector, e.sensor_id, e.labels["category"]) for e in got.events] == [
            (e.detector, e.sensor_id, e.labels["category"]) for e in want.events
        ]
        np.testing.assert_array_equal(got.sensors.sid, want.sensors.sid)
        np.testing.assert_array_equal(got.sensors.ispu, want.sensors.ispu)
    assert len(split.evaluate().sensors) == 0  # nothing observed since
