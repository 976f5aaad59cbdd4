"""Unit normalisation: one canonical unit per metric, converted vectorised on columns.

Codecs do not convert anything: they record, per (row, metric) cell, a small
integer :class:`Unit` code next to the raw value. After decoding, the decoder
looks the codes up in two tables indexed ``[metric, unit]`` (a factor and an
offset) and converts a whole micro-batch at once::

    canonical = raw * FACTOR[metric, unit] + OFFSET[metric, unit]

A cell whose unit cannot express its metric (``Cel`` for ``pm25``) has a NaN
factor; the decoder refuses such messages with ``unit_mismatch``.

Canonical units (``urbanpulse._schema``): concentrations in ug/m3 (gases too),
temperature in Cel, relative humidity in %RH, occupancy as a 0-1 fraction,
speed in km/h, intensity in vehicles.

Gas mixing ratios are converted at 25 C and 1 atm (101.325 kPa), where one mole
of an ideal gas occupies 24.45 L: ``ug/m3 = ppb * M / 24.45`` with M the molar
mass in g/mol, and ``ppm = 1000 ppb``. The same convention as the EU and US EPA
reference conditions for gases; ISPU tables are in ug/m3 as well.
"""

from __future__ import annotations

import enum
from typing import Final

import numpy as np
from numpy.typing import NDArray

from urbanpulse._schema import N_METRICS, Metric

__all__ = [
    "MOLAR_MASS_G_MOL",
    "MOLAR_VOLUME_L",
    "UNIT_FACTOR",
    "UNIT_OFFSET",
    "UNIT_SYMBOLS",
    "Unit",
    "convertible",
    "normalise_units",
    "parse_unit",
]


class Unit(enum.IntEnum):
    """A unit a payload may state. ``CANONICAL`` means "the metric's own unit"."""

    CANONICAL = 0
    UG_M3 = 1
    MG_M3 = 2
    PPB = 3
    PPM = 4
    CEL = 5
    KELVIN = 6
    FAHRENHEIT = 7
    PERCENT = 8  # "%": humidity in %RH, occupancy in %
    RATIO = 9  # SenML "/": a 0-1 fraction
    KM_H = 10
    M_S = 11
    COUNT = 12  # vehicles (SenML "1", "count")
    PERCENT_RH = 13  # "%RH": relative humidity only


N_UNITS: Final = len(Unit)

#: Molar masses (g/mol) of the gases UrbanPulse stores in ug/m3.
MOLAR_MASS_G_MOL: Final[dict[Metric, float]] = {
    Metric.NO2: 46.0055,
    Metric.O3: 47.997,
    Metric.SO2: 64.066,
    Metric.CO: 28.010,
}
#: Molar volume of an ideal gas at 25 C and 1 atm, in litres.
MOLAR_VOLUME_L: Final = 24.45

#: Unit symbols accepted in payloads (SenML ``u``/``bu``, name-map ``metric[unit]``).
#: SenML registry symbols (RFC 8428, RFC 8798) first, then common spellings.
UNIT_SYMBOLS: Final[dict[str, Unit]] = {
    "ug/m3": Unit.UG_M3,
    "µg/m3": Unit.UG_M3,  # micro sign U+00B5
    "μg/m3": Unit.UG_M3,  # greek mu U+03BC
    "ug/m^3": Unit.UG_M3,
    "µg/m³": Unit.UG_M3,
    "μg/m³": Unit.UG_M3,
    "ug/m³": Unit.UG_M3,
    "mg/m3": Unit.MG_M3,
    "mg/m³": Unit.MG_M3,
    "ppb": Unit.PPB,
    "ppm": Unit.PPM,
    "Cel": Unit.CEL,
    "degC": Unit.CEL,
    "°C": Unit.CEL,
    "K": Unit.KELVIN,
    "degF": Unit.FAHRENHEIT,
    "°F": Unit.FAHRENHEIT,
    "%RH": Unit.PERCENT_RH,
    "%": Unit.PERCENT,
    "/": Unit.RATIO,
    "km/h": Unit.KM_H,
    "m/s": Unit.M_S,
    "1": Unit.COUNT,
    "count": Unit.COUNT,
}

_PM = (Metric.PM25, Metric.PM10)


def _tables() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    nan = np.nan
    factor = np.full((N_METRICS, N_UNITS), nan, dtype=np.float64)
    offset = np.zeros((N_METRICS, N_UNITS), dtype=np.float64)
    factor[:, Unit.CANONICAL] = 1.0
    for m in _PM:
        factor[m, Unit.UG_M3] = 1.0
        factor[m, Unit.MG_M3] = 1000.0
    for m, molar_mass in MOLAR_MASS_G_MOL.items():
        factor[m, Unit.UG_M3] = 1.0
        factor[m, Unit.MG_M3] = 1000.0
        factor[m, Unit.PPB] = molar_mass / MOLAR_VOLUME_L
        factor[m, Unit.PPM] = 1000.0 * molar_mass / MOLAR_VOLUME_L
    t = Metric.TEMPERATURE
    factor[t, Unit.CEL] = 1.0
    factor[t, Unit.KELVIN] = 1.0
    offset[t, Unit.KELVIN] = -273.15
    factor[t, Unit.FAHRENHEIT] = 5.0 / 9.0
    offset[t, Unit.FAHRENHEIT] = -32.0 * 5.0 / 9.0
    rh = Metric.RELATIVE_HUMIDITY
    factor[rh, Unit.PERCENT] = 1.0
    factor[rh, Unit.PERCENT_RH] = 1.0
    factor[rh, Unit.RATIO] = 100.0
    occ = Metric.OCCUPANCY
    factor[occ, Unit.RATIO] = 1.0
    factor[occ, Unit.PERCENT] = 0.01
    speed = Metric.AVERAGE_VEHICLE_SPEED
    factor[speed, Unit.KM_H] = 1.0
    factor[speed, Unit.M_S] = 3.6
    factor[Metric.INTENSITY, Unit.COUNT] = 1.0
    factor.setflags(write=False)
    offset.setflags(write=False)
    return factor, offset


#: ``canonical = raw * UNIT_FACTOR[metric, unit] + UNIT_OFFSET[metric, unit]``;
#: NaN factor: the unit cannot express the metric.
UNIT_FACTOR, UNIT_OFFSET = _tables()


def parse_unit(symbol: str) -> Unit | None:
    """The unit of a payload symbol (case-sensitive, as SenML), or None if unknown."""
    return UNIT_SYMBOLS.get(symbol)


def convertible(metric: Metric, unit: Unit) -> bool:
    return not np.isnan(UNIT_FACTOR[metric, unit])


def normalise_units(
    values: NDArray[np.float64], metrics: NDArray[np.uint8], units: NDArray[np.uint8]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Convert a ``(rows, metrics)`` value matrix to canonical units.

    ``metrics`` holds the metric code of each column, ``units`` the unit code of
    each cell (same shape as ``values``). Returns the converted matrix and a mask
    of cells whose unit cannot express their metric (their value is NaN then).
    Absent cells (NaN) stay NaN and are never a mismatch.
    """
    factor = UNIT_FACTOR[metrics[None, :], units]
    offset = UNIT_OFFSET[metrics[None, :], units]
    mismatch: NDArray[np.bool_] = np.isnan(factor) & ~np.isnan(values)
    return values * factor + offset, mismatch
