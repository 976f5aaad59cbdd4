"""Natural-condition ground truth (sim._truth): runs of a mask, labels from the noise-free city."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim._groundtruth import Label
from sim._runner import SimOptions, resolve_fleet
from sim._scenario import FogFault, HazeFault, IncidentFault, Scenario, SpikeFault
from sim._truth import CONDITION_DETECTORS, TruthOptions, condition_labels, runs

START = 1_798_761_600 * 10**9  # 2027-01-01T00:00Z = 07:00 WIB
HOUR = 3600 * 10**9


def ref_runs(row: list[bool], merge_gap: int, min_length: int) -> list[tuple[int, int]]:
    spans: list[list[int]] = []
    for i, v in enumerate(row):
        if not v:
            continue
        # adjacent, or after a gap shorter than merge_gap: the same run
        if spans and (spans[-1][1] == i or i - spans[-1][1] < merge_gap):
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(a, b) for a, b in spans if b - a >= min_length]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=4),
    st.integers(0, 4),
    st.integers(1, 5),
)
def test_runs_match_a_plain_loop(rows: list[list[bool]], merge_gap: int, min_length: int) -> None:
    row, a, b = runs(np.array(rows), merge_gap=merge_gap, min_length=min_length)
    got = [(int(r), int(x), int(y)) for r, x, y in zip(row, a, b, strict=True)]
    want = [(r, x, y) for r, v in enumerate(rows) for x, y in ref_runs(v, merge_gap, min_length)]
    assert got == want


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    return resolve_fleet(SimOptions(seed=7, city="sindangraja"))


def test_clean_city_has_each_condition_and_labels_name_their_detectors(fleet) -> None:  # type: ignore[no-untyped-def]
    labels = condition_labels(fleet, start_ns=START, end_ns=START + 48 * HOUR)
    kinds = {lb.fault for lb in labels}
    # the clean city's 24 h PM2.5 means stay under the ISPU "Tidak Sehat" line
    assert kinds == set(CONDITION_DETECTORS) - {"ispu_unhealthy"}
    for lb in labels:
        assert lb.detectors == CONDITION_DETECTORS[lb.fault]
        assert START <= lb.start_ns < lb.end_ns <= START + 48 * HOUR
        assert lb.end_ns - lb.start_ns >= 600 * 10**9
        assert (lb.lane > 0) == (lb.fault == "slow_traffic")
    # rush hour (07:00-09:00 WIB) is slow on most lanes, 02:00 WIB on none
    slow = [lb for lb in labels if lb.fault == "slow_traffic"]
    lanes = {(lb.sensor_id, lb.lane) for lb in slow}
    at_rush = {(lb.sensor_id, lb.lane) for lb in slow if lb.start_ns <= START + HOUR < lb.end_ns}
    assert len(at_rush) >= 0.8 * len(lanes)
    night = START + 19 * HOUR  # 02:00 WIB
    assert not [
        lb for lb in slow if lb.start_ns <= night < lb.end_ns and lb.end_ns - lb.start_ns > 2 * HOUR
    ]


def test_world_events_of_a_scenario_make_conditions_and_sensor_faults_do_not(fleet) -> None:  # type: ignore[no-untyped-def]
    end = START + 24 * HOUR
    base = condition_labels(fleet, start_ns=START, end_ns=end)
    haze = Scenario(faults=[HazeFault(district="cikaso", start_s=2 * 3600, duration_s=20 * 3600,
                                      pm25_add_ugm3=300.0)])  # fmt: skip
    hazy = condition_labels(fleet, start_ns=START, end_ns=end, scenario=haze)

    def hours(labels: list[Label], fault: str, district: str) -> float:
        return sum(
            (lb.end_ns - lb.start_ns) / HOUR
            for lb in labels
            if lb.fault == fault and lb.district == district
        )

    assert hours(hazy, "aqi_unhealthy", "cikaso") > hours(base, "aqi_unhealthy", "cikaso") + 30
    assert hours(hazy, "ispu_unhealthy", "cikaso") > hours(base, "ispu_unhealthy", "cikaso")
    # an ISPU day needs 18 hourly means: none from the first 17 hours of haze
    ispu_from = min(lb.start_ns for lb in hazy if lb.fault == "ispu_unhealthy")
    assert ispu_from == START + 18 * HOUR
    assert hours(hazy, "aqi_unhealthy", "margaluyu") == hours(base, "aqi_unhealthy", "margaluyu")
    fog = Scenario(faults=[FogFault(district="cikaso", start_s=12 * 3600, duration_s=3 * 3600)])
    foggy = condition_labels(fleet, start_ns=START, end_ns=end, scenario=fog)
    assert hours(foggy, "saturated_air", "cikaso") > hours(base, "saturated_air", "cikaso") + 2
    lane = next(i for i in range(fleet.n_streams) if fleet.kind[i] == 1)
    incident = Scenario(faults=[IncidentFault(sensor_id=fleet.sensor_id[lane], start_s=15 * 3600,
                                              duration_s=3600, severity=0.9)])  # fmt: skip
    jammed = condition_labels(fleet, start_ns=START, end_ns=end, scenario=incident)
    assert len(jammed) > len(base)
    spike = Scenario(faults=[SpikeFault(sensor_id=fleet.sensor_id[0], start_s=3600, factor=50.0)])
    assert condition_labels(fleet, start_ns=START, end_ns=end, scenario=spike) == base


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="step_s"):
        TruthOptions(step_s=7.0)
    with pytest.raises(ValueError, match="2-D"):
        runs(np.zeros(3, np.bool_))
