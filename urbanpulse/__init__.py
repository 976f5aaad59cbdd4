"""UrbanPulse: smart-city sensor ingestion (MQTT -> numpy windows -> InfluxDB)."""

from urbanpulse._batch import DeadLetter, ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import Clock, ManualClock, SystemClock
from urbanpulse._errors import (
    BrokerError,
    ConfigError,
    DecodeError,
    OutputError,
    RetryableOutputError,
    UrbanPulseError,
)
from urbanpulse._schema import KIND_METRICS, METRIC_INFO, Kind, Metric, ReadingFlag

__version__ = "0.1.0"

__all__ = [
    "KIND_METRICS",
    "METRIC_INFO",
    "BrokerError",
    "Clock",
    "ConfigError",
    "DeadLetter",
    "DecodeError",
    "Kind",
    "ManualClock",
    "Metric",
    "OutputError",
    "ReadingBatch",
    "ReadingFlag",
    "RetryableOutputError",
    "SeriesKey",
    "SeriesRegistry",
    "SystemClock",
    "UrbanPulseError",
    "__version__",
]
