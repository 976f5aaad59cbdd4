"""Official indices as vectorised functions: ISPU, US EPA AQI (+ PM NowCast), traffic LOS.

Everything here is pure numpy (arrays in, arrays out, NaN for "no value") except
``IndexTracker``, the thin stateful wrapper that feeds the functions from
``RollingHours`` and emits category-change events.

ISPU (Indonesia, P.14/MENLHK/SETJEN/KUM.1/7/2020)
    Sub-index per pollutant by linear interpolation inside the band that holds the
    averaged concentration ``Xx`` (all in ug/m3)::

        I = (Ia - Ib) / (Xa - Xb) * (Xx - Xb) + Ib

    The band table, the averaging periods and the open questions live in
    ``IspuTable`` (``DEFAULT_ISPU_TABLE``), which a deployer can replace. Choices:

    * a band is ``(Xb, Xa]`` (upper bound inclusive): PM2.5 15.5 -> 50, 55.4 -> 100;
    * by default bands are continuous (``Ib`` = the previous band's ``Ia``: 0, 50,
      100, 200, 300); UNVERIFIED whether the regulation starts them at 51, 101,
      ... (``band_start_offset=1``);
    * the last band ends at ISPU 500 at the "top" concentration (as in the 1997
      table and common implementations; UNVERIFIED for 2020);
    * the index is rounded half up to an integer (``rounding="half_up"``: 74.44 ->
      74, 74.5 -> 75; ``"floor"`` truncates); the category is read from the
      ROUNDED index (0-50 Baik, 51-100 Sedang, ...), so PM2.5 35 -> 74 Sedang;
    * negative concentrations (sensor noise around zero) count as 0;
    * above the top concentration the index is capped at the top (500) and the
      ``beyond`` mask of the result says so (``above_top="extrapolate"`` continues
      the last band's line instead);
    * overall ISPU = the highest sub-index; its pollutant is the dominant one (ties:
      the first in table order). HC has no metric in this pipeline's schema, so its
      sub-index is NaN unless a caller supplies it.

US EPA AQI (2024 PM2.5 revision)
    Concentrations are first clipped at 0 and TRUNCATED (O3 3 decimals ppm, PM2.5 1
    decimal, PM10 integer, CO 1 decimal ppm, SO2/NO2 integer ppb; a 1e-6 guard on the
    scaled value absorbs binary representation error, so 9.1 stays 9.1), then
    ``Ip = (IHi - ILo) / (BPHi - BPLo) * (Cp - BPLo) + ILo`` is rounded half up to an
    integer (PM2.5 35.0 -> 99 Moderate). Gases are converted from ug/m3 at 25 C and 1
    atm (molar volume R*T/P = 24.465 L/mol; molar masses in ``MOLAR_MASS_G_MOL``).
    Special rules, as in EPA's Technical Assistance Document:

    * O3: the 8-h table ends at 0.200 ppm (AQI 300); 1-h O3 (from 0.125 ppm, AQI
      101) may define a higher index: the O3 sub-index is the larger of the two;
    * SO2: 1-h values define the index up to 200 (304 ppb); above, the 24-h mean
      does (305-1004 ppb, AQI 201-500); with a 1-h value above 304 ppb and a 24-h
      mean below 305 ppb (or none) the index is 200;
    * PM2.5 above 325.4 ug/m3 (and any value above a table's top) is "beyond the
      AQI": capped at 500 and flagged in ``beyond`` (or extrapolated along the
      last band with ``above_top="extrapolate"``).

NowCast (PM)
    Over a ``(series, 12)`` array of hourly means (column ``i`` = ``i`` hours ago,
    NaN missing): NaN unless at least 2 of the 3 most recent hours exist; ``w = 1 -
    (max - min) / max`` over the present hours, raised to 0.5 if lower (1 when max
    <= 0); ``NowCast = sum(w^i c_i) / sum(w^i)`` over present hours. Not truncated
    here (the AQI truncation applies when it is turned into an index).

Traffic level of service (HCM 7 Exh. 18-1)
    From travel speed as a share of base free-flow speed: A > 80 %, B > 67 %, C >
    50 %, D > 40 %, E > 30 %, F <= 30 % or v/c > 1; congested when speed < 90 % of
    free flow (FHWA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processors._rolling import RollingHours, RollingSpec, _grow
from urbanpulse._batch import ReadingBatch, SeriesRegistry
from urbanpulse._clock import Clock, SystemClock
from urbanpulse._events import Event, Severity
from urbanpulse._schema import N_METRICS, Metric

__all__ = [
    "AQI_CATEGORIES",
    "AQI_INPUTS",
    "AQI_POLLUTANTS",
    "AQI_SEVERITY",
    "DEFAULT_AQI_TABLE",
    "DEFAULT_ISPU_TABLE",
    "ISPU_CATEGORIES",
    "ISPU_SEVERITY",
    "LOS_LETTERS",
    "MOLAR_MASS_G_MOL",
    "MOLAR_VOLUME_L_MOL",
    "POLLUTANT_METRIC",
    "AqiTable",
    "Bands",
    "Category",
    "IndexResult",
    "IndexRows",
    "IndexTracker",
    "IndexTrackerConfig",
    "IndexUpdate",
    "IspuTable",
    "aqi",
    "aqi_category",
    "band_index",
    "category_of",
    "is_congested",
    "ispu",
    "ispu_category",
    "ispu_subindex",
    "level_of_service",
    "nowcast",
    "overall_index",
    "ppb_to_ugm3",
    "truncate",
    "ugm3_to_ppb",
    "ugm3_to_ppm",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
I8 = NDArray[np.int8]
Bool = NDArray[np.bool_]
Rounding = Literal["half_up", "floor"]
AboveTop = Literal["cap", "extrapolate"]

#: Added before flooring so that values a hair under an integer (binary error) round right.
_ROUND_EPS: Final = 1e-9

# --------------------------------------------------------------------------- kernels


@dataclass(frozen=True, slots=True)
class Bands:
    """Piecewise-linear breakpoints of one pollutant.

    Row ``k`` maps concentrations ``[c_lo[k], c_hi[k]]`` to index ``[i_lo[k],
    i_hi[k]]``; a concentration belongs to the first row with ``c <= c_hi``.
    ``decimals``: truncate the concentration to this many decimals first (None:
    no truncation).
    """

    c_lo: tuple[float, ...]
    c_hi: tuple[float, ...]
    i_lo: tuple[float, ...]
    i_hi: tuple[float, ...]
    decimals: int | None = None

    def __post_init__(self) -> None:
        n = len(self.c_hi)
        if n == 0 or not len(self.c_lo) == len(self.i_lo) == len(self.i_hi) == n:
            raise ValueError("bands need equally many c_lo, c_hi, i_lo, i_hi (>= 1)")
        if any(b <= a for a, b in zip(self.c_hi, self.c_hi[1:], strict=False)):
            raise ValueError(f"band upper concentrations must increase: {self.c_hi}")
        if any(hi <= lo for lo, hi in zip(self.c_lo, self.c_hi, strict=True)):
            raise ValueError("every band needs c_lo < c_hi")

    @classmethod
    def rows(
        cls, rows: Sequence[tuple[float, float, float, float]], decimals: int | None = None
    ) -> Bands:
        """From ``(c_lo, c_hi, i_lo, i_hi)`` rows, as printed in the EPA tables."""
        c_lo, c_hi, i_lo, i_hi = (tuple(float(r[j]) for r in rows) for j in range(4))
        return cls(c_lo, c_hi, i_lo, i_hi, decimals)


def truncate(conc: ArrayLike, decimals: int) -> F64:
    """Truncate (toward -inf) to ``decimals`` decimals, absorbing binary error
    (the scaled value is rounded to 6 decimals before flooring: 9.1 -> 9.1)."""
    scale = 10.0**decimals
    c = np.asarray(conc, dtype=np.float64)
    return np.floor(np.round(c * scale, 6)) / scale


def _round(x: F64, rounding: Rounding) -> F64:
    if rounding == "half_up":
        return np.floor(x + (0.5 + _ROUND_EPS))
    return np.floor(x + _ROUND_EPS)


def band_index(
    conc: ArrayLike,
    bands: Bands,
    *,
    rounding: Rounding = "half_up",
    above_top: AboveTop = "cap",
) -> tuple[F64, Bool]:
    """Index per concentration and the mask of concentrations above the top band.

    Negative concentrations count as 0; NaN stays NaN; below the first band's
    ``c_lo`` (only tables that start above 0, such as 1-h O3) the index is NaN.
    """
    c = np.asarray(conc, dtype=np.float64)
    c = np.where(c < 0.0, 0.0, c)
    if bands.decimals is not None:
        c = truncate(c, bands.decimals)
    c_lo, c_hi = np.asarray(bands.c_lo), np.asarray(bands.c_hi)
    i_lo, i_hi = np.asarray(bands.i_lo), np.asarray(bands.i_hi)
    n = c_hi.shape[0]
    k = np.minimum(np.searchsorted(c_hi, c, side="left"), n - 1)
    beyond: Bool = c > c_hi[-1]
    idx = (i_hi[k] - i_lo[k]) / (c_hi[k] - c_lo[k]) * (c - c_lo[k]) + i_lo[k]
    if above_top == "cap":
        idx = np.where(beyond, i_hi[-1], idx)
    idx = _round(idx, rounding)
    idx[c < c_lo[0]] = np.nan
    return idx, beyond


def overall_index(sub: ArrayLike) -> tuple[F64, I8]:
    """Row-wise max of a ``(n, p)`` sub-index array and the column that attains it
    (first on ties); NaN / -1 for rows without any sub-index."""
    s = np.asarray(sub, dtype=np.float64)
    filled = np.where(np.isnan(s), -np.inf, s)
    dom = np.argmax(filled, axis=1) if s.shape[1] else np.zeros(s.shape[0], np.intp)
    best = filled[np.arange(s.shape[0]), dom] if s.shape[1] else np.full(s.shape[0], -np.inf)
    none = best == -np.inf
    index = np.where(none, np.nan, best)
    dominant = np.where(none, -1, dom).astype(np.int8)
    return index, dominant


@dataclass(frozen=True, slots=True)
class Category:
    """One band of an index: official name, English name, colour, upper index bound."""

    code: int
    name: str
    name_en: str
    #: "#rrggbb"
    colour: str
    #: Inclusive upper bound of the (rounded) index; inf for the last category.
    index_max: float

    @property
    def rgb(self) -> tuple[int, int, int]:
        h = self.colour.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def category_of(index: ArrayLike, upper_bounds: Sequence[float]) -> I8:
    """Category code per index: the first ``k`` with ``index <= upper_bounds[k]``,
    ``len(upper_bounds)`` above the last bound, -1 for NaN."""
    x = np.asarray(index, dtype=np.float64)
    code = np.searchsorted(np.asarray(upper_bounds, dtype=np.float64), x, side="left")
    return np.where(np.isnan(x), -1, code).astype(np.int8)


@dataclass(frozen=True, slots=True)
class IndexResult:
    """Overall index, category and dominant pollutant per row, with the sub-indices."""

    pollutants: tuple[str, ...]
    #: ``(n, len(pollutants))``, NaN where a pollutant has no value
    sub: F64
    #: ``(n, len(pollutants))``: the concentration lies above the table's top
    beyond: Bool
    index: F64
    category: I8
    #: column into ``pollutants`` (-1: no index)
    dominant: I8

    def __len__(self) -> int:
        return int(self.index.shape[0])


def _rows_of(conc: Mapping[str, ArrayLike]) -> int:
    for value in conc.values():
        return int(np.asarray(value).shape[0])
    raise ValueError("no concentrations given")


# --------------------------------------------------------------------------- ISPU

ISPU_CATEGORIES: Final = (
    Category(0, "Baik", "Good", "#00cc00", 50.0),
    Category(1, "Sedang", "Moderate", "#0000cc", 100.0),
    Category(2, "Tidak Sehat", "Unhealthy", "#cccc00", 200.0),
    Category(3, "Sangat Tidak Sehat", "Very Unhealthy", "#cc0000", 300.0),
    Category(4, "Berbahaya", "Hazardous", "#000000", math.inf),
)

_ISPU_UPPER_UGM3: Final[dict[str, tuple[float, ...]]] = {
    "pm10": (50.0, 150.0, 350.0, 420.0, 500.0),
    "pm25": (15.5, 55.4, 150.4, 250.4, 500.0),
    "so2": (52.0, 180.0, 400.0, 800.0, 1200.0),
    "co": (4000.0, 8000.0, 15000.0, 30000.0, 45000.0),
    "o3": (120.0, 235.0, 400.0, 800.0, 1000.0),
    "no2": (80.0, 200.0, 1130.0, 2260.0, 3000.0),
    "hc": (45.0, 100.0, 215.0, 432.0, 648.0),
}

#: PM 24 h is documented (KLHK publishes a 24 h rolling PM2.5 mean). The others
#: are UNVERIFIED: CO 8 h is claimed; O3 and NO2 1 h and SO2 24 h follow the
#: periods of the 1997 table, whose rows for those gases the 2020 table keeps in
#: part; HC 3 h is the period of Indonesia's ambient HC standard.
_ISPU_HOURS: Final[dict[str, int]] = {
    "pm10": 24,
    "pm25": 24,
    "so2": 24,
    "co": 8,
    "o3": 1,
    "no2": 1,
    "hc": 3,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class IspuTable:
    """ISPU band table, averaging periods and conventions; replace any field to override.

    ``upper_ugm3[p]`` holds the upper concentration of each band (ug/m3) for the
    index bounds ``index_bounds[1:]``; the first band starts at 0 ug/m3 and index
    ``index_bounds[0]``. Values and their status are in the module docstring:
    the table rows agree across independent implementations and KLHK/BMKG
    reports (the official PDF could not be opened); UNVERIFIED are the averaging
    periods other than PM 24 h (``averaging_hours``), whether bands after the
    first start at 50 or 51 (``band_start_offset``: 0 or 1), the index 500 at the
    top concentration, and the rounding of the published index (``rounding``).
    """

    index_bounds: tuple[float, ...] = (0.0, 50.0, 100.0, 200.0, 300.0, 500.0)
    upper_ugm3: Mapping[str, tuple[float, ...]] = field(
        default_factory=lambda: dict(_ISPU_UPPER_UGM3)
    )
    averaging_hours: Mapping[str, int] = field(default_factory=lambda: dict(_ISPU_HOURS))
    band_start_offset: float = 0.0
    rounding: Rounding = "half_up"
    above_top: AboveTop = "cap"

    def __post_init__(self) -> None:
        if len(self.index_bounds) != len(ISPU_CATEGORIES) + 1:
            raise ValueError(
                f"index_bounds needs {len(ISPU_CATEGORIES) + 1} values (one per category edge)"
            )
        if any(b <= a for a, b in zip(self.index_bounds, self.index_bounds[1:], strict=False)):
            raise ValueError(f"index_bounds must increase: {self.index_bounds}")
        for p, upper in self.upper_ugm3.items():
            if len(upper) != len(self.index_bounds) - 1:
                raise ValueError(f"ISPU pollutant {p!r}: {len(upper)} bands, expected 5")
            self.bands(p)  # validates the order
        for p, hours in self.averaging_hours.items():
            if p not in self.upper_ugm3:
                raise ValueError(f"averaging_hours names unknown pollutant {p!r}")
            if hours < 1:
                raise ValueError(f"averaging_hours[{p!r}] must be >= 1")
        missing = set(self.upper_ugm3) - set(self.averaging_hours)
        if missing:
            raise ValueError(f"averaging_hours misses {sorted(missing)}")
        if self.band_start_offset < 0:
            raise ValueError("band_start_offset must be >= 0")

    @property
    def pollutants(self) -> tuple[str, ...]:
        return tuple(self.upper_ugm3)

    @property
    def category_bounds(self) -> tuple[float, ...]:
        """Inclusive upper (rounded) index of each category but the last."""
        return self.index_bounds[1:-1]

    def bands(self, pollutant: str) -> Bands:
        upper = tuple(float(x) for x in self.upper_ugm3[pollutant])
        ib = self.index_bounds
        i_lo = (ib[0], *(b + self.band_start_offset for b in ib[1:-1]))
        return Bands((0.0, *upper[:-1]), upper, i_lo, ib[1:])


DEFAULT_ISPU_TABLE: Final = IspuTable()


def ispu_subindex(
    pollutant: str, conc_ugm3: ArrayLike, *, table: IspuTable = DEFAULT_ISPU_TABLE
) -> F64:
    """ISPU sub-index of one pollutant (averaged concentrations in ug/m3)."""
    idx, _ = band_index(
        conc_ugm3, table.bands(pollutant), rounding=table.rounding, above_top=table.above_top
    )
    return idx


def ispu_category(index: ArrayLike, *, table: IspuTable = DEFAULT_ISPU_TABLE) -> I8:
    """Code into ``ISPU_CATEGORIES`` per (rounded) ISPU; -1 for NaN."""
    return category_of(index, table.category_bounds)


def ispu(
    conc_ugm3: Mapping[str, ArrayLike], *, table: IspuTable = DEFAULT_ISPU_TABLE
) -> IndexResult:
    """Sub-indices, overall ISPU, category and dominant pollutant.

    ``conc_ugm3`` maps pollutant names of the table (``pm10``, ``pm25``, ``so2``,
    ``co``, ``o3``, ``no2``, ``hc``) to equally long arrays of concentrations
    averaged over the table's periods; absent pollutants are NaN columns.
    """
    unknown = set(conc_ugm3) - set(table.pollutants)
    if unknown:
        raise ValueError(f"not ISPU pollutants: {sorted(unknown)}")
    n = _rows_of(conc_ugm3)
    pollutants = table.pollutants
    sub = np.full((n, len(pollutants)), np.nan)
    beyond = np.zeros((n, len(pollutants)), dtype=np.bool_)
    for j, p in enumerate(pollutants):
        if p in conc_ugm3:
            sub[:, j], beyond[:, j] = band_index(
                conc_ugm3[p], table.bands(p), rounding=table.rounding, above_top=table.above_top
            )
    index, dominant = overall_index(sub)
    return IndexResult(pollutants, sub, beyond, index, ispu_category(index, table=table), dominant)


# --------------------------------------------------------------------------- US AQI

AQI_CATEGORIES: Final = (
    Category(0, "Good", "Good", "#00e400", 50.0),
    Category(1, "Moderate", "Moderate", "#ffff00", 100.0),
    Category(
        2, "Unhealthy for Sensitive Groups", "Unhealthy for Sensitive Groups", "#ff7e00", 150.0
    ),
    Category(3, "Unhealthy", "Unhealthy", "#ff0000", 200.0),
    Category(4, "Very Unhealthy", "Very Unhealthy", "#8f3f97", 300.0),
    Category(5, "Hazardous", "Hazardous", "#7e0023", math.inf),
)

#: Sub-index columns of an AQI ``IndexResult``.
AQI_POLLUTANTS: Final = ("pm25", "pm10", "o3", "co", "so2", "no2")

#: g/mol, for ug/m3 <-> ppb.
MOLAR_MASS_G_MOL: Final[dict[str, float]] = {"o3": 48.00, "no2": 46.01, "so2": 64.07, "co": 28.01}
#: Ideal-gas molar volume at 25 C (298.15 K) and 1 atm (101.325 kPa), litres per mole
#: (EPA's conversion factors round it to 24.45).
MOLAR_VOLUME_L_MOL: Final = 8.314462618 * 298.15 / 101.325


def ugm3_to_ppb(conc_ugm3: ArrayLike, molar_mass_g_mol: float) -> F64:
    """ug/m3 -> ppb (by volume) at 25 C and 1 atm."""
    return np.asarray(conc_ugm3, dtype=np.float64) * (MOLAR_VOLUME_L_MOL / molar_mass_g_mol)


def ugm3_to_ppm(conc_ugm3: ArrayLike, molar_mass_g_mol: float) -> F64:
    """ug/m3 -> ppm (by volume) at 25 C and 1 atm."""
    return ugm3_to_ppb(conc_ugm3, molar_mass_g_mol) / 1000.0


def ppb_to_ugm3(conc_ppb: ArrayLike, molar_mass_g_mol: float) -> F64:
    """ppb (by volume) -> ug/m3 at 25 C and 1 atm."""
    return np.asarray(conc_ppb, dtype=np.float64) * (molar_mass_g_mol / MOLAR_VOLUME_L_MOL)


_AQI_2024: Final[dict[str, Bands]] = {
    # PM2.5 24 h, ug/m3 (2024 revision)
    "pm25": Bands.rows(
        [
            (0.0, 9.0, 0, 50),
            (9.1, 35.4, 51, 100),
            (35.5, 55.4, 101, 150),
            (55.5, 125.4, 151, 200),
            (125.5, 225.4, 201, 300),
            (225.5, 325.4, 301, 500),
        ],
        decimals=1,
    ),
    # PM10 24 h, ug/m3
    "pm10": Bands.rows(
        [
            (0, 54, 0, 50),
            (55, 154, 51, 100),
            (155, 254, 101, 150),
            (255, 354, 151, 200),
            (355, 424, 201, 300),
            (425, 604, 301, 500),
        ],
        decimals=0,
    ),
    # O3 8 h, ppm (no 8-h values above 0.200: 1-h O3 takes over)
    "o3_8h": Bands.rows(
        [
            (0.000, 0.054, 0, 50),
            (0.055, 0.070, 51, 100),
            (0.071, 0.085, 101, 150),
            (0.086, 0.105, 151, 200),
            (0.106, 0.200, 201, 300),
        ],
        decimals=3,
    ),
    # O3 1 h, ppm (defines the index only from 0.125 ppm)
    "o3_1h": Bands.rows(
        [
            (0.125, 0.164, 101, 150),
            (0.165, 0.204, 151, 200),
            (0.205, 0.404, 201, 300),
            (0.405, 0.604, 301, 500),
        ],
        decimals=3,
    ),
    # CO 8 h, ppm
    "co": Bands.rows(
        [
            (0.0, 4.4, 0, 50),
            (4.5, 9.4, 51, 100),
            (9.5, 12.4, 101, 150),
            (12.5, 15.4, 151, 200),
            (15.5, 30.4, 201, 300),
            (30.5, 50.4, 301, 500),
        ],
        decimals=1,
    ),
    # SO2 1 h, ppb (up to AQI 200)
    "so2": Bands.rows(
        [(0, 35, 0, 50), (36, 75, 51, 100), (76, 185, 101, 150), (186, 304, 151, 200)],
        decimals=0,
    ),
    # SO2 24 h, ppb (AQI 201-500)
    "so2_24h": Bands.rows([(305, 604, 201, 300), (605, 1004, 301, 500)], decimals=0),
    # NO2 1 h, ppb
    "no2": Bands.rows(
        [
            (0, 53, 0, 50),
            (54, 100, 51, 100),
            (101, 360, 101, 150),
            (361, 649, 151, 200),
            (650, 1249, 201, 300),
            (1250, 2049, 301, 500),
        ],
        decimals=0,
    ),
}

AQI_INPUTS: Final = tuple(_AQI_2024)


@dataclass(frozen=True, slots=True, kw_only=True)
class AqiTable:
    """US EPA AQI breakpoints (2024 revision by default), keyed by input.

    Inputs and units: ``pm25``/``pm10`` ug/m3 (24 h or NowCast), ``o3_8h``/``o3_1h``
    ppm, ``co`` ppm (8 h), ``so2`` ppb (1 h), ``so2_24h`` ppb, ``no2`` ppb (1 h).
    """

    bands: Mapping[str, Bands] = field(default_factory=lambda: dict(_AQI_2024))
    above_top: AboveTop = "cap"

    def __post_init__(self) -> None:
        missing = set(AQI_INPUTS) - set(self.bands)
        if missing:
            raise ValueError(f"AQI table misses {sorted(missing)}")


DEFAULT_AQI_TABLE: Final = AqiTable()


def aqi_category(index: ArrayLike) -> I8:
    """Code into ``AQI_CATEGORIES`` per (rounded) AQI; -1 for NaN."""
    return category_of(index, [c.index_max for c in AQI_CATEGORIES[:-1]])


def aqi(conc: Mapping[str, ArrayLike], *, table: AqiTable = DEFAULT_AQI_TABLE) -> IndexResult:
    """Sub-indices (columns ``AQI_POLLUTANTS``), overall AQI, category, dominant.

    ``conc`` maps the table's inputs (``pm25``, ``pm10``, ``o3_8h``, ``o3_1h``,
    ``co``, ``so2``, ``so2_24h``, ``no2``; units in ``AqiTable``) to equally long
    arrays; absent inputs are missing values. The O3 and SO2 rules are in the
    module docstring.
    """
    unknown = set(conc) - set(AQI_INPUTS)
    if unknown:
        raise ValueError(f"not AQI inputs: {sorted(unknown)}")
    n = _rows_of(conc)
    nan = np.full(n, np.nan)

    def one(key: str, *, above_top: AboveTop | None = None) -> tuple[F64, Bool]:
        return band_index(
            conc.get(key, nan), table.bands[key], above_top=above_top or table.above_top
        )

    sub = np.full((n, len(AQI_POLLUTANTS)), np.nan)
    beyond = np.zeros((n, len(AQI_POLLUTANTS)), dtype=np.bool_)
    for key in ("pm25", "pm10", "co", "no2"):
        j = AQI_POLLUTANTS.index(key)
        sub[:, j], beyond[:, j] = one(key)
    # O3: the larger of the 8-h and the 1-h index; above the 8-h table only the 1-h
    # index counts (300, flagged, when there is none)
    i8, b8 = one("o3_8h", above_top="cap")
    i1, b1 = one("o3_1h")
    j = AQI_POLLUTANTS.index("o3")
    no_1h = np.isnan(i1)
    sub[:, j] = np.where(b8 & ~no_1h, i1, np.fmax(i8, i1))
    beyond[:, j] = (b8 & no_1h) | b1
    # SO2: 1-h index up to 200; above 304 ppb the 24-h mean decides (at least 200)
    s1, over = one("so2", above_top="cap")
    s24, b24 = one("so2_24h")
    j = AQI_POLLUTANTS.index("so2")
    sub[:, j] = np.where(over, np.fmax(s1, s24), s1)
    beyond[:, j] = over & (np.isnan(s24) | b24)
    index, dominant = overall_index(sub)
    return IndexResult(AQI_POLLUTANTS, sub, beyond, index, aqi_category(index), dominant)


def nowcast(hourly: ArrayLike, *, min_weight: float = 0.5) -> F64:
    """PM NowCast per row of a ``(n, k)`` array of hourly means (column ``i`` = ``i``
    hours ago, NaN = missing; EPA uses ``k = 12``). See the module docstring."""
    c = np.asarray(hourly, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 3:
        raise ValueError("nowcast needs a (series, hours >= 3) array")
    present = ~np.isnan(c)
    ok = present[:, :3].sum(axis=1) >= 2
    out = np.full(c.shape[0], np.nan)
    if not bool(ok.any()):
        return out
    c, present = c[ok], present[ok]
    cmax = np.where(present, c, -np.inf).max(axis=1)
    cmin = np.where(present, c, np.inf).min(axis=1)
    w = np.ones(c.shape[0])
    pos = cmax > 0
    w[pos] = 1.0 - (cmax[pos] - cmin[pos]) / cmax[pos]
    w = np.maximum(w, min_weight)
    weights = w[:, None] ** np.arange(c.shape[1], dtype=np.float64)
    weights[~present] = 0.0
    out[ok] = (weights * np.where(present, c, 0.0)).sum(axis=1) / weights.sum(axis=1)
    return out


# --------------------------------------------------------------------------- traffic

LOS_LETTERS: Final = ("A", "B", "C", "D", "E", "F")
#: Lower (exclusive) bounds of speed / base free-flow speed for LOS A..E (HCM 7 Exh. 18-1).
_LOS_SHARES: Final = (0.80, 0.67, 0.50, 0.40, 0.30)


def level_of_service(
    speed_kmh: ArrayLike,
    free_flow_kmh: ArrayLike,
    *,
    vc_ratio: ArrayLike | None = None,
    shares: Sequence[float] = _LOS_SHARES,
) -> I8:
    """Urban-street LOS code (0 = A ... 5 = F; index into ``LOS_LETTERS``).

    A when speed / free-flow > ``shares[0]``, B when > ``shares[1]``, ... F at or
    below the last share, or whenever ``vc_ratio > 1``; -1 where speed or free
    flow is missing or free flow <= 0.
    """
    v = np.asarray(speed_kmh, dtype=np.float64)
    ff = np.asarray(free_flow_kmh, dtype=np.float64)
    v, ff = np.broadcast_arrays(v, ff)
    valid = np.isfinite(v) & np.isfinite(ff) & (ff > 0)
    ratio = np.divide(v, ff, out=np.full(v.shape, np.nan), where=valid)
    code = (ratio[..., None] <= np.asarray(shares, dtype=np.float64)).sum(axis=-1)
    if vc_ratio is not None:
        code = np.where(np.asarray(vc_ratio, dtype=np.float64) > 1.0, len(shares), code)
    return np.where(valid, code, -1).astype(np.int8)


def is_congested(speed_kmh: ArrayLike, free_flow_kmh: ArrayLike, *, share: float = 0.9) -> Bool:
    """Speed below ``share`` of free-flow speed (FHWA: 90 %); False when unknown."""
    v = np.asarray(speed_kmh, dtype=np.float64)
    ff = np.asarray(free_flow_kmh, dtype=np.float64)
    out: Bool = v < share * ff
    return out


# --------------------------------------------------------------------------- tracker

#: Schema metric of each pollutant the pipeline measures (HC has none).
POLLUTANT_METRIC: Final[dict[str, Metric]] = {
    "pm25": Metric.PM25,
    "pm10": Metric.PM10,
    "no2": Metric.NO2,
    "o3": Metric.O3,
    "co": Metric.CO,
    "so2": Metric.SO2,
}
#: Hours of each metric the AQI reads: 12 for the PM NowCast, 8 for CO and O3, 24 for
#: the SO2 >= 200 rule, 1 for NO2 (and 1-h O3 / SO2).
_AQI_HOURS: Final[dict[Metric, int]] = {
    Metric.PM25: 12,
    Metric.PM10: 12,
    Metric.O3: 8,
    Metric.CO: 8,
    Metric.SO2: 24,
    Metric.NO2: 1,
}
#: Severity of an event by the NEW ISPU category: Baik/Sedang INFO, Tidak Sehat
#: WARNING, Sangat Tidak Sehat/Berbahaya CRITICAL.
ISPU_SEVERITY: Final = (
    Severity.INFO,
    Severity.INFO,
    Severity.WARNING,
    Severity.CRITICAL,
    Severity.CRITICAL,
)
#: Severity by the new AQI category: Good/Moderate INFO, Unhealthy for Sensitive
#: Groups/Unhealthy WARNING, Very Unhealthy/Hazardous CRITICAL.
AQI_SEVERITY: Final = (
    Severity.INFO,
    Severity.INFO,
    Severity.WARNING,
    Severity.WARNING,
    Severity.CRITICAL,
    Severity.CRITICAL,
)
_UNMAPPED: Final = -2
_I64_MIN: Final = int(np.iinfo(np.int64).min)


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexTrackerConfig:
    """Options of ``IndexTracker``.

    ``min_coverage``: share of the hours of an averaging period that must have data
    (EPA: 75 %, e.g. 18 of 24, 6 of 8). ``district_max_age_hours``: a sensor counts
    in its district's index only while its newest hour is at most this many hours
    behind the district's newest. ``first_event_min_severity``: the first category a
    sensor or district gets (no previous one) is an event only at or above this
    severity, so a start in clean air is silent but a start in haze is not.
    """

    ispu: IspuTable = DEFAULT_ISPU_TABLE
    aqi: AqiTable = DEFAULT_AQI_TABLE
    min_coverage: float = 0.75
    district_max_age_hours: int = 2
    ispu_severity: tuple[Severity, ...] = ISPU_SEVERITY
    aqi_severity: tuple[Severity, ...] = AQI_SEVERITY
    first_event_min_severity: Severity = Severity.WARNING

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")
        if self.district_max_age_hours < 0:
            raise ValueError("district_max_age_hours must be >= 0")
        if len(self.ispu_severity) != len(ISPU_CATEGORIES):
            raise ValueError(f"ispu_severity needs {len(ISPU_CATEGORIES)} entries")
        if len(self.aqi_severity) != len(AQI_CATEGORIES):
            raise ValueError(f"aqi_severity needs {len(AQI_CATEGORIES)} entries")

    def rolling_spec(self) -> RollingSpec:
        """Rings long enough for both indices' averaging periods."""
        hours: dict[int, int] = {int(m): h for m, h in _AQI_HOURS.items()}
        for p, h in self.ispu.averaging_hours.items():
            metric = POLLUTANT_METRIC.get(p)
            if metric is not None:
                hours[int(metric)] = max(hours.get(int(metric), 1), h)
        return RollingSpec.of(hours)


