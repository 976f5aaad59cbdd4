"""Deterministic smart-city sensor simulator: a fleet, its values, native payloads, pacing.

``Simulator(options, clock).messages(n)`` gives a deterministic list of
``(topic, payload)`` without a broker; ``run_simulation`` publishes them at a
target rate through any ``Publisher``.
"""

from sim._fleet import AIR_MODELS, CITIES, MODEL_NAMES, CityInfo, Fleet, SensorInfo
from sim._payloads import (
    TimestampFormat,
    encode_air,
    encode_traffic,
    format_fixed,
    format_timestamps,
)
from sim._runner import (
    Publisher,
    SimOptions,
    SimProgress,
    SimStats,
    Simulator,
    SleepFn,
    run_simulation,
)
from sim._values import (
    WIB_OFFSET_S,
    AirColumns,
    TrafficColumns,
    ValueModel,
    local_hour,
    pm_diurnal_factor,
    traffic_demand,
    weekday,
)

__all__ = [
    "AIR_MODELS",
    "CITIES",
    "MODEL_NAMES",
    "WIB_OFFSET_S",
    "AirColumns",
    "CityInfo",
    "Fleet",
    "Publisher",
    "SensorInfo",
    "SimOptions",
    "SimProgress",
    "SimStats",
    "Simulator",
    "SleepFn",
    "TimestampFormat",
    "TrafficColumns",
    "ValueModel",
    "encode_air",
    "encode_traffic",
    "format_fixed",
    "format_timestamps",
    "local_hour",
    "pm_diurnal_factor",
    "run_simulation",
    "traffic_demand",
    "weekday",
]
