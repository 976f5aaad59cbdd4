"""One contract for EVERY detector (and the suite), river-style.

* snapshot/restore mid-stream gives the same subsequent detections and state;
* two fresh instances fed the same input agree (determinism);
* scoring/peeking (``score``, ``bad``) changes nothing;
* cutting the stream into different micro-batches gives the same detections
  (exact for every detector: each stream is processed reading by reading in
  arrival order, see ``processors._detect_core``);
* every boolean flag, both ways: enabled emits, disabled does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_detectors import (
    FAST,
    T0,
    Message,
    records,
    registry_for,
    run_batches,
    spans,
    synthetic_stream,
    to_batch,
)

from processors._detect_core import DetectorBase
from processors._detectors import DetectorConfig, DetectorSuite, build_detectors
from urbanpulse._clock import ManualClock

STREAM = synthetic_stream()
HALF = len(STREAM) // 2
#: Restore points: before every fault, and in the middle of several episodes.
SPLITS = [
    next(i for i, m in enumerate(STREAM) if m[1] >= T0 + minute * 60 * 10**9)
    for minute in (75, 142)
]
NAMES = [d.name for d in build_detectors(FAST)]


def make(name: str, config: DetectorConfig = FAST) -> DetectorBase:
    return next(d for d in build_detectors(config) if d.name == name)


def state(det: DetectorBase | DetectorSuite) -> dict[str, Any]:
    return {k: v.tolist() for k, v in det.snapshot().items()}


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    # NaN-aware: compare through repr
    return repr(a) == repr(b)


def feed(det: DetectorBase, msgs: list[Message], cuts: list[int]) -> list[Any]:
    return records(run_batches(det, msgs, cuts))


@pytest.mark.parametrize("name", NAMES)
def test_every_detector_fires_on_the_synthetic_stream(name: str) -> None:
    assert len(make(name).update(to_batch(STREAM))) >= 2


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_restore_mid_stream(name: str) -> None:
    emitted = 0
    for split in SPLITS:
        a = make(name)
        a.update(to_batch(STREAM[:split]))
        snap = a.snapshot()
        b = make(name)
        b.restore({k: np.array(v) for k, v in snap.items()})  # as if loaded from np.savez
        assert same_state(state(a), state(b))
        rest = to_batch(STREAM[split:])
        got_a, got_b = records(a.update(rest)), records(b.update(rest))
        assert got_a == got_b
        emitted += len(got_a)
        assert same_state(state(a), state(b))
        wm = T0 + 10 * 86_400 * 10**9
        assert records(a.check(wm)) == records(b.check(wm))
    assert emitted > 0


@pytest.mark.parametrize("name", NAMES)
def test_restore_replaces_state(name: str) -> None:
    a = make(name)
    a.update(to_batch(STREAM[:HALF]))
    empty = make(name).snapshot()
    a.restore(empty)
    assert same_state(state(a), state(make(name)))


@pytest.mark.parametrize("name", NAMES)
def test_a_snapshot_that_does_not_fit_is_refused_and_changes_nothing(name: str) -> None:
    a = make(name)
    a.update(to_batch(STREAM[:HALF]))
    before = state(a)
    good = a.snapshot()
    table = next(k.rsplit(".", 1)[0] for k in good if k.endswith(".local"))
    column = next(k for k in good if ".col." in k)
    old_version = {k: v for k, v in good.items() if k != column}  # a column it did not have
    other_layout = {**good, f"{table}.local": good[f"{table}.local"][::-1].copy()}
    for bad in (old_version, other_layout):
        assert a.misfit(bad) is not None
        with pytest.raises(ValueError, match="cannot restore detector state"):
            make(name).restore(bad)
        with pytest.raises(ValueError, match="cannot restore detector state"):
            a.restore(bad)
        assert same_state(state(a), before)
    assert a.misfit(good) is None


def test_suite_refuses_a_snapshot_of_another_config_atomically() -> None:
    suite = DetectorSuite(FAST, registry_for(), ManualClock(T0))
    suite.update(to_batch(STREAM[:HALF]))
    snap = suite.snapshot()
    fewer = replace(FAST, flatline=replace(FAST.flatline, enabled=False))
    small = DetectorSuite(fewer, registry_for(), ManualClock(T0))
    small.update(to_batch(STREAM[:HALF]))
    # the bigger suite needs flatline state the smaller one's snapshot lacks
    fresh = DetectorSuite(FAST, registry_for(), ManualClock(T0))
    untouched = state(fresh)
    with pytest.raises(ValueError, match="flatline"):
        fresh.restore(small.snapshot())
    assert same_state(state(fresh), untouched)
    fresh.restore(snap)


@pytest.mark.parametrize("name", NAMES)
def test_determinism(name: str) -> None:
    a, b = make(name), make(name)
    cuts = [100, 700, 1500]
    assert feed(a, STREAM, cuts) == feed(b, STREAM, cuts)
    assert same_state(state(a), state(b))


@pytest.mark.parametrize("name", ["spike", "range"])
def test_scoring_has_no_side_effects(name: str) -> None:
    det = make(name)
    det.update(to_batch(STREAM[:HALF]))
    before = state(det)
    batch = to_batch(STREAM)
    peek: Callable[[Any], Any] = getattr(det, "score" if name == "spike" else "bad")
    first, second = peek(batch), peek(batch)
    assert np.array_equal(first, second, equal_nan=True)
    assert same_state(before, state(det))
    if name == "spike":
        assert np.isfinite(first).any()
        assert np.nanmax(np.abs(first)) > 6  # the pinned PM2.5 readings
    else:
        assert first.any()


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(NAMES), st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_micro_batch_cuts_do_not_change_detections(name: str, cuts: list[int]) -> None:
    whole = feed(make(name), STREAM, [])
    assert feed(make(name), STREAM, cuts) == whole


def test_single_message_batches_match_one_batch() -> None:
    for name in NAMES:
        msgs = STREAM[:600]
        assert feed(make(name), msgs, list(range(600))) == feed(make(name), msgs, []), name


# --------------------------------------------------------------------------- flags

Toggle = Callable[[DetectorConfig, bool], DetectorConfig]


def switch(section: str, flag: str = "enabled") -> Toggle:
    """Set ``config.<section>.<flag>``."""

    def toggle(c: DetectorConfig, on: bool) -> DetectorConfig:
        changed: dict[str, Any] = {flag: on}
        return replace(c, **{section: replace(getattr(c, section), **changed)})

    return toggle


#: (flag, how to set it, the event detector it switches)
FLAGS: list[tuple[str, Toggle, str]] = [
    ("range", switch("sensor_fault"), "range"),
    ("spike", switch("spike"), "spike"),
    ("flatline", switch("flatline"), "flatline"),
    ("dead", switch("dead_sensor"), "dead"),
    ("humid_pm", switch("humid_pm"), "humid_pm"),
    ("traffic_state", switch("traffic_state"), "congestion"),
    ("congestion", switch("traffic_state", "congestion"), "congestion"),
    ("level_of_service", switch("traffic_state", "level_of_service"), "level_of_service"),
    ("incident", switch("speed_drop"), "incident"),
    ("loop_health", switch("loop_health"), "loop_intermittent"),
    ("intermittent", switch("loop_health", "intermittent"), "loop_intermittent"),
    ("constant_occupancy", switch("loop_health", "constant_occupancy"), "loop_constant_occupancy"),
]


def suite_events(config: DetectorConfig) -> tuple[DetectorSuite, list[Any], np.ndarray[Any, Any]]:
    suite = DetectorSuite(config, registry_for(), ManualClock(T0))
    events: list[Any] = []
    flags = []
    for a, b in spans(len(STREAM), range(0, len(STREAM), 200)):
        res = suite.update(to_batch(STREAM[a:b]))
        events += res.events + suite.check(STREAM[b - 1][1])
        flags.append(res.flags)
    return suite, events, np.concatenate(flags)


@pytest.mark.parametrize(("flag", "toggle", "detector"), FLAGS, ids=[f[0] for f in FLAGS])
def test_flag_both_ways(flag: str, toggle: Toggle, detector: str) -> None:
    _, on, _ = suite_events(toggle(FAST, True))
    _, off, _ = suite_events(toggle(FAST, False))
    assert any(e.detector == detector for e in on), flag
    assert not any(e.detector == detector for e in off), flag
    # the other detectors are untouched by the flag
    others = {"level_of_service", "congestion"} if flag == "traffic_state" else set()
    others |= {"loop_intermittent", "loop_constant_occupancy"} if flag == "loop_health" else set()
    keep = {detector} | others
    assert [e for e in on if e.detector not in keep] == [e for e in off if e.detector not in keep]


def test_humid_flags_follow_the_humid_switch() -> None:
    _, _, on = suite_events(FAST)
    off_cfg = replace(FAST, humid_pm=replace(FAST.humid_pm, enabled=False))
    suite, _, off = suite_events(off_cfg)
    assert on.any()
    assert not off.any()
    assert "humid_pm" not in suite.names


def test_disabled_detector_keeps_no_state() -> None:
    cfg = replace(FAST, spike=replace(FAST.spike, enabled=False))
    det = make("spike", cfg)
    assert len(det.update(to_batch(STREAM))) == 0
    assert det.state_nbytes == make("spike", cfg).state_nbytes


# --------------------------------------------------------------------------- the suite


def suite_run(cuts: list[int], restore_at: int | None = None) -> tuple[DetectorSuite, list[Any]]:
    """Events of the suite over STREAM cut at ``cuts`` (update only), optionally
    handing over to a fresh suite restored from a snapshot at ``restore_at``."""
    suite = DetectorSuite(FAST, registry_for(), ManualClock(T0))
    events: list[Any] = []
    for a, b in spans(len(STREAM), [*cuts, *([] if restore_at is None else [restore_at])]):
        if a == restore_at:
            fresh = DetectorSuite(FAST, registry_for(), ManualClock(T0))
            fresh.restore({k: np.array(v) for k, v in suite.snapshot().items()})
            suite = fresh
        events += suite.update(to_batch(STREAM[a:b])).events
    return suite, events


def test_suite_snapshot_restore_and_split() -> None:
    whole, want = suite_run(list(range(0, len(STREAM), 200)))
    for split in SPLITS:
        restored, got = suite_run([], restore_at=split)
        assert got == want
        assert same_state(state(restored), state(whole))
    assert {e.detector for e in want} >= {"range", "spike", "flatline", "dead", "incident"}
    assert whole.state_nbytes > 0


def test_suite_detections_are_columnar_copies_of_events() -> None:
    suite = DetectorSuite(FAST, registry_for(), ManualClock(T0))
    res = suite.update(to_batch(STREAM))
    assert len(res.events) > 10
    assert res.detections.ts_ns.tolist() == [e.event_ns for e in res.events]
    assert res.detections.value.tolist() == pytest.approx(
        [e.value for e in res.events], nan_ok=True
    )
    names = [suite.names[d] for d in res.detections.det.tolist()]
    aliases = {"traffic_state": ("congestion", "level_of_service"), "loop_health": ("loop_",)}
    for name, e in zip(names, res.events, strict=True):
        assert e.detector.startswith(aliases.get(name, (name,)))