@dataclass(frozen=True, slots=True)
class IndexRows:
    """Columnar index rows for storage (measurement ``aq_index``).

    Sensor rows: ``sid`` is the series id (tags city/district/sensor_id from the
    registry). District rows: ``sid`` is -1 and ``district`` indexes
    ``IndexTracker.district_keys`` (tags city/district, scope=district); their
    ``ispu``/``aqi`` are the max over the district's sensors, ``*_mean`` the mean,
    ``*_sub`` the per-pollutant max. Categories index ``ISPU_CATEGORIES`` /
    ``AQI_CATEGORIES``, dominants index ``ispu_pollutants`` / ``AQI_POLLUTANTS``
    (-1: none). ``ts_ns`` is the newest reading time that produced the row.
    """

    ts_ns: I64
    sid: I32
    district: I32
    n_sensors: I32
    ispu: F64
    ispu_category: I8
    ispu_dominant: I8
    ispu_sub: F64
    ispu_mean: F64
    aqi: F64
    aqi_category: I8
    aqi_dominant: I8
    aqi_sub: F64
    aqi_mean: F64

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def empty(cls, n_ispu: int, n_aqi: int = len(AQI_POLLUTANTS)) -> IndexRows:
        f, i8 = np.empty(0, np.float64), np.empty(0, np.int8)
        i32 = np.empty(0, np.int32)
        return cls(
            np.empty(0, np.int64),
            i32,
            i32,
            i32,
            f,
            i8,
            i8,
            np.empty((0, n_ispu)),
            f,
            f,
            i8,
            i8,
            np.empty((0, n_aqi)),
            f,
        )

    def take(self, index: NDArray[np.bool_] | NDArray[np.intp]) -> IndexRows:
        return IndexRows(*(getattr(self, name)[index] for name in self.__slots__))


