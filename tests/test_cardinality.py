"""The cardinality guard: caps on total series and on new series per minute."""

from __future__ import annotations

import json

from ingest._buffer import RawBatch
from ingest._decode import DecodeOptions, NativeJsonDecoder
from ingest._topics import TopicPattern
from processors._windows import WindowSpec
from urbanpulse._batch import SeriesRegistry
from urbanpulse._clock import ManualClock
from urbanpulse._pipeline import Pipeline, PipelineOptions

T0_S = 1_763_892_000
CLOCK_NS = (T0_S + 60) * 10**9
PATTERN = TopicPattern.compile("urbanpulse/{city}/{district}/{kind}/{sensor_id}")


def _msgs(ids: range) -> tuple[list[str], list[bytes], list[int]]:
    topics = [f"urbanpulse/bandung/coblong/air/s{i}" for i in ids]
    payloads = [json.dumps({"dateObserved": T0_S, "pm25": 10.0}).encode() for _ in ids]
    return topics, payloads, [CLOCK_NS] * len(topics)


def _decoder(clock: ManualClock, **opts: int | None) -> tuple[NativeJsonDecoder, SeriesRegistry]:
    registry = SeriesRegistry()
    dec = NativeJsonDecoder(
        DecodeOptions(**opts),  # type: ignore[arg-type]
        pattern=PATTERN,
        registry=registry,
        clock=clock,
    )
    return dec, registry


def test_total_series_cap_refuses_new_series_but_not_known_ones() -> None:
    clock = ManualClock(CLOCK_NS)
    dec, registry = _decoder(clock, max_series=3, max_new_series_per_min=None)
    r = dec.decode(*_msgs(range(5)))
    assert len(registry) == 3
    assert r.messages_ok == 3
    assert [d.reason for d in r.dead] == ["cardinality_limit", "cardinality_limit"]
    again = dec.decode(*_msgs(range(5)))  # the known three still pass
    assert again.messages_ok == 3
    assert dec.cardinality_refused == {"cardinality_limit": 4, "cardinality_rate": 0}


def test_new_series_per_minute_cap_refills_after_a_minute() -> None:
    clock = ManualClock(CLOCK_NS)
    dec, registry = _decoder(clock, max_series=None, max_new_series_per_min=4)
    r = dec.decode(*_msgs(range(10)))
    assert r.messages_ok == 4
    assert {d.reason for d in r.dead} == {"cardinality_rate"}
    clock.advance(59)
    assert dec.decode(*_msgs(range(4, 10))).messages_ok == 0
    clock.advance(2)
    assert dec.decode(*_msgs(range(4, 10))).messages_ok == 4
    assert len(registry) == 8


def test_no_cap_when_disabled() -> None:
    dec, _ = _decoder(ManualClock(CLOCK_NS), max_series=None, max_new_series_per_min=None)
    assert dec.decode(*_msgs(range(200))).messages_ok == 200


def test_the_pipeline_raises_one_event_per_minute_while_refusing() -> None:
    clock = ManualClock(CLOCK_NS)

    class NullWriter:
        def write(self, lines: bytes) -> None:
            assert lines

        def close(self) -> None:
            return None

    p = Pipeline(
        PipelineOptions(
            decode=DecodeOptions(max_series=2, max_new_series_per_min=None),
            windows=(WindowSpec(window_ms=60_000, grace_ms=0),),
        ),
        writer=NullWriter(),
        clock=clock,
    )
    sub = p.bus.subscribe("test")
    for _ in range(3):
        p.process(RawBatch(*_msgs(range(5))))
        p.bus.publish(p.take_events())
    got = sub.get_nowait()
    assert [e.detector for e in got] == ["cardinality"]
    assert "refused 3" in got[0].message
    clock.advance(61)
    p.process(RawBatch(*_msgs(range(5))))
    assert [e.detector for e in p.take_events()] == ["cardinality"]
    assert p.deadletters.by_reason["cardinality_limit"] == 12
