"""What a reading is: kinds, metrics (FIWARE Smart Data Model names), units, limits.

Metric codes are small integers so that a batch can carry them in a ``uint8``
column; the order inside a kind is the field order of a stored point.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "HARD_LIMITS",
    "KIND_METRICS",
    "METRIC_BY_FIELD",
    "METRIC_INFO",
    "N_METRICS",
    "Kind",
    "Metric",
    "MetricInfo",
    "ReadingFlag",
    "hard_limit_arrays",
]


class Kind(enum.IntEnum):
    AIR = 0
    TRAFFIC = 1

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Kind:
        """The kind named exactly ``air`` or ``traffic`` (as in topics)."""
        for kind in cls:
            if kind.label == text:
                return kind
        raise ValueError(f"unknown sensor kind {text!r} (expected 'air' or 'traffic')")


class Metric(enum.IntEnum):
    PM25 = 0
    PM10 = 1
    NO2 = 2
    O3 = 3
    CO = 4
    SO2 = 5
    TEMPERATURE = 6
    RELATIVE_HUMIDITY = 7
    INTENSITY = 8
    OCCUPANCY = 9
    AVERAGE_VEHICLE_SPEED = 10

    @property
    def field(self) -> str:
        """The FIWARE Smart Data Model attribute name (payload key and stored field)."""
        return METRIC_INFO[self].field


N_METRICS: Final = len(Metric)


class ReadingFlag(enum.IntFlag):
    """Bits carried per reading (``flags`` column) and stored as the ``flags`` field."""

    NONE = 0
    #: The payload had no timestamp; the receive time was used.
    RECEIVE_TIME = 1
    #: PM reading taken at high relative humidity (likely optical over-read).
    HUMID = 2
    #: Arrived after its window closed (stored raw, not aggregated).
    LATE = 4
    #: Outside the metric's plausible range (a sensor fault such as PM pinned at
    #: 999.9): stored and aggregated as measured, kept out of the official indices.
    IMPLAUSIBLE = 8


@dataclass(frozen=True, slots=True)
class MetricInfo:
    field: str
    kind: Kind
    unit: str
    #: Values outside [low, high] cannot be a measurement at all (beyond any
    #: sensor's output range): ingest dead-letters them. Plausibility checks of
    #: a working sensor (e.g. PM pinned at 999.9) are a detector's job.
    low: float
    high: float


METRIC_INFO: Final[dict[Metric, MetricInfo]] = {
    Metric.PM25: MetricInfo("pm25", Kind.AIR, "ug/m3", -50.0, 5000.0),
    Metric.PM10: MetricInfo("pm10", Kind.AIR, "ug/m3", -50.0, 5000.0),
    Metric.NO2: MetricInfo("no2", Kind.AIR, "ug/m3", -500.0, 50_000.0),
    Metric.O3: MetricInfo("o3", Kind.AIR, "ug/m3", -500.0, 50_000.0),
    Metric.CO: MetricInfo("co", Kind.AIR, "ug/m3", -5000.0, 500_000.0),
    Metric.SO2: MetricInfo("so2", Kind.AIR, "ug/m3", -500.0, 50_000.0),
    Metric.TEMPERATURE: MetricInfo("temperature", Kind.AIR, "Cel", -90.0, 90.0),
    Metric.RELATIVE_HUMIDITY: MetricInfo("relativeHumidity", Kind.AIR, "%RH", -5.0, 150.0),
    Metric.INTENSITY: MetricInfo("intensity", Kind.TRAFFIC, "vehicles", 0.0, 100_000.0),
    Metric.OCCUPANCY: MetricInfo("occupancy", Kind.TRAFFIC, "1", 0.0, 1.0),
    Metric.AVERAGE_VEHICLE_SPEED: MetricInfo(
        "averageVehicleSpeed", Kind.TRAFFIC, "km/h", 0.0, 400.0
    ),
}

KIND_METRICS: Final[dict[Kind, tuple[Metric, ...]]] = {
    kind: tuple(m for m in Metric if METRIC_INFO[m].kind is kind) for kind in Kind
}

#: Payload field name (FIWARE) -> metric.
METRIC_BY_FIELD: Final[dict[str, Metric]] = {info.field: m for m, info in METRIC_INFO.items()}

HARD_LIMITS: Final[dict[str, tuple[float, float]]] = {
    info.field: (info.low, info.high) for info in METRIC_INFO.values()
}


def hard_limit_arrays(
    overrides: dict[str, tuple[float, float]] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(low, high) arrays indexed by metric code, with per-field overrides applied."""
    low = np.array([METRIC_INFO[m].low for m in Metric], dtype=np.float64)
    high = np.array([METRIC_INFO[m].high for m in Metric], dtype=np.float64)
    for name, (lo, hi) in (overrides or {}).items():
        if name not in METRIC_BY_FIELD:
            raise ValueError(f"unknown metric {name!r} in limits")
        low[METRIC_BY_FIELD[name]] = lo
        high[METRIC_BY_FIELD[name]] = hi
    return low, high
