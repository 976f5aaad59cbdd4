"""The simulator: determinism, payload shape, value model shape, pacing, bounds."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import (
    CITIES,
    Fleet,
    SimOptions,
    SimProgress,
    SimStats,
    Simulator,
    ValueModel,
    local_hour,
    run_simulation,
    weekday,
)
from urbanpulse import ConfigError, ManualClock

# Monday 2025-11-24 00:00 WIB = 2025-11-23 17:00 UTC.
MONDAY_WIB_NS = int(datetime(2025, 11, 23, 17, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
HOUR_NS = 3_600 * 1_000_000_000
AIR_PM_ONLY = {"dateObserved", "pm25", "pm10", "temperature", "relativeHumidity"}
AIR_FULL = AIR_PM_ONLY | {"no2", "o3", "co", "so2"}
TRAFFIC = {"dateObserved", "laneId", "intensity", "occupancy", "averageVehicleSpeed"}


def opts(**kw: object) -> SimOptions:
    base: dict[str, object] = {"seed": 7, "n_air": 40, "n_traffic": 20, "start_ns": MONDAY_WIB_NS}
    base.update(kw)
    return SimOptions(**base)  # type: ignore[arg-type]


def sim(**kw: object) -> Simulator:
    return Simulator(opts(**kw), ManualClock())


def parse(messages: list[tuple[str, bytes]]) -> list[tuple[list[str], dict[str, object]]]:
    return [(topic.split("/"), json.loads(payload)) for topic, payload in messages]


def event_s(payload: dict[str, object]) -> float:
    ts = payload["dateObserved"]
    if isinstance(ts, str):
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    assert isinstance(ts, float)
    return ts


# -- determinism ---------------------------------------------------------------


def test_same_options_give_identical_bytes() -> None:
    a = sim(rate_per_s=5000.0).messages(3000)
    b = sim(rate_per_s=5000.0).messages(3000)
    assert len(a) == 3000
    assert a == b


def test_start_from_clock_is_deterministic_for_the_same_clock() -> None:
    clock_a, clock_b = ManualClock(MONDAY_WIB_NS), ManualClock(MONDAY_WIB_NS)
    a = Simulator(opts(start_ns=None), clock_a).messages(500)
    b = Simulator(opts(start_ns=None), clock_b).messages(500)
    assert a == b
    assert event_s(json.loads(a[0][1])) >= MONDAY_WIB_NS / 1e9


def test_different_seed_differs() -> None:
    a = sim(seed=1).messages(1000)
    b = sim(seed=2).messages(1000)
    assert [p for _, p in a] != [p for _, p in b]
    assert {t for t, _ in a} != {t for t, _ in b}


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=600_000), min_size=1, max_size=8))
def test_batching_does_not_change_the_messages(cuts: list[int]) -> None:
    """next_batch chunks concatenate to the same bytes, whatever the chunk edges (ms)."""
    whole = sim(count=700).messages(10_000)
    chunked = sim(count=700)
    out: list[tuple[str, bytes]] = []
    for cut in sorted(cuts):
        out += chunked.next_batch(MONDAY_WIB_NS + cut * 1_000_000)
    out += chunked.messages(10_000)
    assert out == whole
    assert len(whole) == 700


def test_fleet_is_prefix_stable() -> None:
    small = Fleet.generate(seed=3, n_air=5, n_traffic=3)
    big = Fleet.generate(seed=3, n_air=50, n_traffic=30)
    small_sensors = small.sensors()
    big_air = [s for s in big.sensors() if s.sensor_id.startswith("aq-")][:5]
    big_trf = [s for s in big.sensors() if s.sensor_id.startswith("tc-")][:3]
    assert small_sensors == big_air + big_trf


# -- payloads and topics -------------------------------------------------------


def test_topics_and_fields() -> None:
    s = sim(n_air=60, n_traffic=30)
    parsed = parse(s.messages(5000))
    districts = set(CITIES["bandung"].districts)
    models: Counter[str] = Counter()
    for parts, payload in parsed:
        assert len(parts) == 5
        prefix, city, district, kind, sensor_id = parts
        assert (prefix, city) == ("urbanpulse", "bandung")
        assert district in districts
        if kind == "air":
            assert re.fullmatch(rf"aq-{district}-\d{{4}}", sensor_id)
            assert set(payload) in (AIR_PM_ONLY, AIR_FULL)
            models["full" if set(payload) == AIR_FULL else "pm"] += 1
        else:
            assert kind == "traffic"
            assert re.fullmatch(rf"tc-{district}-\d{{4}}", sensor_id)
            assert set(payload) == TRAFFIC
            assert payload["laneId"] in (1, 2)
            assert isinstance(payload["intensity"], int)
    assert models["full"] > 0
    assert models["pm"] > models["full"]


def test_values_are_typed_and_in_range() -> None:
    for _, p in parse(sim(n_air=80, n_traffic=40, rate_per_s=2000.0, speed=50.0).messages(20_000)):
        for key, value in p.items():
            if key == "dateObserved":
                continue
            assert isinstance(value, int if key in ("intensity", "laneId") else float), key
        if "pm25" in p:
            pm25, pm10 = float(p["pm25"]), float(p["pm10"])  # type: ignore[arg-type]
            assert 1.0 <= pm25 <= 999.9
            # Both rounded to 0.1 from a ratio within [1.3, 1.8].
            assert 1.3 * (pm25 - 0.05) - 0.05 <= pm10 <= 1.8 * (pm25 + 0.05) + 0.05
            assert 20.0 <= p["temperature"] <= 36.0  # type: ignore[operator]
            assert 0.0 <= p["relativeHumidity"] <= 100.0  # type: ignore[operator]
            for gas in ("no2", "o3", "co", "so2"):
                if gas in p:
                    assert 0.0 < p[gas] < 5000.0  # type: ignore[operator]
        else:
            assert 0.0 <= p["occupancy"] <= 1.0  # type: ignore[operator]
            assert 0.0 < p["averageVehicleSpeed"] < 120.0  # type: ignore[operator]
            assert 0 <= p["intensity"] < 100  # type: ignore[operator]
            if p["intensity"] == 0:
                assert p["occupancy"] == 0.0


def test_number_resolution_in_the_raw_bytes() -> None:
    raw = b"\n".join(p for _, p in sim().messages(2000)).decode()
    dec = {
        "pm25": 1,
        "pm10": 1,
        "no2": 1,
        "o3": 1,
        "co": 1,
        "so2": 1,
        "temperature": 2,
        "relativeHumidity": 1,
        "occupancy": 3,
        "averageVehicleSpeed": 1,
    }
    for field, n in dec.items():
        values = re.findall(rf'"{field}":([0-9.\-]+)', raw)
        assert values, field
        assert all(re.fullmatch(rf"\d+\.\d{{{n}}}", v) for v in values), field
    assert all(re.fullmatch(r"\d+", v) for v in re.findall(r'"intensity":([^,}]+)', raw))
    assert all(
        re.fullmatch(r"\d{10}\.\d{3}", v) for v in re.findall(r'"dateObserved":([^,]+)', raw)
    )


def test_timestamp_formats_carry_the_same_instants_in_order() -> None:
    epoch = parse(sim(rate_per_s=3000.0).messages(1500))
    iso = parse(sim(rate_per_s=3000.0, ts_format="iso").messages(1500))
    assert all(isinstance(p["dateObserved"], float) for _, p in epoch)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(p["dateObserved"]))
        for _, p in iso
    )
    times = [event_s(p) for _, p in epoch]
    assert times == pytest.approx([event_s(p) for _, p in iso], abs=1e-6)
    assert times == sorted(times)
    assert times[0] >= MONDAY_WIB_NS / 1e9
    # Same values apart from the timestamp encoding.
    strip = [{k: v for k, v in p.items() if k != "dateObserved"} for _, p in epoch]
    assert strip == [{k: v for k, v in p.items() if k != "dateObserved"} for _, p in iso]


# -- value model shape ---------------------------------------------------------


def test_local_time_is_wib() -> None:
    ts = np.array([MONDAY_WIB_NS + 8 * HOUR_NS + 30 * 60 * 10**9], dtype=np.int64)
    assert local_hour(ts)[0] == pytest.approx(8.5)
    assert weekday(ts)[0] == 0  # Monday
    assert weekday(ts + 6 * 24 * HOUR_NS)[0] == 6  # Sunday


def _window(s_kw: dict[str, object], start_ns: int, minutes: int) -> list[dict[str, object]]:
    s = sim(start_ns=start_ns, duration_s=minutes * 60.0, **s_kw)
    return [p for _, p in parse(s.messages(10**6))]


def _mean(payloads: list[dict[str, object]], field: str) -> float:
    values = [float(p[field]) for p in payloads if field in p]  # type: ignore[arg-type]
    assert len(values) > 50
    return float(np.mean(values))


def test_pm_is_higher_in_the_morning_peak_than_before_dawn() -> None:
    """The diurnal factor is 1.47 at 07:00 and 1.06 at 03:00 WIB.

    Reference stations show it undiluted; low-cost nodes over-read in the humid
    night, which narrows (but does not reverse) the gap.
    """
    kw: dict[str, object] = {"n_air": 200, "n_traffic": 0}
    for day in range(3):  # Mon, Tue, Wed
        base = MONDAY_WIB_NS + day * 24 * HOUR_NS
        at_3 = _window(kw, base + 3 * HOUR_NS - 5 * 60 * 10**9, 10)
        at_7 = _window(kw, base + 7 * HOUR_NS - 5 * 60 * 10**9, 10)
        ref_3 = [p for p in at_3 if "no2" in p]
        ref_7 = [p for p in at_7 if "no2" in p]
        assert _mean(ref_7, "pm25") > 1.25 * _mean(ref_3, "pm25")
        assert _mean(at_7, "pm25") > _mean(at_3, "pm25")
        assert 20.0 < _mean(ref_3, "pm25") < 70.0


def test_traffic_rush_hour_and_weekend() -> None:
    kw: dict[str, object] = {"n_air": 0, "n_traffic": 100}
    at_3 = _mean(_window(kw, MONDAY_WIB_NS + 3 * HOUR_NS, 10), "intensity")
    at_8 = _mean(_window(kw, MONDAY_WIB_NS + 8 * HOUR_NS, 10), "intensity")
    at_17 = _mean(_window(kw, MONDAY_WIB_NS + 17 * HOUR_NS + 30 * 60 * 10**9, 10), "intensity")
    sunday_8 = _mean(_window(kw, MONDAY_WIB_NS + (6 * 24 + 8) * HOUR_NS, 10), "intensity")
    assert at_8 > 3 * at_3
    assert at_17 > 3 * at_3
    assert at_8 > 1.25 * sunday_8


def test_speed_drops_as_occupancy_rises_and_rh_follows_temperature_down() -> None:
    fleet = Fleet.generate(seed=11, n_air=20, n_traffic=20)
    model = ValueModel(fleet)
    ts = MONDAY_WIB_NS + np.arange(0, 2 * 24 * 3600, 300, dtype=np.int64) * 10**9
    correlations = []
    for lane in np.flatnonzero(fleet.lane > 0):
        trf = model.traffic(np.full(ts.shape, lane, dtype=np.intp), ts)
        moving = trf.intensity > 0
        correlations.append(
            np.corrcoef(trf.occupancy[moving], trf.average_vehicle_speed[moving])[0, 1]
        )
    assert max(correlations) < -0.4
    assert float(np.median(correlations)) < -0.6
    air_stream = np.repeat(np.flatnonzero(fleet.lane == 0), ts.shape[0]).astype(np.intp)
    air = model.air(air_stream, np.tile(ts, 20))
    assert np.corrcoef(air.temperature, air.relative_humidity)[0, 1] < -0.5
    low, high = np.percentile(air.temperature, [1, 99])
    assert 22.5 < low < 25.0
    assert 31.0 < high < 33.5
    low, high = np.percentile(air.relative_humidity, [1, 99])
    assert 55.0 < low < 70.0
    assert 88.0 < high < 99.0
    assert np.isnan(model.air(air_stream[:5], ts[:5], gases=np.zeros(5, bool)).no2).all()


def test_value_of_a_reading_does_not_depend_on_the_batch() -> None:
    fleet = Fleet.generate(seed=5, n_air=10, n_traffic=0)
    model = ValueModel(fleet)
    ts = MONDAY_WIB_NS + np.arange(50, dtype=np.int64) * 61_000_000_000
    stream = np.arange(50, dtype=np.intp) % 10
    whole = model.air(stream, ts).pm25
    single = np.array([model.air(stream[i : i + 1], ts[i : i + 1]).pm25[0] for i in range(50)])
    assert np.array_equal(whole, single)


# -- realistic schedule --------------------------------------------------------


def test_realistic_mode_emits_each_stream_once_per_interval() -> None:
    s = sim(n_air=30, n_traffic=15)
    messages = s.next_batch(MONDAY_WIB_NS + 600 * 10**9)
    per_stream: dict[tuple[str, int], list[float]] = defaultdict(list)
    for parts, p in parse(messages):
        per_stream[(parts[4], int(p.get("laneId", 0)))].append(event_s(p))  # type: ignore[call-overload]
    assert len(per_stream) == s.fleet.n_streams
    for (sensor_id, _lane), times in per_stream.items():
        interval = 60.0 if sensor_id.startswith("aq-") else 30.0
        assert len(times) == round(600 / interval)
        assert np.allclose(np.diff(times), interval, atol=1e-6)
    # Both lanes of a station report with the same timestamp.
    for sensor_id, lane in per_stream:
        if lane == 2:
            assert per_stream[(sensor_id, 1)] == per_stream[(sensor_id, 2)]
    assert s.nominal_rate_per_s == pytest.approx(
        30 / 60 + sum(1 for _, ln in per_stream if ln) / 30
    )


def test_phases_spread_the_reports() -> None:
    messages = sim(n_air=200, n_traffic=0).next_batch(MONDAY_WIB_NS + 60 * 10**9)
    seconds = Counter(int(event_s(p)) for _, p in parse(messages))
    assert len(messages) == 200
    assert max(seconds.values()) < 20  # not all at the same second


# -- options -------------------------------------------------------------------


def test_invalid_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="qos"):
        opts(qos=3)
    with pytest.raises(ConfigError, match="prefix"):
        opts(prefix="a/#")
    with pytest.raises(ConfigError, match="1 ms"):
        sim(n_air=1, n_traffic=0, rate_per_s=10_000.0)
    with pytest.raises(ConfigError, match="city"):
        sim(city="atlantis")


# -- pacing --------------------------------------------------------------------


class FakeTime:
    """A ManualClock plus the sleep that advances it (no real waiting)."""

    def __init__(self) -> None:
        self.clock = ManualClock(MONDAY_WIB_NS)
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)


class RecordingPublisher:
    def __init__(self, clock: ManualClock, cost_s: float = 0.0) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.sent: list[tuple[str, bytes, int, float]] = []
        self.flushes = 0

    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        self.sent.append((topic, payload, qos, self.clock.monotonic_s()))
        if self.cost_s:
            self.clock.advance(self.cost_s)

    async def flush(self) -> None:
        self.flushes += 1


def run(
    options: SimOptions, time_: FakeTime, pub: RecordingPublisher, **kw: object
) -> tuple[SimStats, list[SimProgress]]:
    reports: list[SimProgress] = []
    stats = asyncio.run(
        run_simulation(
            options,
            pub,
            time_.clock,
            reports.append,
            sleep=time_.sleep,
            **kw,  # type: ignore[arg-type]
        )
    )
    return stats, reports


def test_rate_pacing_hits_the_target_in_batches() -> None:
    t = FakeTime()
    pub = RecordingPublisher(t.clock)
    stats, reports = run(opts(rate_per_s=2000.0, count=10_000, qos=1), t, pub)
    assert stats.sent == len(pub.sent) == 10_000
    assert stats.rate_per_s == pytest.approx(2000.0, rel=0.05)
    assert stats.duration_s == pytest.approx(5.0, rel=0.05)
    # Per second of wall time, too (not a burst followed by idling).
    per_second = Counter(int(at) for *_, at in pub.sent)
    assert all(abs(n - 2000) <= 100 for sec, n in per_second.items() if sec < 4)
    # Batched: about one sleep per 10 ms tick, not one per message.
    assert len(t.sleeps) < 1000
    assert min(t.sleeps) >= 0.01
    assert {qos for _, _, qos, _ in pub.sent} == {1}
    assert pub.flushes == 1
    assert stats.behind_s == 0.0
    # Progress about every second, with the achieved rate.
    assert 5 <= len(reports) <= 7
    assert all(r.rate_per_s == pytest.approx(2000.0, rel=0.05) for r in reports[:-1])
    assert reports[-1].sent == 10_000


def test_published_messages_are_the_schedule() -> None:
    t = FakeTime()
    pub = RecordingPublisher(t.clock)
    options = opts(rate_per_s=500.0, count=1234)
    run(options, t, pub)
    expected = Simulator(options, ManualClock()).messages(10_000)
    assert [(topic, payload) for topic, payload, *_ in pub.sent] == expected
    assert len(expected) == 1234


def test_realistic_pacing_follows_event_time() -> None:
    t = FakeTime()
    pub = RecordingPublisher(t.clock)
    options = opts(speed=60.0, duration_s=20.0)  # 20 wall s = 20 event minutes
    stats, _ = run(options, t, pub)
    assert stats.duration_s == pytest.approx(20.0, abs=0.05)
    s = Simulator(options, ManualClock())
    assert stats.target_rate_per_s == pytest.approx(s.nominal_rate_per_s)
    assert stats.sent == pytest.approx(s.nominal_rate_per_s * 20.0, rel=0.05)
    for _, payload, _, at in pub.sent:
        due = (event_s(json.loads(payload)) - MONDAY_WIB_NS / 1e9) / 60.0
        assert due - 0.001 <= at <= due + 0.011  # sent within a tick of being due


def test_duration_bounds_event_time() -> None:
    t = FakeTime()
    pub = RecordingPublisher(t.clock)
    stats, _ = run(opts(rate_per_s=1000.0, duration_s=3.0, speed=2.0), t, pub)
    assert abs(stats.sent - 3000) <= 1
    times = [event_s(json.loads(p)) for _, p, _, _ in pub.sent]
    assert max(times) < MONDAY_WIB_NS / 1e9 + 6.0  # 3 s at speed 2
    assert stats.duration_s == pytest.approx(3.0, abs=0.02)


def test_slow_publisher_lowers_the_rate_without_bursting() -> None:
    t = FakeTime()

    class SlowThenFast(RecordingPublisher):
        async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
            await super().publish(topic, payload, qos=qos)
            if len(self.sent) <= 2000:
                self.clock.advance(0.001)  # 1000 msg/s at most

    pub = SlowThenFast(t.clock)
    stats, _ = run(opts(rate_per_s=2000.0, count=6000), t, pub, max_lag_s=0.2)
    assert stats.sent == 6000
    assert 0.6 < stats.behind_s < 0.85  # ~1 s behind, less the 0.2 s allowed lag
    slow_end = pub.sent[2000][3]
    assert slow_end == pytest.approx(2.0, abs=0.02)
    # Once fast again: a bounded catch-up (the rest of the batch in flight plus
    # max_lag_s = 400 messages; uncapped it would be the whole ~2000 backlog),
    # then the target rate.
    fast = [at for *_, at in pub.sent[2001:]]
    assert sum(1 for at in fast if at < slow_end + 0.02) <= 2 * 400 + 40
    after = [at for at in fast if at >= slow_end + 0.25]
    assert len(after) / (after[-1] - after[0]) == pytest.approx(2000.0, rel=0.05)


def test_stop_event_ends_the_run() -> None:
    t = FakeTime()

    class StoppingPublisher(RecordingPublisher):
        async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
            await super().publish(topic, payload, qos=qos)
            if len(self.sent) == 300:
                stop.set()

    stop = asyncio.Event()
    pub = StoppingPublisher(t.clock)
    stats, _ = run(opts(rate_per_s=1000.0), t, pub, stop=stop)
    assert 300 <= stats.sent < 400
    assert pub.flushes == 1
