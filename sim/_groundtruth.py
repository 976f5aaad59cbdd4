"""Ground truth of injected faults: labelled intervals, the detectors each should fire, JSON lines.

A :class:`Label` says: sensor ``sensor_id`` (lane ``lane``, metric ``metric``)
was in fault state ``fault`` during event time ``[start_ns, end_ns)``, and the
detectors named in ``detectors`` are expected to notice. ``lane == 0`` means
every lane of the station (or an air sensor); ``metric == ""`` means the whole
sensor (every metric).

Which detector should fire for which fault
------------------------------------------
``EXPECTED_DETECTORS`` is the table below; pass another mapping to
:func:`sim.compile_scenario` (``expected=``) if detectors are named otherwise.

=============== ======================== ==============================================
fault           detectors                what the simulator does
=============== ======================== ==============================================
spike           spike                    one reading of one metric multiplied (x4 by
                                         default) or set to a value
stuck           flatline                 one metric constant for the interval; a stuck
                loop_constant_occupancy  ``occupancy`` is the loop-health detector's
                (occupancy)              (``stuck:occupancy``)
dropout         dead                     no messages from the sensor (all lanes)
fog             humid_pm                 RH > 90 % in a district, PM of low-cost optical
                                         nodes over-read by a factor
out_of_range    range                    PM pinned at 999.9 (PM10 at 1999.9)
haze            ispu, aqi                PM2.5 (and PM10) raised in a district: an index
                                         category change
incident        incident, congestion     speed drop and occupancy up at one station
congestion      congestion               the queue of an incident reaching an upstream
                                         station on the same corridor (derived label)
clock_skew      (none)                   ``dateObserved`` shifted; behaviour, not a
                                         detection target
power           (none)                   weak battery: PM x ``pm_factor``, slots lost and
                                         readings late (irregular intervals); no
                                         UrbanPulse detector targets it (nothing reads
                                         battery voltage or cadence); a PM step may
                                         trip ``spike`` and long gaps ``dead``, which
                                         score as false positives outside other labels
=============== ======================== ==============================================

Per-model timestamp jitter is behaviour too and has no label (it is fleet-wide).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from urbanpulse._errors import ConfigError

__all__ = [
    "EXPECTED_DETECTORS",
    "FAULT_KINDS",
    "Label",
    "clip_labels",
    "interval_pairs",
    "read_labels",
    "write_labels",
]

#: Fault kind -> detector names expected to fire (see the module docstring).
EXPECTED_DETECTORS: Final[Mapping[str, tuple[str, ...]]] = {
    "spike": ("spike",),
    "stuck": ("flatline",),
    # "fault:metric" keys override "fault" for that metric.
    "stuck:occupancy": ("loop_constant_occupancy",),
    "dropout": ("dead",),
    "fog": ("humid_pm",),
    # A sensor pinned at 999.9 is also a flat line: both detectors are right.
    "out_of_range": ("range", "flatline"),
    "haze": ("ispu", "aqi"),
    "incident": ("incident", "congestion"),
    "congestion": ("congestion",),
    "clock_skew": (),
    "power": (),
}
FAULT_KINDS: Final[tuple[str, ...]] = tuple(k for k in EXPECTED_DETECTORS if ":" not in k)


@dataclass(frozen=True, slots=True, kw_only=True)
class Label:
    """One labelled fault interval, ``[start_ns, end_ns)`` in event time."""

    sensor_id: str
    fault: str
    start_ns: int
    end_ns: int
    detectors: tuple[str, ...]
    lane: int = 0
    metric: str = ""
    city: str = ""
    district: str = ""
    #: Index of the scenario entry that produced it (several labels may share one).
    source: int = -1

    def to_json(self) -> str:
        return json.dumps(
            {
                "sensor_id": self.sensor_id,
                "lane": self.lane,
                "fault": self.fault,
                "metric": self.metric,
                "start_ns": self.start_ns,
                "end_ns": self.end_ns,
                "detectors": list(self.detectors),
                "city": self.city,
                "district": self.district,
                "source": self.source,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Label:
        try:
            d = json.loads(text)
            return cls(
                sensor_id=str(d["sensor_id"]),
                lane=int(d.get("lane", 0)),
                fault=str(d["fault"]),
                metric=str(d.get("metric", "")),
                start_ns=int(d["start_ns"]),
                end_ns=int(d["end_ns"]),
                detectors=tuple(str(x) for x in d["detectors"]),
                city=str(d.get("city", "")),
                district=str(d.get("district", "")),
                source=int(d.get("source", -1)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"bad ground-truth label {text[:200]!r}: {exc}") from exc


def write_labels(path: str | Path, labels: Iterable[Label]) -> int:
    """Write labels as JSON lines (one object per line); returns how many."""
    lines = [label.to_json() for label in labels]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_labels(path: str | Path) -> list[Label]:
    """Labels from a JSON-lines file written by :func:`write_labels` (blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read ground truth {path}: {exc}") from exc
    out: list[Label] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(Label.from_json(line))
            except ConfigError as exc:
                raise ConfigError(f"{path}:{n}: {exc}") from exc
    return out


_I64 = NDArray[np.int64]


def interval_pairs(
    iv_group: _I64,
    iv_lo: _I64,
    iv_hi: _I64,
    q_group: _I64,
    q_t: _I64,
    *,
    closed: bool = False,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Every (query, interval) pair with the same group and ``lo <= t < hi``.

    ``closed=True`` includes ``t == hi``. Overlapping intervals are handled
    (all pairs are returned); exact in int64, without Python loops: a query's
    candidates are the intervals of its group starting in ``[t - longest, t]``,
    found by two searchsorted calls over a packed (group, time rank) key.
    Returns ``(query_index, interval_index)``, sorted by query.
    """
    empty = (np.empty(0, np.intp), np.empty(0, np.intp))
    if iv_lo.shape[0] == 0 or q_t.shape[0] == 0:
        return empty
    longest = int((iv_hi - iv_lo).max())
    q_from = q_t - longest
    times, inverse = np.unique(np.concatenate([iv_lo, q_t, q_from]), return_inverse=True)
    n_iv, n_q = iv_lo.shape[0], q_t.shape[0]
    width = np.int64(times.shape[0])
    # Dense group codes keep the packed key inside int64.
    groups, ginv = np.unique(np.concatenate([iv_group, q_group]), return_inverse=True)
    if groups.shape[0] * int(width) >= 2**62:
        raise ValueError("too many distinct groups x times to pack")
    g_iv, g_q = ginv[:n_iv].astype(np.int64), ginv[n_iv:].astype(np.int64)
    key_iv = g_iv * width + inverse[:n_iv]
    key_q = g_q * width + inverse[n_iv : n_iv + n_q]
    key_from = g_q * width + inverse[n_iv + n_q :]
    order = np.argsort(key_iv, kind="stable")
    sorted_keys = key_iv[order]
    a = np.searchsorted(sorted_keys, key_from, side="left")
    b = np.searchsorted(sorted_keys, key_q, side="right")
    counts = np.maximum(b - a, 0)
    total = int(counts.sum())
    if total == 0:
        return empty
    q_idx = np.repeat(np.arange(n_q, dtype=np.intp), counts)
    offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    iv_idx = order[np.repeat(a, counts) + offs].astype(np.intp)
    t = q_t[q_idx]
    hi = iv_hi[iv_idx]
    keep = (t <= hi) if closed else (t < hi)
    return q_idx[keep], iv_idx[keep]


def clip_labels(labels: Iterable[Label], start_ns: int, end_ns: int) -> list[Label]:
    """Labels overlapping ``[start_ns, end_ns)``, cut to it (e.g. to the span a run covered)."""
    out: list[Label] = []
    for label in labels:
        lo, hi = max(label.start_ns, start_ns), min(label.end_ns, end_ns)
        if lo < hi:
            out.append(replace(label, start_ns=lo, end_ns=hi))
    return out
