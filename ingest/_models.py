"""Pydantic models of the native JSON payload (FIWARE Smart Data Model names).

They are TypedDicts, so that pydantic-core validates a whole micro-batch in one
call (``list[AirPayload]``) and no model instance is built per reading; the
decoder turns the validated dicts straight into columns.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

__all__ = ["AirPayload", "Timestamp", "TrafficPayload", "UnknownFields", "payload_model"]

#: A number since the epoch in the configured unit, or an ISO 8601 string. Strings
#: are parsed by the decoder with ``datetime.fromisoformat`` (never guessed as
#: epoch numbers, which pydantic's own datetime parsing would do).
Timestamp = int | float | str

UnknownFields = Literal["reject", "ignore"]

_Finite = Annotated[float, Field(allow_inf_nan=False)]


class AirPayload(TypedDict, total=False):
    """AirQualityObserved: concentrations in ug/m3, temperature in C, RH in %."""

    dateObserved: Timestamp
    pm25: _Finite
    pm10: _Finite
    no2: _Finite
    o3: _Finite
    co: _Finite
    so2: _Finite
    temperature: _Finite
    relativeHumidity: _Finite


class TrafficPayload(TypedDict, total=False):
    """TrafficFlowObserved: intensity (vehicles/period), occupancy 0-1, speed km/h."""

    dateObserved: Timestamp
    intensity: _Finite
    occupancy: _Finite
    averageVehicleSpeed: _Finite
    laneId: Annotated[int, Field(ge=1, le=64)]


def payload_model(kind_label: str, unknown_fields: UnknownFields) -> type:
    """The TypedDict for a kind with the unknown-fields policy applied."""
    base: type = AirPayload if kind_label == "air" else TrafficPayload
    extra = "forbid" if unknown_fields == "reject" else "ignore"
    config = ConfigDict(extra=extra, allow_inf_nan=False, strict=True)  # type: ignore[typeddict-item]
    return type(base.__name__, (base,), {"__pydantic_config__": config})
