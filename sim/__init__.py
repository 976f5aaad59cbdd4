"""Deterministic smart-city sensor simulator: a fleet, its values, native payloads, pacing.

``Simulator(options, clock).messages(n)`` gives a deterministic list of
``(topic, payload)`` without a broker; ``run_simulation`` publishes them at a
target rate through any ``Publisher``. Cities come from built-in tables or
city files (``load_city``); scenarios (``load_scenario``, ``random_scenario``)
inject faults with ground truth (``Simulator.labels``, ``write_labels``);
``score_detections`` scores detector events against it; ``Replayer`` replays
recorded CSV or line protocol through the same pacing.
"""

from sim._cities import (
    CityModel,
    CorridorSpec,
    DistrictSpec,
    GenerateSpec,
    SensorSpec,
    bundled_cities,
    city_fleet,
    load_city,
)
from sim._faults import FaultPlan, compile_scenario
from sim._fleet import AIR_MODELS, CITIES, MODEL_NAMES, CityInfo, Fleet, SensorInfo
from sim._groundtruth import (
    EXPECTED_DETECTORS,
    FAULT_KINDS,
    Label,
    clip_labels,
    read_labels,
    write_labels,
)
from sim._payloads import (
    TimestampFormat,
    encode_air,
    encode_traffic,
    format_fixed,
    format_timestamps,
)
from sim._replay import Recording, Replayer, read_csv, read_line_protocol, run_replay
from sim._runner import (
    MessageSource,
    Publisher,
    SimOptions,
    SimProgress,
    SimStats,
    Simulator,
    SleepFn,
    pace,
    resolve_fleet,
    run_simulation,
)
from sim._scenario import (
    ClockSkewFault,
    DropoutFault,
    FaultRates,
    FogFault,
    HazeFault,
    IncidentFault,
    OutOfRangeFault,
    Scenario,
    SpikeFault,
    StuckFault,
    load_scenario,
    random_scenario,
)
from sim._score import DetectorScore, ScoreTable, score_detections
from sim._values import (
    WIB_OFFSET_S,
    AirColumns,
    TrafficColumns,
    ValueModel,
    WeatherColumns,
    local_hour,
    pm_diurnal_factor,
    traffic_demand,
    weekday,
)

__all__ = [
    "AIR_MODELS",
    "CITIES",
    "EXPECTED_DETECTORS",
    "FAULT_KINDS",
    "MODEL_NAMES",
    "WIB_OFFSET_S",
    "AirColumns",
    "CityInfo",
    "CityModel",
    "ClockSkewFault",
    "CorridorSpec",
    "DetectorScore",
    "DistrictSpec",
    "DropoutFault",
    "FaultPlan",
    "FaultRates",
    "Fleet",
    "FogFault",
    "GenerateSpec",
    "HazeFault",
    "IncidentFault",
    "Label",
    "MessageSource",
    "OutOfRangeFault",
    "Publisher",
    "Recording",
    "Replayer",
    "Scenario",
    "ScoreTable",
    "SensorInfo",
    "SensorSpec",
    "SimOptions",
    "SimProgress",
    "SimStats",
    "Simulator",
    "SleepFn",
    "SpikeFault",
    "StuckFault",
    "TimestampFormat",
    "TrafficColumns",
    "ValueModel",
    "WeatherColumns",
    "bundled_cities",
    "city_fleet",
    "clip_labels",
    "compile_scenario",
    "encode_air",
    "encode_traffic",
    "format_fixed",
    "format_timestamps",
    "load_city",
    "load_scenario",
    "local_hour",
    "pace",
    "pm_diurnal_factor",
    "random_scenario",
    "read_csv",
    "read_labels",
    "read_line_protocol",
    "resolve_fleet",
    "run_replay",
    "run_simulation",
    "score_detections",
    "traffic_demand",
    "weekday",
    "write_labels",
]
