"""Scoring detector events against ground truth: hand-made cases with known answers."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from sim import DetectorScore, Label, score_detections
from sim._groundtruth import interval_pairs
from urbanpulse._events import Event, EventState, Severity

T0 = 1_763_917_200_000_000_000
S = 1_000_000_000
DAY = 86_400 * S


def label(
    sensor: str,
    start_s: float,
    end_s: float,
    *,
    fault: str = "stuck",
    detectors: tuple[str, ...] = ("flatline",),
    lane: int = 0,
    metric: str = "",
) -> Label:
    return Label(
        sensor_id=sensor,
        fault=fault,
        start_ns=T0 + round(start_s * S),
        end_ns=T0 + round(end_s * S),
        detectors=detectors,
        lane=lane,
        metric=metric,
    )


def event(
    sensor: str,
    at_ns: int,
    *,
    detector: str = "flatline",
    state: EventState = "start",
    lane: int = 0,
    metric: str = "",
) -> Event:
    return Event(
        detector=detector,
        state=state,
        severity=Severity.WARNING,
        kind="air",
        city="c",
        district="d",
        sensor_id=sensor,
        lane=lane,
        metric=metric,
        event_ns=at_ns,
        detected_ns=at_ns,
        message="",
    )


def score(labels: list[Label], events: list[Event], **kw: object) -> dict[str, DetectorScore]:
    args: dict[str, object] = {
        "n_sensors": 10,
        "start_ns": T0,
        "end_ns": T0 + 2 * DAY,
        "tolerance_s": 60.0,
    }
    args.update(kw)
    table = score_detections(labels, events, **args)  # type: ignore[arg-type]
    return {r.detector: r for r in table.rows}


def test_perfect_detector_scores_one() -> None:
    labels = [label(f"s{i}", 100 * i, 100 * i + 50) for i in range(5)]
    events = [event(f"s{i}", lb.start_ns) for i, lb in enumerate(labels)]
    r = score(labels, events)["flatline"]
    assert (r.precision, r.recall, r.f1) == (1.0, 1.0, 1.0)
    assert r.delay_median_s == 0.0
    assert r.false_alarms_per_sensor_day == 0.0


def test_missed_label_and_false_alarm() -> None:
    labels = [label("a", 0, 100), label("b", 0, 100)]
    # "a" detected 30 s in; "c" is clean: a false alarm.
    events = [event("a", T0 + 30 * S), event("c", T0 + 5000 * S)]
    r = score(labels, events)["flatline"]
    assert r.labels == 2
    assert r.detected == 1
    assert r.recall == 0.5
    assert r.precision == 0.5
    assert r.f1 == pytest.approx(0.5)
    assert r.false_positives == 1
    assert r.clean_alarms == 1
    # 1 alarm over 10 sensors x 2 days.
    assert r.false_alarms_per_sensor_day == pytest.approx(1 / 20)
    assert r.delay_median_s == 30.0


def test_delay_percentiles_use_the_first_detection_of_each_label() -> None:
    labels = [label(f"s{i}", 0, 1000) for i in range(10)]
    events = [event(f"s{i}", T0 + (i + 1) * 10 * S) for i in range(10)]
    # A later second event on s0 does not change its delay (10 s).
    events.append(event("s0", T0 + 900 * S))
    r = score(labels, events)["flatline"]
    assert r.delay_median_s == pytest.approx(55.0)
    assert r.delay_p95_s == pytest.approx(95.5)
    # Each label counts once; both events on s0 are correct.
    assert r.detected == 10
    assert r.events == 11
    assert r.matched_events == 11


@pytest.mark.parametrize(
    ("offset_ns", "matches"),
    [
        (-60 * S, True),  # start - tolerance: included
        (-60 * S - 1, False),
        (100 * S + 60 * S, True),  # end + tolerance: included
        (100 * S + 60 * S + 1, False),
    ],
)
def test_tolerance_edges(offset_ns: int, matches: bool) -> None:
    # a point episode: the start and its end at the same instant
    at = T0 + offset_ns
    events = [event("a", at), event("a", at, state="end")]
    r = score([label("a", 0, 100)], events, start_ns=T0 - DAY)["flatline"]
    assert r.detected == (1 if matches else 0)
    assert r.clean_alarms == (0 if matches else 1)


def test_negative_delay_inside_the_early_tolerance() -> None:
    r = score([label("a", 0, 100)], [event("a", T0 - 20 * S)], start_ns=T0 - DAY)["flatline"]
    assert r.delay_median_s == -20.0


def test_per_detector_tolerance() -> None:
    labels = [label("a", 0, 100, fault="haze", detectors=("ispu",))]
    events = [event("a", T0 + 3 * 3600 * S, detector="ispu", state="change")]
    strict = score(labels, events)["ispu"]
    loose = score(labels, events, tolerance_s={"*": 60.0, "ispu": 86_400.0})["ispu"]
    assert strict.recall == 0.0
    assert loose.recall == 1.0
    assert loose.tolerance_s == 86_400.0


def test_lane_and_metric_must_agree_unless_unspecified() -> None:
    labels = [
        label("t", 0, 100, fault="spike", detectors=("spike",), lane=2, metric="occupancy"),
        label("u", 0, 100, fault="spike", detectors=("spike",)),
    ]
    events = [
        event("t", T0 + S, detector="spike", lane=1, metric="occupancy"),  # wrong lane
        event("t", T0 + 2 * S, detector="spike", lane=2, metric="intensity"),  # wrong metric
        event("u", T0 + S, detector="spike", lane=1, metric="intensity"),  # label is whole sensor
    ]
    r = score(labels, events)["spike"]
    assert r.detected == 1
    assert r.matched_events == 1
    events.append(event("t", T0 + 3 * S, detector="spike", lane=2, metric="occupancy"))
    assert score(labels, events)["spike"].detected == 2


def test_wrong_detector_or_end_state_does_not_count() -> None:
    labels = [label("a", 0, 100)]
    events = [
        event("a", T0 + S, detector="spike"),
        event("a", T0 + 2 * S, state="end"),
    ]
    rows = score(labels, events)
    assert rows["flatline"].detected == 0
    assert rows["flatline"].events == 0
    assert math.isnan(rows["flatline"].precision)
    # The spike event sits on a labelled (unclean) interval: a false positive, not a
    # false alarm on clean data.
    assert rows["spike"].false_positives == 1
    assert rows["spike"].clean_alarms == 0


def test_an_episode_counts_from_start_to_end() -> None:
    lab = label("a", 1000, 1100)
    # started long before the label and still on during it: detected at once
    before = [event("a", T0), event("a", T0 + 1050 * S, state="end")]
    r = score([lab], before)["flatline"]
    assert (r.detected, r.matched_events, r.delay_median_s) == (1, 1, 0.0)
    # the same start, but the episode ended before the label (and its tolerance)
    ended = [event("a", T0), event("a", T0 + 900 * S, state="end")]
    r = score([lab], ended)["flatline"]
    assert (r.detected, r.matched_events, r.clean_alarms) == (0, 0, 1)
    # a start without an end lasts to the end of the scored period
    r = score([lab], [event("a", T0)])["flatline"]
    assert r.detected == 1
    # an end closes the episode of its own series only
    other = [event("a", T0), event("a", T0 + 10 * S, state="end", metric="pm25")]
    assert score([lab], other)["flatline"].detected == 1


def test_context_labels_make_events_correct_without_counting_for_recall() -> None:
    injected = [label("a", 0, 100)]
    natural = [label("b", 0, 3600, fault="saturated_air")]
    events = [event("a", T0 + S), event("b", T0 + 60 * S)]
    plain = score(injected, events)["flatline"]
    assert (plain.precision, plain.clean_alarms) == (0.5, 1)
    with_ctx = score(injected, events, context=natural)["flatline"]
    assert (with_ctx.labels, with_ctx.detected, with_ctx.recall) == (1, 1, 1.0)
    assert (with_ctx.precision, with_ctx.clean_alarms) == (1.0, 0)


def test_district_events_match_labels_of_any_sensor_in_their_district() -> None:
    lab = Label(
        sensor_id="a",
        fault="aqi_unhealthy",
        start_ns=T0,
        end_ns=T0 + 3600 * S,
        detectors=("aqi",),
        district="d",
    )
    ev = event("", T0 + 60 * S, detector="aqi", state="change")  # district "d"
    r = score([lab], [ev])["aqi"]
    assert (r.detected, r.matched_events) == (1, 1)
    r = score([lab], [dataclasses.replace(ev, district="e")])["aqi"]
    assert (r.detected, r.clean_alarms) == (0, 1)


def test_tolerance_per_detector_and_fault() -> None:
    labels = [
        label("a", 0, 100, fault="haze", detectors=("aqi",)),
        label("b", 0, 100, fault="aqi_unhealthy", detectors=("aqi",)),
    ]
    late = 2 * 3600 * S
    events = [
        event("a", T0 + late, detector="aqi", state="change"),
        event("b", T0 + late, detector="aqi", state="change"),
    ]
    tol = {"*": 60.0, "aqi": 43_200.0, "aqi@aqi_unhealthy": 3600.0}
    r = score(labels, events, tolerance_s=tol)["aqi"]
    assert (r.detected, r.matched_events) == (1, 1)


def test_only_episodes_reaching_into_the_scored_period_count() -> None:
    warm_up = [event("a", T0 - 100 * S), event("a", T0 - 50 * S, state="end")]
    r = score([], [*warm_up, event("b", T0 - 100 * S)])["flatline"]
    # a's episode ended before the period; b's (never ended) reaches into it
    assert (r.events, r.clean_alarms) == (1, 1)


def test_table_renders_markdown_and_json() -> None:
    labels = [label("a", 0, 100), label("b", 0, 100, fault="dropout", detectors=("dead",))]
    table = score_detections(
        labels, [event("a", T0 + S)], n_sensors=4, start_ns=T0, end_ns=T0 + DAY
    )
    md = table.to_markdown()
    assert md.splitlines()[0].startswith("| detector |")
    assert "| flatline | 1 | 1 | 1.000 | 1 | 1.000 | 1.000 | 1.0 | 1.0 | 0.0000 |" in md
    assert "| dead | 1 | 0 | 0.000 | 0 | - | - | - | - | 0.0000 |" in md
    data = json.loads(table.to_json())
    assert data["n_sensors"] == 4
    assert data["days"] == 1.0
    dead = next(d for d in data["detectors"] if d["detector"] == "dead")
    assert dead["precision"] is None
    assert dead["recall"] == 0.0
    assert table.row("flatline").f1 == 1.0
    with pytest.raises(KeyError):
        table.row("nope")


def test_invalid_period_is_refused() -> None:
    with pytest.raises(ValueError, match="n_sensors"):
        score_detections([], [], n_sensors=0, start_ns=T0, end_ns=T0 + DAY)


def test_interval_pairs_edges_overlaps_and_groups() -> None:
    i64 = np.int64
    iv_group = np.array([1, 1, 2], dtype=i64)
    iv_lo = np.array([10, 15, 10], dtype=i64)
    iv_hi = np.array([20, 30, 20], dtype=i64)
    q_group = np.array([1, 1, 1, 1, 2, 3], dtype=i64)
    q_t = np.array([9, 10, 17, 20, 20, 15], dtype=i64)
    q, iv = interval_pairs(iv_group, iv_lo, iv_hi, q_group, q_t)
    # t=9 before; t=10 in the first; t=17 in both (overlap); t=20 only in [15, 30)
    # (half-open); group 2 at its end: nothing; group 3 has no intervals.
    assert sorted(zip(q.tolist(), iv.tolist(), strict=True)) == [(1, 0), (2, 0), (2, 1), (3, 1)]
    q, iv = interval_pairs(iv_group, iv_lo, iv_hi, q_group, q_t, closed=True)
    assert sorted(zip(q.tolist(), iv.tolist(), strict=True)) == [
        (1, 0),
        (2, 0),
        (2, 1),
        (3, 0),
        (3, 1),
        (4, 2),
    ]
