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

from sim._groundtruth import Label, interval_pairs
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


def _tolerance(tolerance_s: float | Mapping[str, float], detector: str) -> float:
    if isinstance(tolerance_s, Mapping):
        return float(tolerance_s.get(detector, tolerance_s.get("*", 0.0)))
    return float(tolerance_s)


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
) -> ScoreTable:
    """Per-detector precision, recall, F1, delays and false alarms (see the module doc).

    ``detectors`` defaults to every detector named by a label or an event.
    """
    if n_sensors <= 0 or end_ns <= start_ns:
        raise ValueError("need n_sensors > 0 and end_ns > start_ns")
    labels = list(labels)
    events = [e for e in events if e.state in states]
    if detectors is None:
        names = {d for lb in labels for d in lb.detectors} | {e.detector for e in events}
        detectors = sorted(names)
    days = (end_ns - start_ns) / 86_400e9
    codes: dict[str, int] = {}

    def code(text: str) -> int:
        return codes.setdefault(text, len(codes))

    lab_sensor = np.array([code(lb.sensor_id) for lb in labels], dtype=np.int64)
    lab_lane = np.array([lb.lane for lb in labels], dtype=np.int64)
    lab_metric = np.array([code("m:" + lb.metric) if lb.metric else -1 for lb in labels], np.int64)
    lab_lo = np.array([lb.start_ns for lb in labels], dtype=np.int64)
    lab_hi = np.array([lb.end_ns for lb in labels], dtype=np.int64)
    ev_det = np.array([code("d:" + e.detector) for e in events], dtype=np.int64)
    ev_sensor = np.array([code(e.sensor_id) for e in events], dtype=np.int64)
    ev_lane = np.array([e.lane for e in events], dtype=np.int64)
    ev_metric = np.array([code("m:" + e.metric) if e.metric else -1 for e in events], np.int64)
    ev_t = np.array([e.event_ns for e in events], dtype=np.int64)

    rows = []
    for det in detectors:
        tol = _tolerance(tolerance_s, det)
        tol_ns = round(tol * 1e9)
        li = np.array([i for i, lb in enumerate(labels) if det in lb.detectors], dtype=np.intp)
        ei = np.flatnonzero(ev_det == codes.get("d:" + det, -2))
        q, iv = interval_pairs(
            lab_sensor[li],
            lab_lo[li] - tol_ns,
            lab_hi[li] + tol_ns,
            ev_sensor[ei],
            ev_t[ei],
            closed=True,
        )
        lq, li_q = ev_lane[ei][q], lab_lane[li][iv]
        mq, mi_q = ev_metric[ei][q], lab_metric[li][iv]
        ok = ((lq == 0) | (li_q == 0) | (lq == li_q)) & ((mq < 0) | (mi_q < 0) | (mq == mi_q))
        q, iv = q[ok], iv[ok]
        matched_events = int(np.unique(q).shape[0])
        # First matching event per label -> delay.
        delay_ns = ev_t[ei][q] - lab_lo[li][iv]
        first = np.full(li.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, iv, delay_ns)
        hit = first != np.iinfo(np.int64).max
        delays_s = first[hit].astype(np.float64) / 1e9
        # Clean data: events near no label of their sensor at all.
        cq, _ = interval_pairs(
            lab_sensor, lab_lo - tol_ns, lab_hi + tol_ns, ev_sensor[ei], ev_t[ei], closed=True
        )
        clean = int(ei.shape[0] - np.unique(cq).shape[0])
        n_lab, n_ev, detected = int(li.shape[0]), int(ei.shape[0]), int(hit.sum())
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
