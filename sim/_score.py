"""Score detector events against simulator ground truth (pure functions).

Semantics
---------
For each detector ``d``:

* Its **labels** are the ground-truth intervals whose ``detectors`` name ``d``;
  its **events** are the :class:`~urbanpulse._events.Event` objects with
  ``detector == d`` and a state in ``states`` (default ``start`` and
  ``change``: an ``end`` is a recovery, not a detection).
* An event **matches** a label when the sensor is the same, the lanes agree
  (either is 0 = the whole station, or they are equal), the metrics agree
  (either is "" = the whole sensor, or they are equal) and the event time lies
  in ``[start_ns - tolerance, end_ns + tolerance]`` (both edges included).
* **recall** = labels with at least one matching event / labels (each label
  counts once); **precision** = events matching some label / events (several
  events on one label are all correct); **F1** their harmonic mean. NaN when
  undefined (no labels, no events), shown as "-" and written as null.
* **delay** of a detected label = event time of its *first* matching event
  minus the label's start (negative when a detection fired inside the early
  tolerance); median and p95 by linear interpolation, in seconds.
* **false alarms per sensor-day**: events of ``d`` on *clean* data, i.e. not
  within tolerance of *any* label of that sensor (whatever its fault or
  expected detector), divided by ``n_sensors x days`` of the scored period.
  ``false_positives`` (events matching none of ``d``'s labels) is the count
  behind precision and can be larger: e.g. a flatline alarm during a dropout.

``tolerance_s`` is one number or a mapping per detector (key ``"*"`` is the
default for the others), e.g. ``{"*": 120, "ispu": 86400}`` for 24-hour means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sim._groundtruth import Label
from urbanpulse._events import Event, EventState

__all__ = ["DetectorScore", "ScoreTable", "score_detections"]

_I64 = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DetectorScore:
    detector: str
    tolerance_s: float
    labels: int
    detected: int
    events: int
    matched_events: int
    false_positives: int
    precision: float
    recall: float
    f1: float
    delay_median_s: float
    delay_p95_s: float
    clean_alarms: int
    false_alarms_per_sensor_day: float


@dataclass(frozen=True, slots=True)
class ScoreTable:
    rows: tuple[DetectorScore, ...]
    n_sensors: int
    days: float

    def row(self, detector: str) -> DetectorScore:
        for r in self.rows:
            if r.detector == detector:
                return r
        raise KeyError(detector)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: object) -> object:
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "n_sensors": self.n_sensors,
            "days": self.days,
            "detectors": [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        head = (
            "| detector | labels | detected | recall | events | precision | F1 "
            "| delay p50 (s) | delay p95 (s) | false alarms / sensor-day |"
        )
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(
                f"| {r.detector} | {r.labels} | {r.detected} | {_f(r.recall, 3)} | {r.events} "
                f"| {_f(r.precision, 3)} | {_f(r.f1, 3)} | {_f(r.delay_median_s, 1)} "
                f"| {_f(r.delay_p95_s, 1)} | {_f(r.false_alarms_per_sensor_day, 4)} |"
            )
        lines.append("")
        lines.append(f"{self.n_sensors} sensors over {self.days:g} days.")
        return "\n".join(lines)


def _f(v: float, digits: int) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def _tolerance(tolerance_s: float | Mapping[str, float], detector: str, fault: str = "") -> float:
    if isinstance(tolerance_s, Mapping):
        for key in (f"{detector}@{fault}", detector, "*"):
            if key in tolerance_s:
                return float(tolerance_s[key])
        return 0.0
    return float(tolerance_s)


@dataclass(frozen=True, slots=True)
class _Episodes:
    """Start (or change) events of the scored states, each with the time its
    episode ended (the matching ``end`` event, else the end of the period;
    a ``change`` is a point)."""

    events: list[Event]
    lo: _I64
    hi: _I64


def _episodes(
    events: Sequence[Event], states: Sequence[EventState], start_ns: int, end_ns: int
) -> _Episodes:
    open_at: dict[tuple[str, str, str, int, str], int] = {}
    picked: list[Event] = []
    hi: list[int] = []
    for e in sorted(events, key=lambda e: e.event_ns):
        key = (e.detector, e.district, e.sensor_id, e.lane, e.metric)
        if e.state == "end":
            i = open_at.pop(key, None)
            if i is not None:
                hi[i] = max(e.event_ns, picked[i].event_ns)
            continue
        if e.state not in states:
            continue
        if e.state == "start":
            open_at[key] = len(picked)
        picked.append(e)
        hi.append(e.event_ns if e.state != "start" else max(end_ns, e.event_ns))
    # an episode that began before the scored period counts if it reaches into it
    keep = [i for i, t in enumerate(hi) if t >= start_ns]
    picked = [picked[i] for i in keep]
    lo = np.array([e.event_ns for e in picked], dtype=np.int64)
    return _Episodes(picked, lo, np.array([hi[i] for i in keep], dtype=np.int64))


_SENSOR, _DISTRICT, _METRIC, _LANE = range(4)


def _keys(items: Sequence[Event] | Sequence[Label], codes: dict[str, int]) -> _I64:
    """``(len(items), 4)``: sensor, district and metric as codes that events and
    labels share ("" is -1), and the lane."""

    def code(text: str) -> int:
        return codes.setdefault(text, len(codes))

    rows = [(code(x.sensor_id), code(x.district), code(x.metric), x.lane) for x in items]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def _match(
    ev: _I64, ev_lo: _I64, ev_hi: _I64, lab: _I64, lab_lo: _I64, lab_hi: _I64, *, exact: bool
) -> NDArray[np.bool_]:
    """``(events, labels)``: episode ``[ev_lo, ev_hi]`` overlaps label ``[lab_lo,
    lab_hi]`` (already widened by the tolerance) on the same sensor (a
    district-scope event, without sensor, on any sensor of its district); with
    ``exact``, lanes and metrics must agree too (0 / "" = any). ``ev`` and
    ``lab`` are rows of :func:`_keys`."""
    e, lb = ev[:, None, :], lab[None, :, :]
    same = e == lb
    ok: NDArray[np.bool_] = np.where(
        e[..., _SENSOR] == -1, same[..., _DISTRICT], same[..., _SENSOR]
    )
    ok &= (ev_lo[:, None] <= lab_hi[None, :]) & (ev_hi[:, None] >= lab_lo[None, :])
    if exact:
        ok &= (e[..., _LANE] == 0) | (lb[..., _LANE] == 0) | same[..., _LANE]
        ok &= (e[..., _METRIC] == -1) | (lb[..., _METRIC] == -1) | same[..., _METRIC]
    return ok


def score_detections(
    labels: Iterable[Label],
    events: Iterable[Event],
    *,
    n_sensors: int,
    start_ns: int,
    end_ns: int,
    tolerance_s: float | Mapping[str, float] = 60.0,
    detectors: Sequence[str] | None = None,
    states: Sequence[EventState] = ("start", "change"),
    context: Iterable[Label] = (),
) -> ScoreTable:
    """Per-detector precision, recall, F1, delays and false alarms (see the module doc).

    ``context`` labels (e.g. the natural conditions of ``sim._truth``) make a
    detector's events correct like ``labels`` do but are not counted in its
    recall. ``detectors`` defaults to every detector named by a label or an event.
    """
    if n_sensors <= 0 or end_ns <= start_ns:
        raise ValueError("need n_sensors > 0 and end_ns > start_ns")
    labels = list(labels)
    context = list(context)
    every = labels + context
    ep = _episodes(list(events), states, start_ns, end_ns)
    if detectors is None:
        names = {d for lb in labels for d in lb.detectors} | {e.detector for e in ep.events}
        detectors = sorted(names)
    days = (end_ns - start_ns) / 86_400e9
    ev_det = np.array([e.detector for e in ep.events], dtype=object)
    codes = {"": -1}
    ev_keys, lab_keys = _keys(ep.events, codes), _keys(every, codes)
    lab_start = np.array([lb.start_ns for lb in every], dtype=np.int64)
    lab_end = np.array([lb.end_ns for lb in every], dtype=np.int64)
    never = np.iinfo(np.int64).max

    rows = []
    for det in detectors:
        tol = _tolerance(tolerance_s, det)
        li = np.array([i for i, lb in enumerate(every) if det in lb.detectors], dtype=np.intp)
        ei = np.flatnonzero(ev_det == det).astype(np.intp)
        ev, ev_lo, ev_hi = ev_keys[ei], ep.lo[ei], ep.hi[ei]
        tol_ns = np.array(
            [round(_tolerance(tolerance_s, det, every[j].fault) * 1e9) for j in li.tolist()],
            dtype=np.int64,
        )
        lo, hi = lab_start[li], lab_end[li]
        hit = _match(ev, ev_lo, ev_hi, lab_keys[li], lo - tol_ns, hi + tol_ns, exact=True)
        matched_events = int(hit.any(axis=1).sum())
        # Recall over ``labels`` only; delay from each label's first overlapping episode.
        own = li < len(labels)
        first = np.where(hit[:, own], ev_lo[:, None], never).min(axis=0, initial=never)
        detected_mask = first != never
        delay_ns = first[detected_mask] - lo[own][detected_mask]
        # an episode already running before the label (and its early tolerance)
        # flagged it from its first moment
        delay_ns = np.where(delay_ns < -tol_ns[own][detected_mask], 0, delay_ns)
        delays_s = delay_ns.astype(np.float64) / 1e9
        # Clean data: episodes overlapping no label of their sensor at all.
        tol_all = round(tol * 1e9)
        near = _match(
            ev, ev_lo, ev_hi, lab_keys, lab_start - tol_all, lab_end + tol_all, exact=False
        )
        clean = int(ei.shape[0] - near.any(axis=1).sum())
        n_lab, n_ev, detected = int(own.sum()), int(ei.shape[0]), int(detected_mask.sum())
        precision = matched_events / n_ev if n_ev else math.nan
        recall = detected / n_lab if n_lab else math.nan
        f1 = (
            2 * precision * recall / (precision + recall)
            if n_ev and n_lab and precision + recall > 0
            else (0.0 if n_ev and n_lab else math.nan)
        )
        rows.append(
            DetectorScore(
                detector=det,
                tolerance_s=tol,
                labels=n_lab,
                detected=detected,
                events=n_ev,
                matched_events=matched_events,
                false_positives=n_ev - matched_events,
                precision=precision,
                recall=recall,
                f1=f1,
                delay_median_s=float(np.percentile(delays_s, 50)) if detected else math.nan,
                delay_p95_s=float(np.percentile(delays_s, 95)) if detected else math.nan,
                clean_alarms=clean,
                false_alarms_per_sensor_day=clean / (n_sensors * days),
            )
        )
    return ScoreTable(rows=tuple(rows), n_sensors=n_sensors, days=days)