@dataclass(frozen=True, slots=True)
class IndexUpdate:
    """What one ``IndexTracker.update`` produced."""

    events: list[Event]
    sensors: IndexRows
    districts: IndexRows
    #: readings the rolling means ignored as older than their ring
    too_old: int


class _Levels:
    """Per-entity index state (sensors by sid, districts by id), struct-of-arrays."""

    __slots__ = ("aqi_cat", "aqi_sub", "aqi_val", "ispu_cat", "ispu_sub", "ispu_val", "n")

    def __init__(self, n_ispu: int) -> None:
        self.n = 0
        self.ispu_val: F64 = np.empty(0)
        self.aqi_val: F64 = np.empty(0)
        self.ispu_sub: F64 = np.empty((0, n_ispu))
        self.aqi_sub: F64 = np.empty((0, len(AQI_POLLUTANTS)))
        self.ispu_cat: I8 = np.empty(0, np.int8)
        self.aqi_cat: I8 = np.empty(0, np.int8)

    def reserve(self, n: int) -> None:
        if n <= self.n:
            return
        n = max(n, self.n + self.n // 4)
        for name in self.__slots__:
            if name == "n":
                continue
            old = getattr(self, name)
            fill = -1 if old.dtype == np.int8 else np.nan
            grown = np.full((n, *old.shape[1:]), fill, dtype=old.dtype)
            grown[: old.shape[0]] = old
            setattr(self, name, grown)
        self.n = n

    def arrays(self) -> dict[str, NDArray[np.generic]]:
        return {name: getattr(self, name).copy() for name in self.__slots__ if name != "n"}

    def load(self, arrays: Mapping[str, NDArray[np.generic]]) -> None:
        n = int(np.asarray(arrays["ispu_val"]).shape[0])
        self.reserve(n)
        for name in self.__slots__:
            if name != "n":
                getattr(self, name)[:n] = arrays[name]


class IndexTracker:
    """ISPU and US AQI per air sensor and per district, from rolling hourly means.

    ``update(batch)`` folds the batch into ``RollingHours`` and recomputes the
    indices of the sensors the batch touched (pollutant readings only), once per
    batch at each sensor's newest hour (intermediate categories inside one batch
    are not reported). ISPU sub-indices use the averaging periods of the ISPU
    table; the AQI uses the PM NowCast and 8-h CO/O3, 1-h NO2/O3/SO2, 24-h SO2
    means, gases converted at 25 C / 1 atm. A mean without ``min_coverage`` of its
    hours is missing; a sensor whose indices are then missing keeps its last
    category for change detection and drops out of its district.

    Events (``Event``, state ``change``, detector ``ispu`` or ``aqi``) are emitted
    only when a category changes, worse or better; severity by the NEW category
    (``IndexTrackerConfig.ispu_severity`` / ``aqi_severity``). District events have
    ``sensor_id ""``; a district's index is the max over its current sensors'
    indices (rows also carry the mean). Labels: ``index``, ``scope``
    (sensor/district), ``category``, ``category_en``, ``previous_category`` ("" for
    a first category), ``direction`` (worse/better/first), ``dominant``, ``value``,
    ``colour``.
    """

    def __init__(
        self,
        registry: SeriesRegistry,
        *,
        config: IndexTrackerConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry
        self.config = IndexTrackerConfig() if config is None else config
        self.clock: Clock = SystemClock() if clock is None else clock
        self.rolling = RollingHours(self.config.rolling_spec())
        self.ispu_pollutants = self.config.ispu.pollutants
        self._tracked = np.zeros(N_METRICS, dtype=np.bool_)
        self._tracked[list(self.rolling.spec.metrics)] = True
        self._sensors = _Levels(len(self.ispu_pollutants))
        self._districts = _Levels(len(self.ispu_pollutants))
        self._sid_district: I32 = np.empty(0, np.int32)
        self._last_hour: I64 = np.empty(0, np.int64)
        self._pending_ts: I64 = np.empty(0, np.int64)
        self.district_keys: list[tuple[str, str]] = []
        self._district_ids: dict[tuple[str, str], int] = {}

    @property
    def state_nbytes(self) -> int:
        s, d = self._sensors, self._districts
        levels = sum(int(getattr(x, n).nbytes) for x in (s, d) for n in x.__slots__ if n != "n")
        return (
            self.rolling.nbytes + levels + int(self._sid_district.nbytes + self._last_hour.nbytes)
        )

    # -- bookkeeping

    def _reserve(self, n_sid: int) -> None:
        self._sensors.reserve(n_sid)
        n = self._sensors.n
        if n > self._sid_district.shape[0]:
            self._sid_district = _grow(self._sid_district, n, _UNMAPPED)
            self._last_hour = _grow(self._last_hour, n, -1)
            self._pending_ts = _grow(self._pending_ts, n, _I64_MIN)

    def _map_districts(self, sid: I64) -> None:
        """District id of sids not looked up yet (one registry lookup per series)."""
        new = sid[self._sid_district[sid] == _UNMAPPED]
        for s in new.tolist():
            key = self.registry.key(s)
            dk = (key.city, key.district)
            did = self._district_ids.get(dk)
            if did is None:
                did = len(self.district_keys)
                self._district_ids[dk] = did
                self.district_keys.append(dk)
            self._sid_district[s] = did
        self._districts.reserve(len(self.district_keys))

    # -- indices

    def compute(self, sid: ArrayLike) -> tuple[IndexResult, IndexResult]:
        """ISPU and AQI of the given sensors at their newest hour (pure w.r.t. the
        tracker: nothing is stored)."""
        sid = np.asarray(sid, dtype=np.int64)
        cfg, roll = self.config, self.rolling
        end = roll.latest_hour(sid)
        cov = cfg.min_coverage

        def mean(metric: Metric, hours: int) -> F64:
            return roll.mean(sid, metric, hours, end_hour=end, min_coverage=cov)

        conc: dict[str, ArrayLike] = {}
        for p in self.ispu_pollutants:
            metric = POLLUTANT_METRIC.get(p)
            if metric is not None:
                conc[p] = mean(metric, cfg.ispu.averaging_hours[p])
        if not conc:
            conc[self.ispu_pollutants[0]] = np.full(sid.shape[0], np.nan)
        r_ispu = ispu(conc, table=cfg.ispu)
        mm = MOLAR_MASS_G_MOL
        r_aqi = aqi(
            {
                "pm25": nowcast(roll.hourly_means(sid, Metric.PM25, 12, end_hour=end)),
                "pm10": nowcast(roll.hourly_means(sid, Metric.PM10, 12, end_hour=end)),
                "o3_8h": ugm3_to_ppm(mean(Metric.O3, 8), mm["o3"]),
                "o3_1h": ugm3_to_ppm(mean(Metric.O3, 1), mm["o3"]),
                "co": ugm3_to_ppm(mean(Metric.CO, 8), mm["co"]),
                "so2": ugm3_to_ppb(mean(Metric.SO2, 1), mm["so2"]),
                "so2_24h": ugm3_to_ppb(mean(Metric.SO2, 24), mm["so2"]),
                "no2": ugm3_to_ppb(mean(Metric.NO2, 1), mm["no2"]),
            },
            table=cfg.aqi,
        )
        return r_ispu, r_aqi

    def update(self, batch: ReadingBatch) -> IndexUpdate:
        """``observe(batch)`` then ``evaluate()``: indices of the sensors it touched."""
        too_old = self.observe(batch)
        result = self.evaluate()
        return IndexUpdate(result.events, result.sensors, result.districts, too_old)

    def observe(self, batch: ReadingBatch) -> int:
        """Fold a batch into the rolling means (cheap); indices wait for ``evaluate``.

        The pipeline observes every micro-batch and evaluates on a timer, since
        computing indices per batch would cost more than everything else.
        Returns how many readings were too old for the rolling rings.
        """
        too_old = self.rolling.update(batch)
        tracked = self._tracked[batch.metric]
        if bool(tracked.any()):
            sid_all = batch.sid[tracked].astype(np.int64)
            self._reserve(int(sid_all.max()) + 1)
            np.maximum.at(self._pending_ts, sid_all, batch.ts_ns[tracked])
        return too_old

    def evaluate(self) -> IndexUpdate:
        """Indices, category-change events and rows for the sensors observed since the
        last evaluation (each at its newest observed time)."""
        n_ispu = len(self.ispu_pollutants)
        touched = np.flatnonzero(self._pending_ts != _I64_MIN).astype(np.int64)
        if touched.shape[0] == 0:
            return IndexUpdate([], IndexRows.empty(n_ispu), IndexRows.empty(n_ispu), 0)
        ts = self._pending_ts[touched].copy()
        self._pending_ts[touched] = _I64_MIN
        self._map_districts(touched)
        now_ns = self.clock.now_ns()

        r_ispu, r_aqi = self.compute(touched)
        s = self._sensors
        events = self._changes("ispu", s, touched, r_ispu, ts, now_ns, district_scope=False)
        events += self._changes("aqi", s, touched, r_aqi, ts, now_ns, district_scope=False)
        s.ispu_val[touched], s.ispu_sub[touched] = r_ispu.index, r_ispu.sub
        s.aqi_val[touched], s.aqi_sub[touched] = r_aqi.index, r_aqi.sub
        self._last_hour[touched] = self.rolling.latest_hour(touched)

        has = np.isfinite(r_ispu.index) | np.isfinite(r_aqi.index)
        sensors = IndexRows(
            ts,
            touched.astype(np.int32),
            self._sid_district[touched],
            np.ones(touched.shape[0], np.int32),
            r_ispu.index,
            r_ispu.category,
            r_ispu.dominant,
            r_ispu.sub,
            r_ispu.index,
            r_aqi.index,
            r_aqi.category,
            r_aqi.dominant,
            r_aqi.sub,
            r_aqi.index,
        ).take(has)
        districts, d_events = self._update_districts(touched, ts, now_ns)
        return IndexUpdate(events + d_events, sensors, districts, 0)

    def _update_districts(
        self, touched: I64, ts: I64, now_ns: int
    ) -> tuple[IndexRows, list[Event]]:
        n_ispu = len(self.ispu_pollutants)
        d_touched = self._sid_district[touched]
        dids = np.unique(d_touched).astype(np.int64)
        nd = int(dids.shape[0])
        if nd == 0:
            return IndexRows.empty(n_ispu), []
        n = self._sid_district.shape[0]
        members = np.flatnonzero(np.isin(self._sid_district[:n], dids))
        rank = np.searchsorted(dids, self._sid_district[members])
        hours = self._last_hour[members]
        newest = np.full(nd, -1, np.int64)
        np.maximum.at(newest, rank, hours)
        s = self._sensors
        current = (hours >= 0) & (hours >= newest[rank] - self.config.district_max_age_hours)
        current &= np.isfinite(s.ispu_val[members]) | np.isfinite(s.aqi_val[members])
        members, rank = members[current], rank[current]
        ispu_sub = np.full((nd, n_ispu), np.nan)
        np.fmax.at(ispu_sub, rank, s.ispu_sub[members])
        aqi_sub = np.full((nd, len(AQI_POLLUTANTS)), np.nan)
        np.fmax.at(aqi_sub, rank, s.aqi_sub[members])
        d_ts = np.full(nd, _I64_MIN, np.int64)
        np.maximum.at(d_ts, np.searchsorted(dids, d_touched), ts)
        i_index, i_dom = overall_index(ispu_sub)
        a_index, a_dom = overall_index(aqi_sub)
        r_ispu = IndexResult(
            self.ispu_pollutants,
            ispu_sub,
            np.zeros(ispu_sub.shape, np.bool_),
            i_index,
            ispu_category(i_index, table=self.config.ispu),
            i_dom,
        )
        r_aqi = IndexResult(
            AQI_POLLUTANTS,
            aqi_sub,
            np.zeros(aqi_sub.shape, np.bool_),
            a_index,
            aqi_category(a_index),
            a_dom,
        )
        d = self._districts
        events = self._changes("ispu", d, dids, r_ispu, d_ts, now_ns, district_scope=True)
        events += self._changes("aqi", d, dids, r_aqi, d_ts, now_ns, district_scope=True)
        d.ispu_val[dids], d.ispu_sub[dids] = i_index, ispu_sub
        d.aqi_val[dids], d.aqi_sub[dids] = a_index, aqi_sub
        rows = IndexRows(
            d_ts,
            np.full(nd, -1, np.int32),
            dids.astype(np.int32),
            np.bincount(rank, minlength=nd).astype(np.int32),
            i_index,
            r_ispu.category,
            i_dom,
            ispu_sub,
            _group_mean(rank, s.ispu_val[members], nd),
            a_index,
            r_aqi.category,
            a_dom,
            aqi_sub,
            _group_mean(rank, s.aqi_val[members], nd),
        )
        has = np.isfinite(i_index) | np.isfinite(a_index)
        return rows.take(has), events

    # -- events

    def _changes(
        self,
        detector: Literal["ispu", "aqi"],
        levels: _Levels,
        ids: I64,
        result: IndexResult,
        event_ns: I64,
        now_ns: int,
        *,
        district_scope: bool,
    ) -> list[Event]:
        """Events for category changes of ``ids`` (sids or district ids); stores the
        new categories (a missing index keeps the last category)."""
        is_ispu = detector == "ispu"
        cat_arr = levels.ispu_cat if is_ispu else levels.aqi_cat
        severities = self.config.ispu_severity if is_ispu else self.config.aqi_severity
        categories = ISPU_CATEGORIES if is_ispu else AQI_CATEGORIES
        old, new = cat_arr[ids], result.category
        sev = np.array([int(x) for x in severities], np.int64)[np.maximum(new, 0)]
        fire = (new >= 0) & (new != old)
        fire &= (old >= 0) | (sev >= int(self.config.first_event_min_severity))
        known = new >= 0
        cat_arr[ids[known]] = new[known]
        events = []
        for i in np.flatnonzero(fire).tolist():
            entity = int(ids[i])
            if district_scope:
                city, district = self.district_keys[entity]
                sensor_id, lane, scope = "", 0, "district"
            else:
                key = self.registry.key(entity)
                city, district, sensor_id, lane = key.city, key.district, key.sensor_id, key.lane
                scope = "sensor"
            cat, prev = categories[int(new[i])], int(old[i])
            value = float(result.index[i])
            dom = int(result.dominant[i])
            dominant = result.pollutants[dom] if dom >= 0 else ""
            prev_name = categories[prev].name if prev >= 0 else ""
            direction = "first" if prev < 0 else ("worse" if cat.code > prev else "better")
            where = f"{city}/{district}" + (f"/{sensor_id}" if sensor_id else "")
            was = f" (was {prev_name})" if prev_name else ""
            events.append(
                Event(
                    detector=detector,
                    state="change",
                    severity=Severity(severities[cat.code]),
                    kind="air",
                    city=city,
                    district=district,
                    sensor_id=sensor_id,
                    lane=lane,
                    metric=dominant,
                    value=value,
                    event_ns=int(event_ns[i]),
                    detected_ns=now_ns,
                    message=f"{detector.upper()} {cat.name}{was} at {where}: "
                    f"{value:.0f}, dominant {dominant}",
                    labels={
                        "index": detector,
                        "scope": scope,
                        "category": cat.name,
                        "category_en": cat.name_en,
                        "previous_category": prev_name,
                        "direction": direction,
                        "dominant": dominant,
                        "value": f"{value:.0f}",
                        "colour": cat.colour,
                    },
                )
            )
        return events

    # -- persistence

    def snapshot(self) -> dict[str, NDArray[np.generic]]:
        """Plain arrays (copies), savable with ``np.savez``: the rolling means, each
        sensor's and district's last indices and categories, the district keys.
        Series ids must mean the same after a restart (as for the window checkpoint)."""
        snap: dict[str, NDArray[np.generic]] = {
            f"rolling.{k}": v for k, v in self.rolling.snapshot().items()
        }
        for k, v in self._sensors.arrays().items():
            snap[f"sensor.{k}"] = v
        snap["sensor.last_hour"] = self._last_hour.copy()
        for k, v in self._districts.arrays().items():
            snap[f"district.{k}"] = v[: len(self.district_keys)]
        snap["district.city"] = np.array([c for c, _ in self.district_keys], dtype=np.str_)
        snap["district.name"] = np.array([d for _, d in self.district_keys], dtype=np.str_)
        return snap

    @classmethod
    def restore(
        cls,
        snap: Mapping[str, NDArray[np.generic]],
        registry: SeriesRegistry,
        *,
        config: IndexTrackerConfig | None = None,
        clock: Clock | None = None,
    ) -> IndexTracker:
        tracker = cls(registry, config=config, clock=clock)

        def group(prefix: str) -> dict[str, NDArray[np.generic]]:
            return {k.removeprefix(prefix): v for k, v in snap.items() if k.startswith(prefix)}

        rolling = RollingHours.restore(group("rolling."))
        if rolling.spec != tracker.rolling.spec:
            raise ValueError("snapshot was taken with other averaging periods")
        tracker.rolling = rolling
        sensors = group("sensor.")
        if np.asarray(sensors["ispu_sub"]).shape[1:] != (len(tracker.ispu_pollutants),):
            raise ValueError("snapshot was taken with another ISPU pollutant list")
        n = int(np.asarray(sensors["ispu_val"]).shape[0])
        tracker._reserve(n)
        tracker._sensors.load(sensors)
        tracker._last_hour[:n] = sensors["last_hour"]
        districts = group("district.")
        for city, name in zip(districts["city"].tolist(), districts["name"].tolist(), strict=True):
            tracker._district_ids[(str(city), str(name))] = len(tracker.district_keys)
            tracker.district_keys.append((str(city), str(name)))
        tracker._districts.load(districts)
        return tracker


def _group_mean(rank: NDArray[np.intp], values: F64, n_groups: int) -> F64:
    fin = np.isfinite(values)
    total = np.bincount(rank[fin], weights=values[fin], minlength=n_groups)
    count = np.bincount(rank[fin], minlength=n_groups)
    out = np.full(n_groups, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out
