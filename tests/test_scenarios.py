"""City files, weather, scenarios with fault injection, and their ground truth."""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim import (
    EXPECTED_DETECTORS,
    FaultRates,
    Fleet,
    Label,
    PowerFault,
    Scenario,
    SimOptions,
    Simulator,
    ValueModel,
    bundled_cities,
    city_fleet,
    compile_scenario,
    load_city,
    load_scenario,
    random_scenario,
    read_labels,
    write_labels,
)
from sim._cities import points_in_polygon
from urbanpulse import ConfigError, ManualClock

# Monday 2025-11-24 00:00 WIB.
START = int(datetime(2025, 11, 23, 17, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
H = 3_600_000_000_000
MS = 1_000_000

Key = tuple[str, int]
Series = dict[Key, list[tuple[int, dict[str, Any]]]]


def small_sim(scenario: Scenario | None = None, **kw: Any) -> Simulator:
    opts = SimOptions(seed=4, city="sindangraja", start_ns=START, **kw)
    return Simulator(opts, ManualClock(), scenario=scenario)


def series(messages: list[tuple[str, bytes]]) -> Series:
    """(sensor_id, lane) -> [(timestamp ms, fields)] in order."""
    out: Series = defaultdict(list)
    for topic, payload in messages:
        body = json.loads(payload)
        t = round(body.pop("dateObserved") * 1000)
        out[(topic.rsplit("/", 1)[1], int(body.get("laneId", 0)))].append((t, body))
    return out


def inside(t_ms: int, label: Label) -> bool:
    return label.start_ns <= t_ms * MS < label.end_ns


# -- city files ----------------------------------------------------------------


def test_bundled_cities_have_the_documented_sizes() -> None:
    sizes = {}
    for name, path in bundled_cities().items():
        fleet = city_fleet(load_city(path), seed=1)
        sizes[name] = len(set(fleet.sensor_id))
        # Every sensor lies inside its district's outline.
        city = load_city(path)
        for d, spec in enumerate(city.districts):
            sel = fleet.district_index == d
            on_road = fleet.corridor >= 0
            ok = points_in_polygon(
                fleet.lat[sel & ~on_road], fleet.lon[sel & ~on_road], spec.outline
            )
            assert ok.all(), (name, spec.name)
    assert sizes == {"sindangraja": 50, "tirtamaya": 1000, "nusapura": 10_000}
    assert {p.suffix for p in bundled_cities().values()} == {".toml", ".json"}


def test_city_file_positions_are_fixed_and_values_follow_the_seed() -> None:
    path = bundled_cities()["tirtamaya"]
    a, b = city_fleet(load_city(path), seed=1), city_fleet(load_city(path), seed=2)
    assert a.sensor_id == b.sensor_id
    assert np.array_equal(a.lat, b.lat)
    assert not np.array_equal(a.stream_key, b.stream_key)
    # Traffic stations sit on corridors, ordered along them.
    trf = a.corridor >= 0
    assert trf.sum() > 500
    assert (a.corridor_pos_km[trf] >= 0).all()
    assert set(a.corridor[trf].tolist()) == set(range(len(a.corridors)))


def test_ten_thousand_sensor_city_loads_and_generates_quickly() -> None:
    t0 = time.perf_counter()
    s = Simulator(SimOptions(seed=1, city="nusapura", start_ns=START), ManualClock())
    batch = s.next_batch(START + 60_000_000_000)
    elapsed = time.perf_counter() - t0
    assert len({t.rsplit("/", 1)[1] for t, _ in batch}) == 10_000
    # Every air sensor once, every traffic lane twice in a minute.
    n_air = int((s.fleet.kind == 0).sum())
    assert len(batch) == n_air + 2 * (s.fleet.n_streams - n_air)
    assert elapsed < 2.0, elapsed


CITY_OK = """
name = "testville"
[[districts]]
name = "north"
outline = [[-6.0, 107.0], [-6.0, 107.1], [-6.05, 107.1], [-6.05, 107.0]]
[[districts]]
name = "south"
outline = [[-6.05, 107.0], [-6.05, 107.1], [-6.1, 107.1], [-6.1, 107.0]]
[[corridors]]
name = "main-road"
path = [[-6.02, 107.0], [-6.02, 107.1]]
[[sensors]]
id = "aq-1"
kind = "air"
lat = -6.01
lon = 107.05
[[sensors]]
id = "tc-1"
kind = "traffic"
lat = -6.02
lon = 107.02
lanes = 2
corridor = "main-road"
[[sensors]]
id = "tc-2"
kind = "traffic"
lat = -6.02
lon = 107.04
corridor = "main-road"
"""


def test_a_listed_city_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CITY_OK)
    fleet = city_fleet(load_city(path), seed=0)
    assert fleet.sensor_id == ("aq-1", "tc-1", "tc-1", "tc-2")
    assert fleet.lane.tolist() == [0, 1, 2, 1]
    assert [fleet.district(i) for i in range(4)] == ["north"] * 4
    # Positions along the corridor (west to east, ~2.2 km apart per 0.02 deg).
    assert fleet.corridor_pos_km[3] - fleet.corridor_pos_km[1] == pytest.approx(2.21, abs=0.05)
    # The same file as JSON.
    import tomllib

    jpath = tmp_path / "c.json"
    jpath.write_text(json.dumps(tomllib.loads(CITY_OK)))
    assert city_fleet(load_city(jpath), seed=0).sensor_id == fleet.sensor_id


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (('id = "aq-1"', 'id = "tc-1"'), "duplicate sensor id 'tc-1'"),
        (("lat = -6.01", "lat = -5.5"), "inside no district"),
        (('kind = "air"', 'kind = "air"\ndistrict = "south"'), "outside district 'south'"),
        (('kind = "air"', 'kind = "air"\ndistrict = "east"'), "unknown district 'east'"),
        (('corridor = "main-road"\n[[sensors]]', 'corridor = "ring"\n[[sensors]]'), "corridor"),
        (('kind = "air"', 'kind = "air"\nmodel = "loop"'), "cannot be model 'loop'"),
        (('name = "north"', 'name = "North Side"'), r"districts\.0\.name"),
        (("lanes = 2", "lanes = 3"), r"sensors\.1\.lanes"),
        (("[[sensors]]", "[[sensor]]"), "sensor: Extra inputs"),
        (('name = "testville"', "name = "), "not valid TOML"),
    ],
)
def test_city_file_errors_name_the_field(
    tmp_path: Path, change: tuple[str, str], match: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CITY_OK.replace(*change, 1))
    with pytest.raises(ConfigError, match=match):
        load_city(path)


