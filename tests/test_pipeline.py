"""The pipeline core without a broker: raw micro-batch in, line protocol out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from ingest._buffer import RawBatch
from outputs._stage import OutputStage, StageOptions
from processors._windows import WindowSpec
from urbanpulse._clock import ManualClock
from urbanpulse._errors import OutputError, RetryableOutputError
from urbanpulse._pipeline import Pipeline, PipelineOptions
from urbanpulse._schema import Metric, ReadingFlag

T0_S = 1_763_892_000  # 2025-11-23T10:00:00Z, a whole minute
CLOCK_NS = (T0_S + 3600) * 10**9


class ListWriter:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.closed = False

    def write(self, lines: bytes) -> None:
        self.bodies.append(lines)

    def close(self) -> None:
        self.closed = True


def _pipeline(state_dir: Path | None = None, writer: ListWriter | None = None) -> Pipeline:
    opts = PipelineOptions(
        windows=(WindowSpec(window_ms=60_000, grace_ms=0, idle_ms=10**9),),
        state_dir=state_dir,
    )
    return Pipeline(opts, writer=writer or ListWriter(), clock=ManualClock(CLOCK_NS))


def _raw(*items: tuple[str, Mapping[str, object] | bytes]) -> RawBatch:
    topics = [t for t, _ in items]
    payloads = [p if isinstance(p, bytes) else json.dumps(p).encode() for _, p in items]
    return RawBatch(topics, payloads, [CLOCK_NS] * len(items))


AIR = "urbanpulse/bandung/coblong/air/aq-1"


def _lines(data: list[tuple[bytes, int]]) -> list[str]:
    return [line for body, _ in data for line in body.decode().split("\n") if line]


def test_process_writes_raw_points_and_closes_windows() -> None:
    p = _pipeline()
    r1 = p.process(_raw((AIR, {"dateObserved": T0_S + 5, "pm25": 10.0, "pm10": 20.0})))
    assert _lines(r1.lines) == [
        f"air,city=bandung,district=coblong,sensor_id=aq-1 pm25=10.0,pm10=20.0 {(T0_S + 5) * 10**9}"
    ]
    assert r1.closed == {60_000: 0}
    r2 = p.process(
        _raw(
            (AIR, {"dateObserved": T0_S + 35, "pm25": 14.0}),
            (AIR, {"dateObserved": T0_S + 61, "pm25": 1.0}),  # moves the watermark past minute 0
        )
    )
    lines = _lines(r2.lines)
    assert len(lines) == 3
    agg = [line for line in lines if line.startswith("air_1m,")]
    assert len(agg) == 1
    assert "pm25_count=2i,pm25_mean=12.0,pm25_min=10.0,pm25_max=14.0" in agg[0]
    assert "pm25_first=10.0,pm25_last=14.0" in agg[0]
    assert "pm10_count=1i" in agg[0]
    assert agg[0].endswith(f" {T0_S * 10**9}")
    assert p.stats.aggregates == {60_000: 2}  # pm25 and pm10 of minute 0


def test_late_reading_is_stored_flagged_and_counted_not_aggregated() -> None:
    p = _pipeline()
    p.process(_raw((AIR, {"dateObserved": T0_S + 5, "pm25": 10.0})))
    p.process(_raw((AIR, {"dateObserved": T0_S + 65, "pm25": 11.0})))  # closes minute 0
    r = p.process(_raw((AIR, {"dateObserved": T0_S + 6, "pm25": 99.0})))  # late
    assert p.stats.late_readings == 1
    assert int(r.batch.flags[0]) & ReadingFlag.LATE
    (line,) = _lines(r.lines)
    assert "pm25=99.0" in line
    assert f"flags={int(ReadingFlag.LATE)}i" in line


def test_bad_messages_are_dead_lettered_and_good_ones_pass() -> None:
    p = _pipeline()
    r = p.process(
        _raw(
            (AIR, b"not json"),
            ("urbanpulse/bandung/coblong/bus/x", {"pm25": 1.0}),
            (AIR, {"dateObserved": T0_S, "pm25": 12.5}),
            (AIR, {"dateObserved": T0_S, "pm25": "12"}),
        )
    )
    assert len(r.batch) == 1
    assert dict(p.deadletters.by_reason) == {
        "not_json": 1,
        "topic_unknown_kind": 1,
        "wrong_type": 1,
    }
    assert p.stats.messages_ok == 1


def test_checkpoint_and_restore_give_the_same_aggregates_as_one_run(tmp_path: Path) -> None:
    msgs = [(AIR, {"dateObserved": T0_S + 7 * i, "pm25": float(i % 13)}) for i in range(40)]
    one = _pipeline()
    whole = [line for m in msgs for line in _lines(one.process(_raw(m)).lines)]

    first = _pipeline(tmp_path)
    part1 = [line for m in msgs[:17] for line in _lines(first.process(_raw(m)).lines)]
    first.checkpoint()
    second = _pipeline(tmp_path)
    assert second.windows.open_windows == first.windows.open_windows > 0
    part2 = [line for m in msgs[17:] for line in _lines(second.process(_raw(m)).lines)]
    assert part1 + part2 == whole


def test_restore_ignores_a_checkpoint_of_other_window_settings(tmp_path: Path) -> None:
    first = _pipeline(tmp_path)
    first.process(_raw((AIR, {"dateObserved": T0_S, "pm25": 1.0})))
    first.checkpoint()
    other = Pipeline(
        PipelineOptions(windows=(WindowSpec(window_ms=30_000, grace_ms=0),), state_dir=tmp_path),
        writer=ListWriter(),
        clock=ManualClock(CLOCK_NS),
    )
    assert other.windows.open_windows == 0


def test_restore_starts_detectors_fresh_from_a_checkpoint_that_does_not_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from processors._detect_sensor import SpikeConfig
    from processors._detectors import DetectorConfig

    first = _pipeline(tmp_path)
    for k in range(40):
        first.process(_raw((AIR, {"dateObserved": T0_S - 3600 + 60 * k, "pm25": 10.0 + k % 3})))
    first.checkpoint()
    assert first.detectors is not None
    assert first.detectors.state_nbytes > 0
    # another detector config (spike scores PM2.5 only): the metric layout differs
    only_pm = DetectorConfig(spike=SpikeConfig(metrics=(Metric.PM25,)))
    opts = PipelineOptions(
        windows=(WindowSpec(window_ms=60_000, grace_ms=0, idle_ms=10**9),),
        state_dir=tmp_path,
        detectors=only_pm,
    )
    with caplog.at_level("WARNING", logger="urbanpulse.pipeline"):
        other = Pipeline(opts, writer=ListWriter(), clock=ManualClock(CLOCK_NS))
    assert "detectors start fresh" in caplog.text
    assert other.detectors is not None
    assert other.detectors.state_nbytes == 0
    # the rest of the checkpoint was restored
    assert len(other.registry) == 1
    assert other.windows.open_windows > 0
    # the same config restores the detectors
    again = _pipeline(tmp_path)
    assert again.detectors is not None
    assert again.detectors.state_nbytes > 0


# -- output stage ---------------------------------------------------------------------------


class FlakyWriter(ListWriter):
    def __init__(self, failures: list[Exception]) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def write(self, lines: bytes) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        super().write(lines)


def test_stage_retries_honouring_retry_after_then_writes() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    writer = FlakyWriter(
        [RetryableOutputError("503", status=503, retry_after_s=7.0), RetryableOutputError("down")]
    )

    async def go() -> OutputStage:
        stage = OutputStage(writer, StageOptions(batch_max_lines=2, batch_max_ms=10), sleep=sleep)
        task = asyncio.create_task(stage.run())
        await stage.submit(b"a v=1 1", 1)
        await stage.submit(b"a v=2 2", 1)
        await stage.close()
        await task
        return stage

    stage = asyncio.run(go())
    assert writer.bodies == [b"a v=1 1\na v=2 2"]
    assert writer.attempts == 3
    assert slept[0] >= 7.0
    assert stage.stats.points_written == 2
    assert stage.stats.retries == 2


def test_stage_counts_a_rejected_body_and_goes_on() -> None:
    writer = FlakyWriter([OutputError("400 bad line", status=400)])

    async def go() -> OutputStage:
        stage = OutputStage(writer, StageOptions(batch_max_lines=1, batch_max_ms=10))
        task = asyncio.create_task(stage.run())
        await stage.submit(b"bad", 1)
        await stage.submit(b"good v=1 1", 1)
        await stage.close()
        await task
        return stage

    stage = asyncio.run(go())
    assert stage.stats.points_rejected == 1
    assert stage.stats.points_written == 1
    assert writer.bodies == [b"good v=1 1"]


def test_stage_submit_blocks_while_over_the_memory_bound() -> None:
    async def go() -> tuple[bool, bool]:
        stage = OutputStage(ListWriter(), StageOptions(max_pending_bytes=1024, batch_max_ms=10))
        await stage.submit(b"x" * 2000, 1)  # over the bound, nothing is writing yet
        blocked = asyncio.create_task(stage.submit(b"y", 1))
        await asyncio.sleep(0.05)
        was_blocked = not blocked.done()
        task = asyncio.create_task(stage.run())
        await asyncio.wait_for(blocked, 2)
        await stage.close()
        await task
        return was_blocked, stage.pending_bytes == 0

    assert asyncio.run(go()) == (True, True)


@pytest.mark.parametrize("points", [1, 5])
def test_stage_close_flushes_everything(points: int) -> None:
    writer = ListWriter()

    async def go() -> None:
        stage = OutputStage(writer, StageOptions(batch_max_lines=1000, batch_max_ms=60_000))
        task = asyncio.create_task(stage.run())
        for i in range(points):
            await stage.submit(f"m v={i} {i}".encode(), 1)
        await stage.close()
        await task

    asyncio.run(go())
    assert b"\n".join(writer.bodies).count(b"\n") + 1 == points


def test_implausible_readings_are_flagged_counted_and_kept_out_of_the_indices() -> None:
    p = _pipeline()
    pinned = "urbanpulse/bandung/coblong/air/aq-pinned"
    hazy = "urbanpulse/bandung/coblong/air/aq-hazy"
    last = None
    for k in range(3 * 6):  # three hours, every 10 min
        t = T0_S - 3 * 3600 + 600 * k + 5  # before the clock (no future readings)
        last = p.process(
            _raw(
                (pinned, {"dateObserved": t, "pm25": 999.9, "pm10": 1999.9}),
                (hazy, {"dateObserved": t, "pm25": 180.0, "pm10": 250.0}),
            )
        )
    assert last is not None
    flags = last.batch.flags
    implausible = (flags & ReadingFlag.IMPLAUSIBLE) != 0
    # pm25 999.9 (> 500) and pm10 1999.9 (> 999) of the pinned sensor only
    assert int(implausible.sum()) == 2
    assert p.stats.implausible_readings == 2 * 18
    assert any(f"flags={int(ReadingFlag.IMPLAUSIBLE)}i" in line for line in _lines(last.lines))
    update = p.indices.evaluate()
    named = {p.registry.key(int(s)).sensor_id for s in update.sensors.sid.tolist()}
    assert named == {"aq-hazy"}
    assert {e.sensor_id for e in update.events if e.sensor_id} == {"aq-hazy"}
    # the district's index is the hazy sensor's, not the pinned one's (AQI 500)
    assert update.districts.aqi.tolist() == pytest.approx(update.sensors.aqi.tolist())


def test_replayed_implausible_readings_stay_out_of_the_indices(tmp_path: Path) -> None:
    from urbanpulse._spool import SpoolOptions

    opts = PipelineOptions(
        windows=(WindowSpec(window_ms=60_000, grace_ms=0, idle_ms=10**9),),
        spool=SpoolOptions(directory=tmp_path / "spool", fsync="never"),
    )
    p = Pipeline(opts, writer=ListWriter(), clock=ManualClock(CLOCK_NS))
    assert p.spool is not None
    for k in range(3 * 6):  # three hours, every 10 min, as above
        t = T0_S - 3 * 3600 + 600 * k + 5
        r = p.process(
            _raw(
                ("urbanpulse/bandung/coblong/air/aq-pinned", {"dateObserved": t, "pm25": 999.9}),
                ("urbanpulse/bandung/coblong/air/aq-hazy", {"dateObserved": t, "pm25": 180.0}),
            )
        )
        p.spool.append(r.new_keys, r.batch, r.aggregates)
    p.spool.close()  # a crash: no checkpoint, the journal is replayed on start
    again = Pipeline(opts, writer=ListWriter(), clock=ManualClock(CLOCK_NS))
    assert again.stats.replayed_records == 18
    update = again.indices.evaluate()
    assert {again.registry.key(int(s)).sensor_id for s in update.sensors.sid.tolist()} == {
        "aq-hazy"
    }


def test_traffic_los_rows_follow_the_learned_free_flow() -> None:
    from processors._detect_traffic import TrafficStateConfig
    from processors._detectors import DetectorConfig

    # off-peak 16:00-16:12 WIB: the first (free-flowing) readings only
    traffic = TrafficStateConfig(min_offpeak_samples=5, offpeak_hours=(16.0, 16.2))
    opts = PipelineOptions(
        windows=(WindowSpec(window_ms=60_000, grace_ms=0, idle_ms=10**9),),
        detectors=DetectorConfig(traffic_state=traffic),
    )
    p = Pipeline(opts, writer=ListWriter(), clock=ManualClock(CLOCK_NS))
    lane = "urbanpulse/bandung/coblong/traffic/tc-1"
    t0 = T0_S - 3600  # 16:00 WIB
    for k in range(20):  # free flow ~50 km/h
        p.process(
            _raw((lane, {"dateObserved": t0 + 30 * k, "laneId": 2, "averageVehicleSpeed": 50.0}))
        )
    ((body, n),) = p.los_lines()
    assert n == 1
    line = body.decode()
    assert line.startswith(
        'traffic_los,city=bandung,district=coblong,lane=2,sensor_id=tc-1 los="A",los_class=0i,'
    )
    assert line.endswith(f" {(t0 + 30 * 19) * 10**9}")
    assert p.los_lines() == []  # nothing new since
    for k in range(20, 200):  # jammed at 12 km/h: 24 % of free flow, class F
        p.process(
            _raw((lane, {"dateObserved": t0 + 30 * k, "laneId": 2, "averageVehicleSpeed": 12.0}))
        )
    ((body, _),) = p.los_lines()
    assert 'los="F",los_class=5i' in body.decode()
    assert p.stats.los_rows == 2