def test_city_file_without_sensors_or_area(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    spec: dict[str, Any] = {
        "name": "x",
        "districts": [{"name": "a", "outline": [[0, 0], [0, 1], [1, 1]]}],
    }
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="no sensors"):
        load_city(path)
    spec["districts"][0]["outline"] = [[0, 0], [0, 1], [0, 2]]
    spec["generate"] = {"n_air": 3}
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="no area"):
        load_city(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_city(tmp_path / "missing.toml")


# -- weather -------------------------------------------------------------------


def test_rain_washes_out_pm_and_regional_field_is_applied_exactly() -> None:
    fleet = city_fleet(load_city(bundled_cities()["sindangraja"]), seed=3)
    ref = np.flatnonzero(fleet.model == 1)
    ts = START + np.arange(0, 5 * 24 * 3600, 600, dtype=np.int64) * 10**9
    stream = np.repeat(ref, ts.shape[0]).astype(np.intp)
    t = np.tile(ts, ref.shape[0])
    dyn, static = ValueModel(fleet), ValueModel(fleet, dynamics=False)
    wx = dyn.weather(stream, t)
    ratio = dyn.air(stream, t).pm25 / static.air(stream, t).pm25
    assert np.allclose(ratio, np.exp(0.2 * wx.field) * (1 - 0.55 * wx.washout), rtol=1e-9)
    assert (wx.washout > 0.3).mean() > 0.02  # it does rain
    # Rain makes the air humid: RH is higher while it is wet.
    rh_dyn = dyn.air(stream, t).relative_humidity
    rh_static = static.air(stream, t).relative_humidity
    wet = wx.wet > 0.3
    assert (rh_dyn[wet] - rh_static[wet]).mean() > 3.0
    assert np.array_equal(rh_dyn[wx.wet == 0], rh_static[wx.wet == 0])


def test_rain_is_mostly_in_the_afternoon() -> None:
    fleet = Fleet.generate(seed=2, n_air=1, n_traffic=0)
    days = np.arange(120, dtype=np.int64) * 24 * H
    s = np.zeros(days.shape[0], dtype=np.intp)
    vm = ValueModel(fleet)
    # Hours are UTC here; 15:30 WIB = 08:30 UTC, 03:30 WIB = 20:30 UTC.
    afternoon = vm.weather(s, START + days + 15 * H + H // 2).rain > 0
    night = vm.weather(s, START + days + 3 * H + H // 2).rain > 0
    assert afternoon.mean() > 3 * night.mean()
    assert afternoon.mean() > 0.08


def test_neighbours_share_the_regional_field() -> None:
    fleet = city_fleet(load_city(bundled_cities()["tirtamaya"]), seed=1)
    vm = ValueModel(fleet)
    ts = START + np.arange(0, 4 * 24 * 3600, 900, dtype=np.int64) * 10**9
    air = np.flatnonzero(fleet.kind == 0)[:200]
    fields = np.array([vm.weather(np.full(ts.shape, s, np.intp), ts).field for s in air])
    corr = np.corrcoef(fields)
    xy = np.stack([fleet.lat[air] * 111.3, fleet.lon[air] * 110.4], axis=1)
    dist = np.linalg.norm(xy[:, None] - xy[None, :], axis=2)
    near = corr[(dist > 0) & (dist < 1.0)]
    far = corr[dist > 8.0]
    assert near.shape[0] > 20
    assert far.shape[0] > 20
    assert np.median(near) > 0.9
    assert np.median(far) < np.median(near) - 0.3


# -- scenario application ------------------------------------------------------


def pick(fleet: Fleet, prefix: str, district: str, n: int = 0, model: int | None = None) -> str:
    ids = [
        fleet.sensor_id[i]
        for i in range(fleet.n_streams)
        if fleet.sensor_id[i].startswith(prefix)
        and fleet.district(i) == district
        and (model is None or int(fleet.model[i]) == model)
    ]
    return sorted(set(ids))[n]


def incident_pair(fleet: Fleet) -> tuple[str, str]:
    """A station and the nearest station upstream on its corridor (< 1.2 km)."""
    best: tuple[float, str, str] | None = None
    for i in np.flatnonzero(fleet.corridor >= 0).tolist():
        same = (fleet.corridor == fleet.corridor[i]) & (
            np.asarray(fleet.sensor_id) != fleet.sensor_id[i]
        )
        d = fleet.corridor_pos_km[i] - fleet.corridor_pos_km
        ok = np.flatnonzero(same & (d > 0.2) & (d < 1.2))
        if ok.shape[0]:
            j = int(ok[np.argmin(d[ok])])
            if best is None or d[j] < best[0]:
                best = (float(d[j]), fleet.sensor_id[i], fleet.sensor_id[j])
    assert best is not None
    return best[1], best[2]


@pytest.fixture(scope="module")
def injected() -> tuple[Simulator, Series, Series, dict[str, str]]:
    fleet = small_sim().fleet
    who = {
        "stuck": pick(fleet, "aq", "sukalaksana", 0),
        "dropout": pick(fleet, "aq", "sukalaksana", 1),
        "spike": pick(fleet, "aq", "pasirhalang", 0),
        "oor": pick(fleet, "aq", "pasirhalang", 1),
        "skew": pick(fleet, "aq", "pasirhalang", 2),
    }
    who["power"] = next(
        sid
        for n in range(5)
        if (sid := pick(fleet, "aq", "sukalaksana", n, model=0)) not in who.values()
    )
    who["incident"], who["upstream"] = incident_pair(fleet)
    scenario = Scenario.model_validate(
        {
            "faults": [
                {"kind": "stuck", "sensor_id": who["stuck"], "metric": "pm25", "start_s": 3600,
                 "duration_s": 3600},
                {"kind": "dropout", "sensor_id": who["dropout"], "start_s": 3600,
                 "duration_s": 1800},
                {"kind": "fog", "district": "cikaso", "start_s": 1800, "duration_s": 3600,
                 "pm_factor": 2.0, "rh_pct": 95},
                {"kind": "haze", "district": "margaluyu", "start_s": 7200, "duration_s": 10800,
                 "pm25_add_ugm3": 150, "ramp_s": 1800},
                {"kind": "spike", "sensor_id": who["spike"], "start_s": 10800, "factor": 4.0},
                {"kind": "out_of_range", "sensor_id": who["oor"], "start_s": 10800,
                 "duration_s": 3600},
                {"kind": "incident", "sensor_id": who["incident"], "start_s": 7200,
                 "duration_s": 3600, "severity": 0.9, "reach_km": 3.0},
                {"kind": "clock_skew", "sensor_id": who["skew"], "start_s": 14400,
                 "duration_s": 3600, "offset_s": 90},
                {"kind": "power", "sensor_id": who["power"], "start_s": 3600,
                 "duration_s": 7200, "pm_factor": 1.7, "skip_fraction": 0.3},
            ]
        }
    )  # fmt: skip
    faulty = small_sim(scenario, duration_s=6 * 3600.0)
    base = small_sim(duration_s=6 * 3600.0)
    return faulty, series(faulty.messages(10**6)), series(base.messages(10**6)), who


def labels_of(sim: Simulator, fault: str) -> list[Label]:
    return [lb for lb in sim.labels if lb.fault == fault]


def test_stuck_sensor_is_constant_in_its_interval(injected: Any) -> None:
    sim, got, base, who = injected
    (lb,) = labels_of(sim, "stuck")
    assert (lb.sensor_id, lb.metric, lb.detectors) == (who["stuck"], "pm25", ("flatline",))
    rows = got[(who["stuck"], 0)]
    ref = dict(base[(who["stuck"], 0)])
    in_ = [body for t, body in rows if inside(t, lb)]
    assert len(in_) == 60
    assert len({b["pm25"] for b in in_}) == 1
    assert len({ref[t]["pm25"] for t, _ in rows if inside(t, lb)}) > 10  # it would vary
    # Other metrics untouched.
    assert all(body["pm10"] == ref[t]["pm10"] for t, body in rows)


def test_dropout_has_no_messages_in_its_interval(injected: Any) -> None:
    sim, got, base, who = injected
    (lb,) = labels_of(sim, "dropout")
    assert lb.detectors == ("dead",)
    assert not [t for t, _ in got[(who["dropout"], 0)] if inside(t, lb)]
    assert len([t for t, _ in base[(who["dropout"], 0)] if inside(t, lb)]) == 30


def test_fog_raises_humidity_over_90_and_pm_by_the_factor(injected: Any) -> None:
    sim, got, base, _ = injected
    fog = labels_of(sim, "fog")
    assert {lb.district for lb in fog} == {"cikaso"}
    assert {lb.detectors for lb in fog} == {("humid_pm",)}
    fleet = sim.fleet
    low_cost = {fleet.sensor_id[i] for i in range(fleet.n_streams) if fleet.model[i] == 0}
    checked = 0
    for lb in fog:
        ref = dict(base[(lb.sensor_id, 0)])
        rh_seen: set[float] = set()
        for t, body in got[(lb.sensor_id, 0)]:
            if not inside(t, lb):
                continue
            checked += 1
            if min(t * MS - lb.start_ns, lb.end_ns - t * MS) < 20 * 60 * 10**9:
                # fog forming or lifting: RH and PM on their way
                assert body["relativeHumidity"] >= ref[t]["relativeHumidity"] - 1e-9
                continue
            # rh_pct 95 less a hashed wander of up to 1.5 %: saturated, not frozen
            assert 93.5 <= body["relativeHumidity"] <= 100.0
            rh_seen.add(body["relativeHumidity"])
            factor = 2.0 if lb.sensor_id in low_cost else 1.0
            assert abs(body["pm25"] - factor * ref[t]["pm25"]) <= 0.05 * factor + 0.051
        assert len(rh_seen) >= 10
    assert checked == 60 * len(fog)
    assert len(fog) == len(
        {fleet.sensor_id[i] for i in range(fleet.n_streams) if fleet.district(i) == "cikaso"}
        & {s for s, _ in got if s.startswith("aq")}
    )


def test_haze_raises_pm_in_the_district(injected: Any) -> None:
    sim, got, base, _ = injected
    haze = labels_of(sim, "haze")
    assert {lb.district for lb in haze} == {"margaluyu"}
    assert {lb.detectors for lb in haze} == {EXPECTED_DETECTORS["haze"]}
    for lb in haze:
        ref = dict(base[(lb.sensor_id, 0)])
        plateau = [
            body["pm25"] - ref[t]["pm25"]
            for t, body in got[(lb.sensor_id, 0)]
            if lb.start_ns + 1800 * 10**9 <= t * MS < lb.end_ns - 1800 * 10**9
        ]
        assert len(plateau) == 120
        assert min(plateau) >= 0.8 * 150 - 0.1
        assert all(
            body["pm25"] >= ref[t]["pm25"] for t, body in got[(lb.sensor_id, 0)] if inside(t, lb)
        )


def test_spike_changes_exactly_one_reading(injected: Any) -> None:
    sim, got, base, who = injected
    (lb,) = labels_of(sim, "spike")
    ref = dict(base[(who["spike"], 0)])
    changed = [(t, b) for t, b in got[(who["spike"], 0)] if b != ref[t]]
    assert len(changed) == 1
    t, body = changed[0]
    assert t * MS == lb.start_ns
    assert lb.start_ns >= START + 3 * H
    assert lb.start_ns < START + 3 * H + 60 * 10**9
    assert abs(body["pm25"] - 4 * ref[t]["pm25"]) <= 0.25


def test_out_of_range_pins_pm(injected: Any) -> None:
    sim, got, _, who = injected
    labels = labels_of(sim, "out_of_range")
    assert sorted(lb.metric for lb in labels) == ["pm10", "pm25"]
    rows = [b for t, b in got[(who["oor"], 0)] if inside(t, labels[0])]
    assert len(rows) == 60
    assert {(b["pm25"], b["pm10"]) for b in rows} == {(999.9, 1999.9)}


def test_incident_slows_the_station_and_then_its_upstream_neighbour(injected: Any) -> None:
    sim, got, base, who = injected
    (inc,) = labels_of(sim, "incident")
    assert inc.detectors == ("incident", "congestion")
    upstream = {lb.sensor_id: lb for lb in labels_of(sim, "congestion")}
    assert who["upstream"] in upstream
    up = upstream[who["upstream"]]
    assert inc.start_ns < up.start_ns < inc.start_ns + 10 * 60 * 10**9  # queue travels
    for lb, sensor in ((inc, who["incident"]), (up, who["upstream"])):
        for (sid, lane), rows in got.items():
            if sid != sensor:
                continue
            ref = dict(base[(sid, lane)])
            in_ = [(b, ref[t]) for t, b in rows if inside(t, lb)]
            assert len(in_) == 120
            assert all(b["averageVehicleSpeed"] < r["averageVehicleSpeed"] for b, r in in_)
            assert all(b["occupancy"] > r["occupancy"] for b, r in in_)


def test_clock_skew_shifts_only_timestamps(injected: Any) -> None:
    sim, got, base, who = injected
    (lb,) = labels_of(sim, "clock_skew")
    assert lb.detectors == ()
    rows = got[(who["skew"], 0)]
    ref = base[(who["skew"], 0)]
    assert len(rows) == len(ref)
    shifted = 0
    for (t, body), (t0, body0) in zip(rows, ref, strict=True):
        assert body == body0
        expect = t0 + 90_000 if inside(t0, lb) else t0
        assert t == expect
        shifted += t != t0
    assert shifted == 60


def test_power_fault_inflates_pm_and_makes_reporting_irregular(injected: Any) -> None:
    sim, got, base, who = injected
    (lb,) = labels_of(sim, "power")
    assert (lb.sensor_id, lb.metric, lb.detectors) == (who["power"], "", ())
    assert EXPECTED_DETECTORS["power"] == ()
    rows = got[(who["power"], 0)]
    ref = base[(who["power"], 0)]
    fleet = sim.fleet
    stream = fleet.sensor_id.index(who["power"])
    interval_ms = int(fleet.interval_ns[stream]) // MS
    inside_ref = [t for t, _ in ref if inside(t, lb)]
    inside_got = [(t, b) for t, b in rows if inside(t, lb)]
    # About 30 % of the slots lost to resets (120 slots: 22-50 lost).
    assert len(inside_ref) == 120
    assert 0.58 * 120 <= len(inside_got) <= 0.82 * 120
    # Each reading sent is its slot's, late by 0-0.45 interval: irregular intervals.
    slots = np.array(inside_ref)
    times = np.array([t for t, _ in inside_got])
    slot = slots[np.searchsorted(slots, times, side="right") - 1]
    delay = times - slot
    assert delay.min() >= 0
    assert delay.max() <= 0.45 * interval_ms
    assert len(set(delay.tolist())) > 0.9 * len(inside_got)
    gaps = np.diff(times)
    assert gaps.min() > 0  # still in order
    assert (gaps > 1.5 * interval_ms).sum() >= 10  # lost slots
    assert np.std(gaps) > 0.2 * interval_ms
    # PM read pm_factor times the model's value at the (late) reading time; T/RH untouched.
    vm = ValueModel(fleet)
    air = vm.air(np.full(times.shape, stream, np.intp), times * MS)
    for (_, body), pm25, pm10, temp in zip(
        inside_got, air.pm25.tolist(), air.pm10.tolist(), air.temperature.tolist(), strict=True
    ):
        assert body["pm25"] == round(pm25 * 1.7, 1)
        assert body["pm10"] == round(pm10 * 1.7, 1)
        assert body["temperature"] == round(temp, 2)
    # Outside the label the sensor is untouched (and so is everyone else, see below).
    outside = [(t, b) for t, b in rows if not inside(t, lb)]
    assert outside == [(t, b) for t, b in ref if not inside(t, lb)]


def test_everything_outside_the_labels_is_untouched(injected: Any) -> None:
    sim, got, base, _ = injected
    by_sensor: dict[str, list[Label]] = defaultdict(list)
    for lb in sim.labels:
        by_sensor[lb.sensor_id].append(lb)
    same = 0
    for key, rows in base.items():
        mine = dict(got.get(key, []))
        for t, body in rows:
            if any(inside(t, lb) for lb in by_sensor[key[0]]):
                continue
            assert mine[t] == body, key
            same += 1
    assert same > 20_000


def test_labels_round_trip_through_json_lines(injected: Any, tmp_path: Path) -> None:
    sim = injected[0]
    path = tmp_path / "truth.jsonl"
    assert write_labels(path, sim.labels) == len(sim.labels)
    assert read_labels(path) == list(sim.labels)
    assert all(lb.city == "sindangraja" for lb in sim.labels)
    path.write_text('{"sensor_id": "x"}\n')
    with pytest.raises(ConfigError, match=r"truth\.jsonl:1"):
        read_labels(path)


# -- determinism and the schedule ------------------------------------------------


def test_scenario_runs_are_deterministic_and_batching_does_not_matter() -> None:
    fleet = small_sim().fleet
    scenario = random_scenario(
        fleet, seed=9, days=0.5, start_ns=START, rates=FaultRates(spike=4, dropout=1)
    )
    whole = small_sim(scenario, count=20_000).messages(10**6)
    assert whole == small_sim(scenario, count=20_000).messages(10**6)
    assert len(whole) == 20_000  # count is what is sent (dropouts do not count)
    chunked = small_sim(scenario, count=20_000)
    out: list[tuple[str, bytes]] = []
    for cut_s in (1, 599, 3600, 3601, 7000):
        out += chunked.next_batch(START + cut_s * 10**9)
    out += chunked.messages(10**6)
    assert out == whole


def test_jitter_moves_reading_times_within_bounds() -> None:
    scenario = Scenario.model_validate({"jitter_s": {"SDS011+BME280": 3.0}})
    got = series(small_sim(scenario, duration_s=1800.0).messages(10**6))
    base = series(small_sim(duration_s=1800.0).messages(10**6))
    fleet = small_sim().fleet
    low_cost = {fleet.sensor_id[i] for i in range(fleet.n_streams) if fleet.model[i] == 0}
    offsets = []
    for key, rows in base.items():
        times = [t for t, _ in got[key]]
        assert times == sorted(times)
        diffs = [a - b for a, (b, _) in zip(times, rows, strict=True)]
        if key[0] in low_cost:
            offsets += diffs
        else:
            assert set(diffs) == {0}
    assert max(abs(d) for d in offsets) <= 3000
    assert len(set(offsets)) > 100  # spread over +-3 s in ms steps
    with pytest.raises(ConfigError, match="half"):
        small_sim(Scenario.model_validate({"jitter_s": {"loop": 15.0}}))


# -- random scenarios ------------------------------------------------------------


def test_random_scenario_sprinkles_every_kind_without_overlap() -> None:
    fleet = city_fleet(load_city(bundled_cities()["tirtamaya"]), seed=1)
    rates = FaultRates(jitter_s={"loop": 1.0})
    a = random_scenario(fleet, seed=3, days=3, start_ns=START, rates=rates)
    assert a == random_scenario(fleet, seed=3, days=3, start_ns=START, rates=rates)
    assert a != random_scenario(fleet, seed=4, days=3, start_ns=START, rates=rates)
    kinds = {f.kind for f in a.faults}
    assert kinds == {
        "spike",
        "stuck",
        "dropout",
        "out_of_range",
        "incident",
        "clock_skew",
        "fog",
        "haze",
        "power",
    }
    # Power faults only hit low-cost air nodes (reference stations have mains power).
    low_cost = {fleet.sensor_id[i] for i in np.flatnonzero((fleet.kind == 0) & (fleet.model == 0))}
    assert all(f.sensor_id in low_cost for f in a.faults if isinstance(f, PowerFault))
    # Sensor faults: about rate x sensors x days (less the overlaps dropped).
    spikes = sum(f.kind == "spike" for f in a.faults)
    assert 0.7 * 0.5 * 1000 * 3 < spikes <= 0.5 * 1000 * 3 * 1.1
    owners: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in a.faults:
        owner = getattr(f, "sensor_id", None) or f.district  # type: ignore[union-attr]
        start = f.start_s or 0.0
        owners[owner].append((start, start + getattr(f, "duration_s", 60.0)))
    for spans in owners.values():
        spans.sort()
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            assert nxt >= end + 1800.0
    # Fog forms in the early morning (02:00-07:00 WIB).
    for f in a.faults:
        if f.kind == "fog":
            hour = ((START / 1e9 + (f.start_s or 0.0) + 7 * 3600) % 86400) / 3600
            assert 2.0 <= hour <= 7.0
    plan = compile_scenario(a, fleet, start_ns=START)
    assert {lb.fault for lb in plan.labels} >= kinds


def test_ground_truth_of_a_random_scenario_matches_the_messages() -> None:
    fleet = small_sim().fleet
    rates = FaultRates(stuck=4.0, dropout=4.0, out_of_range=4.0, spike=0.0, clock_skew=0.0)
    scenario = random_scenario(fleet, seed=21, days=0.25, start_ns=START, rates=rates)
    sim = small_sim(scenario, duration_s=6 * 3600.0)
    got = series(sim.messages(10**6))
    by_sensor: dict[str, list[tuple[int, list[tuple[int, dict[str, Any]]]]]] = defaultdict(list)
    for (sid, lane), r in got.items():
        by_sensor[sid].append((lane, r))
    counts: dict[str, int] = defaultdict(int)
    for lb in sim.labels:
        rows = [
            (b, lane)
            for lane, r in by_sensor[lb.sensor_id]
            if lb.lane in (0, lane)
            for t, b in r
            if inside(t, lb)
        ]
        if lb.fault == "dropout":
            assert rows == []
        elif lb.fault == "stuck":
            assert len({b[lb.metric] for b, lane in rows}) <= len({lane for _, lane in rows})
        elif lb.fault == "out_of_range":
            assert {b[lb.metric] for b, _ in rows} <= {999.9, 1999.9}
        counts[lb.fault] += 1
    assert counts["dropout"] > 5
    assert counts["stuck"] > 5
    assert counts["out_of_range"] > 5


# -- scenario validation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[[faults]]\nkind = "meteor"\nstart_s = 1\n', "faults.0"),
        ('[[faults]]\nkind = "dropout"\nsensor_id = "x"\nduration_s = 5\n', "exactly one"),
        (
            '[[faults]]\nkind = "fog"\ndistrict = "d"\nstart_s = 0\nduration_s = 60\nrh_pct = 85\n',
            "rh_pct",
        ),
        ('[[faults]]\nkind = "dropout"\nsensor_id = "x"\nstart_s = 0\n', "duration_s"),
        ('origin = "2025-11-24T00:00:00"\n', "origin"),
        ("faults = [", "not valid TOML"),
    ],
)
def test_scenario_file_errors_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_scenario(path)


def test_scenario_file_loads_and_unknown_targets_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'origin = "2025-11-24T00:00:00+07:00"\n'
        '[[faults]]\nkind = "dropout"\nsensor_id = "nobody"\nstart_s = 60\nduration_s = 60\n'
    )
    scenario = load_scenario(path)
    assert scenario.origin_ns(0) == START
    with pytest.raises(ConfigError, match=r"faults\[0\]: unknown sensor_id 'nobody'"):
        small_sim(scenario)
    fleet = small_sim().fleet
    low = pick(fleet, "aq", "cikaso", model=0)
    bad = [
        ({"kind": "spike", "sensor_id": low, "metric": "no2", "start_s": 0}, "does not report"),
        ({"kind": "haze", "district": "atlantis", "start_s": 0, "duration_s": 9}, "district"),
        ({"kind": "incident", "sensor_id": low, "start_s": 0, "duration_s": 9}, "traffic"),
        ({"kind": "spike", "sensor_id": low, "lane": 2, "start_s": 0}, "no lane 2"),
    ]
    for fault, match in bad:
        with pytest.raises(ConfigError, match=match):
            small_sim(Scenario.model_validate({"faults": [fault]}))
    # Through the options too.
    opts = SimOptions(seed=4, city="sindangraja", start_ns=START, scenario_file=str(path))
    with pytest.raises(ConfigError, match="nobody"):
        Simulator(opts, ManualClock())
