"""Detectors: plain-Python reference loops vs the vectorised kernels, targeted faults,
recovery, warm-up, and a clean simulated day.

Each ``ref_*`` function below is the detector's specification, reading by
reading (or message by message) in arrival order, with the state stored in the
same dtypes (float32 etc.) so that the vectorised detectors must match it
exactly, event for event and state for state.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest._decode import DecodeOptions, NativeJsonDecoder
from ingest._topics import TopicPattern
from processors._detect_core import END, START, BatchPlan, Detections
from processors._detect_humid import HumidityConfig, HumidityDetector
from processors._detect_sensor import (
    DeadSensorConfig,
    DeadSensorDetector,
    FlatlineConfig,
    FlatlineDetector,
    FlatlineRule,
    RangeConfig,
    RangeDetector,
    SpikeConfig,
    SpikeDetector,
)
from processors._detect_traffic import (
    LoopHealthConfig,
    LoopHealthDetector,
    SpeedDropConfig,
    SpeedDropDetector,
    TrafficStateConfig,
    TrafficStateDetector,
    los_class,
)
from processors._detectors import DetectorConfig, DetectorSuite
from sim import SimOptions, Simulator
from urbanpulse._batch import ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import ManualClock
from urbanpulse._schema import Kind, Metric, ReadingFlag

S = 1_000_000_000
MIN = 60 * S
#: 2025-11-23 21:00 UTC = 04:00 WIB (off-peak for the first hour).
T0 = 1_763_931_600 * S

Message = tuple[int, int, dict[Metric, float]]
Record = tuple[Any, ...]

AIR4 = (Metric.PM25, Metric.PM10, Metric.TEMPERATURE, Metric.RELATIVE_HUMIDITY)
TRAFFIC3 = (Metric.INTENSITY, Metric.OCCUPANCY, Metric.AVERAGE_VEHICLE_SPEED)


# --------------------------------------------------------------------------- data


def to_batch(messages: Sequence[Message]) -> ReadingBatch:
    sid: list[int] = []
    metric: list[int] = []
    ts: list[int] = []
    value: list[float] = []
    for s, t, vals in messages:
        for m in sorted(vals):
            sid.append(s)
            metric.append(int(m))
            ts.append(t)
            value.append(vals[m])
    return ReadingBatch(
        sid=np.array(sid, np.int32),
        metric=np.array(metric, np.uint8),
        ts_ns=np.array(ts, np.int64),
        value=np.array(value, np.float64),
    )


def rows_of(messages: Sequence[Message]) -> list[tuple[int, int, int, int, float]]:
    """(row, sid, metric, ts, value) in arrival order."""
    out: list[tuple[int, int, int, int, float]] = []
    for s, t, vals in messages:
        for m in sorted(vals):
            out.append((len(out), s, int(m), t, vals[m]))
    return out


def messages_of(messages: Sequence[Message]) -> list[tuple[int, Message]]:
    """(first row, message) as a batch defines messages: a new one starts where
    the series or the time changes or the metric code does not increase (two
    messages of one sensor with the same time and increasing metrics merge)."""
    out: list[tuple[int, Message]] = []
    prev: tuple[int, int, int] | None = None
    for row, s, m, t, v in rows_of(messages):
        if prev is None or (s, t) != prev[:2] or m <= prev[2]:
            out.append((row, (s, t, {})))
        out[-1][1][2][Metric(m)] = v
        prev = (s, t, m)
    return out


N_AIR = 6
LANE_A, LANE_B = N_AIR, N_AIR + 1


def synthetic_stream(minutes: int = 240, seed: int = 7) -> list[Message]:
    """Air sids 0-5 every 60 s, traffic lanes 6-7 every 30 s, with one fault of
    each kind (times in minutes from T0):

    sid 0 PM2.5 pinned at 999.9 (100-110); sid 1 PM2.5 x5 (one reading at 80);
    sid 2 PM2.5 stuck (120-160); sid 3 silent (60-100); sid 4 RH 94-96 % (130-160);
    lane 6 speed x0.25 (170-190); lane 7 intensity 0 with occupancy 0.2
    (140-145), occupancy stuck at 0.3 (200-215).
    """
    rng = np.random.default_rng(seed)
    msgs: list[Message] = []
    for k in range(minutes * 2):
        t = T0 + k * 30 * S
        minute = k / 2
        if k % 2 == 0:
            for s in range(N_AIR):
                if s == 3 and 60 <= minute < 100:
                    continue
                pm = round(30.0 * math.exp(0.1 * float(rng.standard_normal())), 1)
                vals = {
                    Metric.PM25: pm,
                    Metric.PM10: round(pm * 1.5, 1),
                    Metric.TEMPERATURE: round(27.0 + 0.3 * float(rng.standard_normal()), 2),
                    Metric.RELATIVE_HUMIDITY: round(72.0 + 2.0 * float(rng.standard_normal()), 1),
                }
                if s == 0 and 100 <= minute < 110:
                    vals[Metric.PM25] = 999.9
                if s == 1 and minute == 80:
                    vals[Metric.PM25] = pm * 5
                if s == 2 and 120 <= minute < 160:
                    vals[Metric.PM25] = 33.3
                if s == 4 and 130 <= minute < 160:
                    vals[Metric.RELATIVE_HUMIDITY] = 94.0 + (k % 5) / 2
                msgs.append((s, t + s * S, vals))
        for lane in (LANE_A, LANE_B):
            inten = float(rng.poisson(8))
            occ = round(0.1 * math.exp(0.1 * float(rng.standard_normal())), 3)
            speed = round(50.0 * math.exp(0.05 * float(rng.standard_normal())), 1)
            if lane == LANE_A and 170 <= minute < 190:
                speed = round(speed * 0.25, 1)
            if lane == LANE_B and 140 <= minute < 145:
                inten, occ = 0.0, 0.2
            if lane == LANE_B and 200 <= minute < 215:
                occ = 0.3
            msgs.append(
                (
                    lane,
                    t + 10 * S,
                    {
                        Metric.INTENSITY: inten,
                        Metric.OCCUPANCY: occ,
                        Metric.AVERAGE_VEHICLE_SPEED: speed,
                    },
                )
            )
    return msgs


def registry_for(n_air: int = N_AIR, lanes: Iterable[int] = (LANE_A, LANE_B)) -> SeriesRegistry:
    reg = SeriesRegistry()
    for s in range(n_air):
        reg.resolve(SeriesKey("kota", f"d{s % 3}", Kind.AIR, f"aq-{s:02d}"))
    for i, _ in enumerate(lanes):
        reg.resolve(SeriesKey("kota", "d9", Kind.TRAFFIC, "tc-01", i + 1))
    return reg


#: Configs that make every detector fire within the synthetic stream.
FAST_TRAFFIC = TrafficStateConfig(min_offpeak_samples=30, offpeak_hours=(22.0, 5.0))
FAST = DetectorConfig(traffic_state=FAST_TRAFFIC, humid_pm=HumidityConfig(event_readings=5))


def records(det: Detections, *, with_row: bool = True) -> list[Record]:
    recs = det.records()
    return [r[:-1] if with_row else r[1:-1] for r in recs]


# --------------------------------------------------------------------------- references


def f32(x: float) -> float:
    return float(np.float32(x))


def rec(
    row: int,
    sid: int,
    metric: int,
    state: int,
    ts: int,
    value: float,
    score: float,
    ref: float = math.nan,
    label: int = 0,
    code: int = 0,
) -> Record:
    return (
        row,
        sid,
        metric,
        code,
        state,
        ts,
        repr(float(value)),
        repr(float(score)),
        repr(float(ref)),
        label,
    )


def ref_range(msgs: Sequence[Message], cfg: RangeConfig) -> tuple[list[Record], dict[Any, Any]]:
    state: dict[tuple[int, int], list[Any]] = {}
    out: list[Record] = []
    for row, s, m, t, v in rows_of(msgs):
        if Metric(m) not in cfg.ranges:
            continue
        lo, hi = cfg.ranges[Metric(m)]
        st_ = state.setdefault((s, m), [False, 0])
        bad = v < lo or v > hi
        st_[1] = min(st_[1], 254) + 1 if bad != st_[0] else 0
        if not st_[0] and st_[1] >= cfg.start_readings:
            above = v > hi
            label = 2 if above and v in (999.9, 1999.9) and m <= 1 else int(above)
            out.append(
                rec(row, s, m, START, t, v, v - hi if above else lo - v, hi if above else lo, label)
            )
            st_[:] = [True, 0]
        elif st_[0] and st_[1] >= cfg.recover_readings:
            out.append(rec(row, s, m, END, t, v, cfg.recover_readings, hi if v > hi else lo))
            st_[:] = [False, 0]
    return out, {k: tuple(v) for k, v in state.items()}


def ref_spike(msgs: Sequence[Message], cfg: SpikeConfig) -> tuple[list[Record], dict[Any, Any]]:
    state: dict[tuple[int, int], list[Any]] = {}
    out: list[Record] = []
    for row, s, m, t, x in rows_of(msgs):
        if Metric(m) not in cfg.metrics:
            continue
        mu, var, n, run, pv, pms = state.setdefault((s, m), [0.0, 0.0, 0, 0, math.nan, 0])
        sd = math.sqrt(max(var, cfg.min_std.get(Metric(m), 0.0) ** 2))
        ratio = Metric(m) in cfg.ratio_down

        def score(v: float, mu: float = mu, sd: float = sd, ratio: bool = ratio) -> float:
            if ratio and v < mu and mu > 0.0:
                return math.log(max(v, mu * 1e-3) / mu) * mu / sd
            return (v - mu) / sd

        z = score(x)
        warm = n >= cfg.warmup_readings
        dz = z if Metric(m) in cfg.upward_only else abs(z)
        extreme = warm and dz > cfg.threshold_z
        xc = min(max(x, mu - cfg.winsor_z * sd), mu + cfg.winsor_z * sd) if warm else x
        inv = 1.0 / (n + 1.0)
        a, av = max(cfg.alpha, inv), max(cfg.alpha_var, inv)
        d = xc - mu
        new_mu, new_var = f32(mu + a * d), f32((1.0 - av) * (var + av * d * d))
        if extreme and run == 0:
            pv, pms = f32(x), (t // 1_000_000) & 0xFFFFFFFF
        going = extreme if run == 0 else (not warm or dz > cfg.normal_z)
        if not going and 1 <= run <= cfg.max_spike_readings:
            now_ms = t // 1_000_000
            spike_ms = now_ms - ((now_ms - pms) & 0xFFFFFFFF)
            out.append(rec(row, s, m, START, spike_ms * 1_000_000, pv, score(pv), mu, run))
            out.append(rec(row, s, m, END, t, x, z, mu))
        run = min(run, 254) + 1 if going else 0
        state[(s, m)] = [new_mu, new_var, min(n, 254) + 1, run, pv, pms]
    return out, {k: tuple(v) for k, v in state.items()}


def ref_flatline(
    msgs: Sequence[Message], cfg: FlatlineConfig
) -> tuple[list[Record], dict[Any, Any]]:
    state: dict[tuple[int, int], list[Any]] = {}
    out: list[Record] = []
    for row, s, m, t, v in rows_of(msgs):
        rule = cfg.rules.get(Metric(m))
        if rule is None:
            continue
        last, run, start_s, active = state.setdefault((s, m), [math.nan, 0, 0, False])
        x32 = f32(v)
        t_s = t // S
        same = x32 == last
        run = min(run, 65_534) + 1 if same else 1
        start_s = start_s if same else t_s
        eligible = not (rule.ignore_zero and v == 0.0)
        by_time = run >= rule.min_readings_by_time and t_s - start_s >= math.ceil(
            rule.min_duration_s
        )
        stuck = eligible and (run >= rule.min_readings or by_time)
        if stuck and not active:
            out.append(rec(row, s, m, START, t, v, run, t_s - start_s))
        if active and not same:
            out.append(rec(row, s, m, END, t, v, 1.0))
        active = (active or stuck) if same else False
        state[(s, m)] = [x32, run, start_s, active]
    return out, {k: (repr(v[0]), *v[1:]) for k, v in state.items()}


def ref_dead(
    steps: Sequence[tuple[str, Any]], cfg: DeadSensorConfig
) -> tuple[list[Record], dict[int, Any]]:
    """``steps``: ("batch", messages) or ("check", watermark_ns); rows are per batch."""
    state: dict[int, list[Any]] = {}
    out: list[Record] = []

    def limit(iv: float) -> float:
        return max(cfg.factor * max(iv, cfg.floor_interval_s), cfg.min_silence_s)

    for kind, arg in steps:
        if kind == "check":
            found = []
            for s in sorted(state):
                last, iv, n, dead = state[s]
                lim = limit(iv)
                lim_ns = int(lim * 1e9)
                if n >= cfg.warmup_messages and not dead and last < arg - lim_ns:
                    state[s][3] = True
                    found.append(
                        rec(
                            -1,
                            s,
                            -1,
                            START,
                            last + lim_ns,
                            lim,
                            lim / max(iv, cfg.floor_interval_s),
                            iv,
                        )
                    )
            out += found
            continue
        for row, (s, t, _vals) in messages_of(arg):
            last, iv, n, dead = state.setdefault(s, [0, 0.0, 0, False])
            seen = n > 0
            dt_ns = t - last
            newer = seen and dt_ns > 0
            lim = limit(iv)
            lim_ns = int(lim * 1e9)
            warm = n >= cfg.warmup_messages
            dt_s = dt_ns / 1e9
            score = dt_s / max(iv, cfg.floor_interval_s)
            if newer and warm and not dead and dt_ns > lim_ns:
                out.append(
                    rec(
                        row,
                        s,
                        -1,
                        START,
                        last + lim_ns,
                        lim,
                        lim / max(iv, cfg.floor_interval_s),
                        iv,
                    )
                )
                out.append(rec(row, s, -1, END, t, dt_s, score, iv))
            elif newer and dead:
                out.append(rec(row, s, -1, END, t, dt_s, score, iv))
            if newer:
                x = min(dt_s, lim) if n >= 2 else dt_s
                a = max(cfg.alpha, 1.0 / max(float(n), 1.0))
                iv = f32(iv + a * (x - iv))
                dead = False
            if newer or not seen:
                last, n = t, min(n, 254) + 1
            state[s] = [last, iv, n, dead]
    return out, {k: tuple(v) for k, v in state.items()}


def ref_humid(
    msgs: Sequence[Message], cfg: HumidityConfig
) -> tuple[list[Record], list[int], dict[int, Any]]:
    state: dict[int, list[Any]] = {}
    out: list[Record] = []
    flags: list[int] = []
    for row, (s, t, vals) in messages_of(msgs):
        pm = [m for m in sorted(vals) if m in cfg.pm_metrics]
        hr = Metric.RELATIVE_HUMIDITY in vals
        row_flags = [0] * len(vals)
        if pm or hr:
            rh, rh_s, run, active = state.setdefault(s, [math.nan, 0, 0, False])
            t_s = t // S
            if hr:
                eff = vals[Metric.RELATIVE_HUMIDITY]
            else:
                eff = rh if abs(t_s - rh_s) <= cfg.max_rh_age_s else math.nan
            humid = eff > cfg.rh_threshold_pct
            if humid and pm:
                for i, m in enumerate(sorted(vals)):
                    if m in cfg.pm_metrics:
                        row_flags[i] = int(ReadingFlag.HUMID)
            wet = bool(pm) and eff > cfg.event_rh_pct
            run = min(run, 254) + 1 if wet else 0
            rhm = int(Metric.RELATIVE_HUMIDITY)
            if wet and not active and run >= cfg.event_readings:
                out.append(
                    rec(row, s, rhm, START, t, eff, eff - cfg.event_rh_pct, cfg.event_rh_pct)
                )
                active = True
            elif active and not eff > cfg.clear_below_pct:
                out.append(
                    rec(row, s, rhm, END, t, eff, eff - cfg.event_rh_pct, cfg.clear_below_pct)
                )
                active = False
            if hr:
                rh, rh_s = f32(vals[Metric.RELATIVE_HUMIDITY]), t_s
            state[s] = [rh, rh_s, run, active]
        flags += row_flags
    return out, flags, {k: (repr(v[0]), *v[1:]) for k, v in state.items()}


def ref_traffic_state(
    msgs: Sequence[Message], cfg: TrafficStateConfig
) -> tuple[list[Record], dict[int, Any]]:
    state: dict[int, dict[str, Any]] = {}
    out: list[Record] = []
    spd = int(Metric.AVERAGE_VEHICLE_SPEED)
    for row, s, m, t, v in rows_of(msgs):
        if m != spd:
            continue
        st_ = state.setdefault(
            s,
            {
                "hist": [0] * cfg.n_bins,
                "total": 0,
                "ff": math.nan,
                "s": math.nan,
                "c": False,
                "los": 255,
            },
        )
        h = ((t + cfg.utc_offset_s * S) % (86_400 * S)) / (3_600 * S)
        lo, hi = cfg.offpeak_hours
        off = (lo <= h < hi) if lo <= hi else (h >= lo or h < hi)
        if off:
            b = min(max(int(v / cfg.bin_kmh), 0), cfg.n_bins - 1)
            hist = st_["hist"]
            if hist[b] == 255:
                st_["hist"] = hist = [c >> 1 for c in hist]
            hist[b] += 1
            st_["total"] = min(st_["total"], 65_534) + 1
            st_["tick"] = (st_.get("tick", 0) + 1) % cfg.refresh_samples
            due = st_["tick"] == 0 or math.isnan(st_["ff"])
            if st_["total"] >= cfg.min_offpeak_samples and due:
                total = sum(hist)
                target = cfg.quantile * total
                cum = 0
                for i, c in enumerate(hist):
                    if cum + c >= target:
                        st_["ff"] = f32((i + (target - cum) / c) * cfg.bin_kmh)
                        break
                    cum += c
        n_s = st_.get("n", 0)
        a = max(cfg.smoothing_alpha, 1.0 / (n_s + 1))
        sm = v if math.isnan(st_["s"]) else st_["s"] + a * (v - st_["s"])
        st_["s"] = f32(sm)
        st_["n"] = min(n_s + 1, 255)
        ff = st_["ff"]
        ratio = sm / ff
        if math.isnan(ratio):
            continue
        if cfg.congestion:
            if not st_["c"] and ratio < cfg.congested_ratio:
                out.append(rec(row, s, spd, START, t, sm, ratio, ff))
                st_["c"] = True
            elif st_["c"] and ratio >= cfg.clear_ratio:
                out.append(rec(row, s, spd, END, t, sm, ratio, ff))
                st_["c"] = False
        if cfg.level_of_service:
            cls = [
                int(los_class(np.array([r]), cfg.los_bounds)[0])
                for r in (ratio, ratio + cfg.los_margin, ratio - cfg.los_margin)
            ]
            cur = st_["los"]
            if cur == 255:
                st_["los"] = cls[0]
            elif cls[1] > cur:
                st_["los"] = cls[1]
            elif cls[2] < cur:
                st_["los"] = cls[2]
            if cur != 255 and st_["los"] != cur:
                out.append(rec(row, s, spd, 2, t, sm, ratio, ff, cur * 8 + st_["los"], code=1))
    return out, {k: (v["total"], repr(v["ff"]), v["los"], v["c"]) for k, v in state.items()}


def ref_speed_drop(
    msgs: Sequence[Message], cfg: SpeedDropConfig
) -> tuple[list[Record], dict[int, Any]]:
    state: dict[int, list[Any]] = {}
    out: list[Record] = []
    spd = int(Metric.AVERAGE_VEHICLE_SPEED)
    for row, s, m, t, v in rows_of(msgs):
        if m != spd:
            continue
        b, n, bits, active = state.setdefault(s, [0.0, 0, 0, False])
        warm = n >= cfg.warmup_readings
        thr = min(cfg.drop_fraction * b, cfg.drop_kmh)
        drop = warm and b >= cfg.min_baseline_kmh and b - v >= thr
        bits = ((bits << 1) | int(drop)) & ((1 << cfg.m) - 1)
        hits = bin(bits).count("1")
        if not active and hits >= cfg.k:
            out.append(rec(row, s, spd, START, t, v, 1.0 - v / b, b, hits))
            active = True
        elif active and hits == 0:
            out.append(rec(row, s, spd, END, t, v, 1.0 - v / b, b, hits))
            active = False
        xw = max(v, b - thr) if warm else v
        a = max(cfg.alpha, 1.0 / (n + 1.0))
        state[s] = [f32(b + a * (xw - b)), min(n, 254) + 1, bits, active]
    return out, {k: tuple(v) for k, v in state.items()}


def ref_loop(msgs: Sequence[Message], cfg: LoopHealthConfig) -> tuple[list[Record], dict[int, Any]]:
    state: dict[int, list[Any]] = {}
    out: list[Record] = []
    occm = int(Metric.OCCUPANCY)
    for row, (s, t, vals) in messages_of(msgs):
        if Metric.INTENSITY not in vals or Metric.OCCUPANCY not in vals:
            continue
        zr, last, orun, ia, ca = state.setdefault(s, [0, math.nan, 0, False, False])
        i, o = vals[Metric.INTENSITY], vals[Metric.OCCUPANCY]
        inter = i == 0.0 and o > 0.0
        zr = min(zr, 254) + 1 if inter else 0
        same = f32(o) == last
        orun = min(orun, 65_534) + 1 if same else 1
        evs = []
        if not ia and zr >= cfg.intermittent_readings and cfg.intermittent:
            evs.append(rec(row, s, occm, START, t, o, zr, i, code=0))
            ia = True
        elif ia and not inter:
            evs.append(rec(row, s, occm, END, t, o, zr, i, code=0))
            ia = False
        if not ca and o > 0 and orun >= cfg.constant_occupancy_readings and cfg.constant_occupancy:
            evs.append(rec(row, s, occm, START, t, o, orun, i, code=1))
            ca = True
        elif ca and not same:
            evs.append(rec(row, s, occm, END, t, o, orun, i, code=1))
            ca = False
        out += evs
        state[s] = [zr, f32(o), orun, ia, ca]
    return out, {k: tuple(v) for k, v in state.items()}


# --------------------------------------------------------------------------- state views


def table_state(
    det: Any, table: str, cols: Sequence[str], keys: Iterable[tuple[int, Metric]]
) -> dict[Any, Any]:
    t = det.tables[table]
    out = {}
    for sid, m in keys:
        row = t.row_of(sid, m)
        if row is None:
            continue
        out[(sid, int(m))] = tuple(t.cols[c][row].item() for c in cols)
    return out


def series_state(
    det: Any, table: str, metric: Metric, cols: Sequence[str], *, n_sid: int = 5
) -> dict[int, Any]:
    """``table_state`` of a per-series table (any covered ``metric`` finds the
    row), keyed by series id."""
    got = table_state(det, table, cols, [(s, metric) for s in range(n_sid)])
    return {s: v for (s, _), v in got.items()}


def all_keys(msgs: Sequence[Message]) -> list[tuple[int, Metric]]:
    return sorted({(s, m) for s, _, vals in msgs for m in vals})


def spans(n: int, cuts: Iterable[int]) -> list[tuple[int, int]]:
    """[a, b) message ranges of a stream of n messages cut at ``cuts``."""
    return list(itertools.pairwise([0, *sorted({c for c in cuts if 0 < c < n}), n]))


def run_batches(det: Any, msgs: Sequence[Message], cuts: Sequence[int]) -> Detections:
    """Feed ``msgs`` split at message indices ``cuts``; rows made global."""
    parts = []
    offset = 0
    bounds = spans(len(msgs), cuts)
    for a, b in bounds:
        batch = to_batch(msgs[a:b])
        found = det.update(batch)
        parts.append(replace(found, row=found.row + offset))
        offset += len(batch)
    return Detections.concat(parts)


# --------------------------------------------------------------------------- strategies

AIR_VALUES = {
    Metric.PM25: [10.0, 30.0, 30.0, 31.0, 999.9, -1.0, 200.0],
    Metric.PM10: [15.0, 45.0, 45.0, 1999.9],
    Metric.TEMPERATURE: [27.0, 27.5, 70.0],
    Metric.RELATIVE_HUMIDITY: [60.0, 75.0, 92.0, 95.0, 101.0],
}
TRAFFIC_VALUES = {
    Metric.INTENSITY: [0.0, 0.0, 5.0, 12.0],
    Metric.OCCUPANCY: [0.0, 0.1, 0.1, 0.3],
    Metric.AVERAGE_VEHICLE_SPEED: [50.0, 48.0, 52.0, 10.0, 0.0, 250.0],
}


def random_stream(seed: int, n: int) -> list[Message]:
    """Messages of air sids 0-2 and traffic lanes 3-4: steps of 0-4000 s (and
    back 30 s), random metric subsets, values from small sets with repeats,
    extremes and faults."""
    rng = np.random.default_rng(seed)
    clock = {s: T0 + s * S for s in range(5)}
    steps = [30, 60, 60, 60, 0, -30, 900, 4000]
    msgs: list[Message] = []
    for _ in range(n):
        s = int(rng.integers(0, 5))
        clock[s] += steps[int(rng.integers(0, len(steps)))] * S
        table = AIR_VALUES if s < 3 else TRAFFIC_VALUES
        metrics = sorted(table)
        keep = [m for m in metrics if rng.random() < 0.7] or [metrics[0]]
        vals = {m: table[m][int(rng.integers(0, len(table[m])))] for m in keep}
        msgs.append((s, clock[s], vals))
    return msgs


@st.composite
def message_streams(draw: st.DrawFn) -> tuple[list[Message], list[int]]:
    n = draw(st.integers(1, 80))
    msgs = random_stream(draw(st.integers(0, 2**32 - 1)), n)
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    # a micro-batch never splits a message: no cut between two entries that form
    # one message (same sensor and time, increasing metrics; see messages_of)
    return msgs, [c for c in cuts if not 0 < c < n or not merges(msgs[c - 1], msgs[c])]


def merges(a: Message, b: Message) -> bool:
    """Whether ``b`` continues ``a``'s message when they are adjacent in a batch."""
    return a[0] == b[0] and a[1] == b[1] and min(b[2]) > max(a[2])


HYP = settings(max_examples=60, deadline=None)

# small warm-ups and thresholds so that short random streams reach every branch
RANGE_CFG = RangeConfig(start_readings=2, recover_readings=2)
SPIKE_CFG = SpikeConfig(warmup_readings=3, threshold_z=2.0, normal_z=1.0, max_spike_readings=2)
FLAT_CFG = FlatlineConfig(
    rules={
        Metric.PM25: FlatlineRule(3, 600.0),
        Metric.INTENSITY: FlatlineRule(3, 300.0, ignore_zero=True),
        Metric.RELATIVE_HUMIDITY: FlatlineRule(4, 120.0),
    }
)
DEAD_CFG = DeadSensorConfig(warmup_messages=2, min_silence_s=100.0, factor=3.0)
HUMID_CFG = HumidityConfig(event_readings=2, max_rh_age_s=120.0)
TRAFFIC_CFG = TrafficStateConfig(
    min_offpeak_samples=2, n_bins=8, bin_kmh=10.0, los_margin=0.0, refresh_samples=3
)
DROP_CFG = SpeedDropConfig(warmup_readings=2, k=2, m=3)
LOOP_CFG = LoopHealthConfig(intermittent_readings=2, constant_occupancy_readings=3)


# --------------------------------------------------------------------------- reference equality


@HYP
@given(message_streams())
def test_range_matches_reference(data: tuple[list[Message], list[int]]) -> None:
    msgs, cuts = data
    det = RangeDetector(RANGE_CFG)
    want, state = ref_range(msgs, RANGE_CFG)
    assert records(run_batches(det, msgs, cuts)) == want
    got = table_state(det, "range", ("faulty", "run"), all_keys(msgs))
    assert got == {k: (int(v[0]), v[1]) for k, v in state.items()}


@HYP
@given(message_streams())
def test_spike_matches_reference(data: tuple[list[Message], list[int]]) -> None:
    msgs, cuts = data
    det = SpikeDetector(SPIKE_CFG)
    want, state = ref_spike(msgs, SPIKE_CFG)
    assert records(run_batches(det, msgs, cuts)) == want
    cols = ("mean", "var", "n", "run")
    got = table_state(det, "spike", cols, all_keys(msgs))
    assert got == {k: v[:4] for k, v in state.items()}


@HYP
@given(message_streams())
def test_flatline_matches_reference(data: tuple[list[Message], list[int]]) -> None:
    msgs, cuts = data
    det = FlatlineDetector(FLAT_CFG)
    want, state = ref_flatline(msgs, FLAT_CFG)
    assert records(run_batches(det, msgs, cuts)) == want
    got = table_state(det, "flatline", ("last", "run", "start_s", "active"), all_keys(msgs))
    assert {k: (repr(v[0]), v[1], v[2], bool(v[3])) for k, v in got.items()} == state


@HYP
@given(message_streams(), st.lists(st.integers(0, 80), max_size=4), st.integers(0, 3000))
def test_dead_matches_reference(
    data: tuple[list[Message], list[int]], check_at: list[int], lag_s: int
) -> None:
    msgs, cuts = data
    det = DeadSensorDetector(DEAD_CFG)
    bounds = spans(len(msgs), cuts + check_at)
    steps: list[tuple[str, Any]] = []
    got_parts: list[Record] = []
    for a, b in bounds:
        steps.append(("batch", msgs[a:b]))
        got_parts += records(det.update(to_batch(msgs[a:b])))
        if b in check_at:
            wm = max(t for _, t, _ in msgs[:b]) + lag_s * S
            steps.append(("check", wm))
            got_parts += records(det.check(wm))
    want, state = ref_dead(steps, DEAD_CFG)
    assert got_parts == want
    got_state = series_state(det, "dead", Metric.PM25, ("last_ns", "interval_s", "n", "dead"))
    assert {k: (*v[:3], bool(v[3])) for k, v in got_state.items()} == state


@HYP
@given(message_streams())
def test_humid_matches_reference(data: tuple[list[Message], list[int]]) -> None:
    msgs, cuts = data
    det = HumidityDetector(HUMID_CFG)
    want, want_flags, state = ref_humid(msgs, HUMID_CFG)
    got: list[Record] = []
    flags: list[int] = []
    bounds = spans(len(msgs), cuts)
    offset = 0
    for a, b in bounds:
        batch = to_batch(msgs[a:b])
        found, fl = det.update_flags(batch)
        got += [(r[0] + offset, *r[1:]) for r in records(found)]
        flags += fl.tolist()
        offset += len(batch)
    assert got == want
    assert flags == want_flags
    got_state = series_state(
        det, "humid", Metric.RELATIVE_HUMIDITY, ("rh", "rh_s", "run", "active"), n_sid=3
    )
    assert {k: (repr(v[0]), v[1], v[2], bool(v[3])) for k, v in got_state.items()} == state


@HYP
@given(message_streams(), st.integers(0, 23))
def test_traffic_state_matches_reference(
    data: tuple[list[Message], list[int]], hour_shift: int
) -> None:
    msgs, cuts = data
    msgs = [(s, t + hour_shift * 3600 * S, v) for s, t, v in msgs]
    det = TrafficStateDetector(TRAFFIC_CFG)
    want, state = ref_traffic_state(msgs, TRAFFIC_CFG)
    assert records(run_batches(det, msgs, cuts)) == want
    cols = ("total", "free_flow", "los", "congested")
    got_state = series_state(det, "traffic", Metric.AVERAGE_VEHICLE_SPEED, cols)
    assert {k: (v[0], repr(v[1]), v[2], bool(v[3])) for k, v in got_state.items()} == state


@HYP
@given(message_streams())
def test_speed_drop_matches_reference(data: tuple[list[Message], list[int]]) -> None:
    msgs, cuts = data
    det = SpeedDropDetector(DROP_CFG)
    want, state = ref_speed_drop(msgs, DROP_CFG)
    assert records(run_batches(det, msgs, cuts)) == want
    cols = ("baseline", "n", "bits", "active")
    got_state = series_state(det, "speed", Metric.AVERAGE_VEHICLE_SPEED, cols)
    assert {k: (*v[:3], bool(v[3])) for k, v in got_state.items()} == state


@HYP
@given(message_streams())
def test_loop_health_matches_reference(data: tuple[list[Message], list[int]]) -> None:
    msgs, cuts = data
    det = LoopHealthDetector(LOOP_CFG)
    want, state = ref_loop(msgs, LOOP_CFG)
    assert records(run_batches(det, msgs, cuts)) == want
    got_state = series_state(
        det, "loop", Metric.OCCUPANCY, ("zero_run", "occ", "occ_run", "active")
    )
    assert {k: (*v[:3], bool(v[3] & 1), bool(v[3] & 2)) for k, v in got_state.items()} == state


# --------------------------------------------------------------------------- targeted


def at(minute: float, offset_s: int = 0) -> int:
    return T0 + round(minute * 60) * S + offset_s * S


def run_suite(
    msgs: Sequence[Message],
    config: DetectorConfig,
    *,
    batch_messages: int = 150,
    check: bool = True,
) -> tuple[DetectorSuite, list[Any], list[int]]:
    reg = registry_for()
    suite = DetectorSuite(config, reg, ManualClock(T0))
    events: list[Any] = []
    flags: list[int] = []
    for a in range(0, len(msgs), batch_messages):
        part = msgs[a : a + batch_messages]
        res = suite.update(to_batch(part))
        events += res.events
        flags += res.flags.tolist()
        if check:
            events += suite.check(max(t for _, t, _ in part))
    return suite, events, flags


def starts_ends(events: Sequence[Any], detector: str, sensor: str, lane: int = 0) -> list[Any]:
    return [
        (e.state, e.event_ns, e.metric)
        for e in events
        if e.detector == detector and e.sensor_id == sensor and e.lane == lane
    ]


def test_each_fault_is_detected_with_its_recovery() -> None:
    msgs = synthetic_stream()
    _, events, _ = run_suite(msgs, FAST)
    assert starts_ends(events, "range", "aq-00") == [
        ("start", at(100), "pm25"),
        ("end", at(114), "pm25"),  # 5 good readings: 110 ... 114
    ]
    assert starts_ends(events, "spike", "aq-01") == [
        ("start", at(80, 1), "pm25"),
        ("end", at(81, 1), "pm25"),  # confirmed by the next normal reading
    ]
    assert starts_ends(events, "flatline", "aq-02") == [
        ("start", at(134, 2), "pm25"),  # the 15th identical reading
        ("end", at(160, 2), "pm25"),
    ]
    assert starts_ends(events, "dead", "aq-03") == [
        ("start", at(59, 3) + 300 * S, ""),  # 5 x 60 s after the last reading
        ("end", at(100, 3), ""),
    ]
    assert starts_ends(events, "humid_pm", "aq-04") == [
        ("start", at(134, 4), "relativeHumidity"),  # 5th message at 95 %
        ("end", at(160, 4), "relativeHumidity"),
    ]
    incident = starts_ends(events, "incident", "tc-01", 1)
    assert incident[0] == ("start", at(171, 10), "averageVehicleSpeed")  # 3 of 5
    assert incident[1][0] == "end"
    assert at(190) <= incident[1][1] <= at(195)
    congestion = starts_ends(events, "congestion", "tc-01", 1)
    assert congestion[0][0] == "start"
    assert at(170) <= congestion[0][1] <= at(175)
    assert congestion[1][0] == "end"
    # the smoothed speed (time constant ~16 min) climbs back from 25 % to 92 % of
    # free flow over ~45 min after the incident clears
    assert at(220) <= congestion[1][1] <= at(240)
    los = [e for e in events if e.detector == "level_of_service" and e.lane == 1]
    assert los
    assert los[0].labels["from"] == "A"
    # a 20 min drop to 25 % of free flow, averaged over ~16 min: class D at worst
    assert max(e.labels["to"] for e in los) == "D"
    assert starts_ends(events, "loop_intermittent", "tc-01", 2) == [
        ("start", at(141, 10), "occupancy"),
        ("end", at(145, 10), "occupancy"),
    ]
    assert starts_ends(events, "loop_constant_occupancy", "tc-01", 2) == [
        ("start", at(209.5, 10), "occupancy"),
        ("end", at(215, 10), "occupancy"),
    ]
    # nothing else: no false alarm anywhere in the stream
    fault_kinds = {"range", "spike", "flatline", "dead", "incident"}
    sources = {(e.detector, e.sensor_id, e.lane) for e in events if e.detector in fault_kinds}
    assert sources == {
        ("range", "aq-00", 0),
        ("spike", "aq-01", 0),
        ("flatline", "aq-02", 0),
        ("dead", "aq-03", 0),
        ("incident", "tc-01", 1),
    }


def test_events_carry_what_an_operator_needs() -> None:
    clock = ManualClock(T0 + 999 * S)
    suite = DetectorSuite(FAST, registry_for(), clock)
    events = suite.update(to_batch(synthetic_stream(120))).events
    spike = next(e for e in events if e.detector == "spike" and e.state == "start")
    assert spike.kind == "air"
    assert spike.city == "kota"
    assert spike.district == "d1"
    assert spike.severity.label == "warning"
    assert spike.detected_ns == T0 + 999 * S
    assert spike.score > 6
    assert spike.message.startswith("aq-01 (d1) pm25 spike: ")
    assert "sd above its recent mean" in spike.message


def test_humid_flags_pm_rows_above_threshold() -> None:
    msgs = synthetic_stream(200)
    _, _, flags = run_suite(msgs, FAST)
    want = []
    for _, _, vals in msgs:
        rh = vals.get(Metric.RELATIVE_HUMIDITY, math.nan)
        for m in sorted(vals):
            humid = m in (Metric.PM25, Metric.PM10) and rh > 70.0
            want.append(int(ReadingFlag.HUMID) if humid else 0)
    assert flags == want
    assert 0 < sum(f > 0 for f in flags) < len(flags)


def test_humid_uses_the_last_rh_within_max_age() -> None:
    det = HumidityDetector(HumidityConfig(max_rh_age_s=120.0))
    det.update(to_batch([(0, T0, {Metric.RELATIVE_HUMIDITY: 80.0})]))
    pm = {Metric.PM25: 30.0}
    _, fresh = det.update_flags(to_batch([(0, T0 + 120 * S, pm)]))
    _, stale = det.update_flags(to_batch([(0, T0 + 121 * S, pm)]))
    assert fresh.tolist() == [ReadingFlag.HUMID]
    assert stale.tolist() == [0]


def test_spike_warmup_is_honoured() -> None:
    cfg = SpikeConfig(warmup_readings=30)

    def stream(spike_at: int) -> list[Message]:
        rng = np.random.default_rng(1)
        out: list[Message] = []
        for k in range(60):
            v = 30.0 + float(rng.normal())
            out.append((0, T0 + k * MIN, {Metric.PM25: v * 10 if k == spike_at else v}))
        return out

    early = SpikeDetector(cfg).update(to_batch(stream(29)))  # the 30th reading
    late = SpikeDetector(cfg).update(to_batch(stream(30)))  # the 31st
    assert len(early) == 0
    assert late.state.tolist() == [START, END]
    assert late.ts_ns.tolist() == [T0 + 30 * MIN, T0 + 31 * MIN]


def test_spike_baseline_is_winsorised() -> None:
    det = SpikeDetector(SpikeConfig(warmup_readings=10))
    base = [(0, T0 + k * MIN, {Metric.PM25: 30.0 + (k % 3)}) for k in range(40)]
    det.update(to_batch(base))
    row = det.tables["spike"].row_of(0, Metric.PM25)
    assert row is not None
    before = float(det.tables["spike"].cols["mean"][row])
    sd = math.sqrt(max(float(det.tables["spike"].cols["var"][row]), 2.0**2))
    det.update(to_batch([(0, T0 + 40 * MIN, {Metric.PM25: 5000.0})]))
    after = float(det.tables["spike"].cols["mean"][row])
    # moved by at most alpha * winsor_z sd, not by alpha * 4970
    assert 0 < after - before <= 0.05 * 3.0 * sd + 1e-4


@pytest.mark.parametrize("ratio", [True, False])
def test_spike_downward_on_a_log_normal_signal(ratio: bool) -> None:
    # PM with 15 % multiplicative noise; one reading at 20 % of the level
    rng = np.random.default_rng(3)
    level = 40.0 * np.exp(0.15 * np.clip(rng.standard_normal(200), -3.0, 3.0))
    level[150] = 40.0 * 0.2
    msgs: list[Message] = [
        (0, T0 + k * MIN, {Metric.PM25: round(float(v), 1)}) for k, v in enumerate(level)
    ]
    cfg = SpikeConfig(ratio_down=(Metric.PM25,) if ratio else ())
    det = SpikeDetector(cfg)
    found = det.update(to_batch(msgs))
    if ratio:
        assert found.state.tolist() == [START, END]
        assert found.ts_ns.tolist()[0] == T0 + 150 * MIN
        assert found.score.tolist()[0] < -8.0  # log(0.2) / ~0.15
    else:
        assert len(found) == 0  # linearly only ~ -5 sd
    # the natural lower tail (down to exp(-0.45) = 64 %) never scores past -6
    z = SpikeDetector(cfg)
    z.update(to_batch(msgs[:100]))
    low = [(0, T0 + 100 * MIN, {Metric.PM25: 40.0 * 0.64})]
    assert float(z.score(to_batch(low))[0]) > -6.0


def test_spike_level_shift_is_not_a_spike() -> None:
    det = SpikeDetector(SpikeConfig(warmup_readings=10, max_spike_readings=2))
    msgs = [
        (0, T0 + k * MIN, {Metric.PM25: 30.0 + (k % 3) + (100 if k >= 40 else 0)})
        for k in range(80)
    ]
    assert len(det.update(to_batch(msgs))) == 0


def test_flatline_ignores_zero_intensity_but_not_stuck_counts() -> None:
    det = FlatlineDetector()
    zeros = [(6, T0 + k * 30 * S, {Metric.INTENSITY: 0.0}) for k in range(100)]
    assert len(det.update(to_batch(zeros))) == 0
    stuck = [(7, T0 + k * 30 * S, {Metric.INTENSITY: 7.0}) for k in range(100)]
    found = det.update(to_batch(stuck))
    assert found.state.tolist() == [START]
    assert found.ts_ns.tolist() == [T0 + 19 * 30 * S]  # the 20th identical reading


def test_flatline_by_duration_before_count() -> None:
    # hourly readings: the third identical reading qualifies by time (>= 30 min)
    det = FlatlineDetector()
    msgs = [(0, T0 + k * 3600 * S, {Metric.PM25: 12.0}) for k in range(4)]
    found = det.update(to_batch(msgs))
    assert found.ts_ns.tolist() == [T0 + 2 * 3600 * S]
    assert found.ref.tolist() == [7200.0]


@pytest.mark.parametrize("by_time", [2, 3])
def test_flatline_duration_rule_needs_its_minimum_of_readings(by_time: int) -> None:
    # two equal readings on both sides of a two-hour gap, then a third
    rule = FlatlineRule(15, 1800.0, min_readings_by_time=by_time)
    det = FlatlineDetector(FlatlineConfig(rules={Metric.PM25: rule}))
    msgs = [(0, T0 + t_s * S, {Metric.PM25: 12.0}) for t_s in (0, 7200, 7260)]
    found = det.update(to_batch(msgs))
    assert found.ts_ns.tolist() == [T0 + (7200 if by_time == 2 else 7260) * S]
    with pytest.raises(ValueError, match="min_readings_by_time"):
        FlatlineConfig(rules={Metric.PM25: FlatlineRule(15, 1800.0, min_readings_by_time=16)})


def test_dead_events_do_not_depend_on_check_timing() -> None:
    msgs = synthetic_stream(160)
    _, with_checks, _ = run_suite(msgs, FAST, batch_messages=40, check=True)
    _, without, _ = run_suite(msgs, FAST, batch_messages=500, check=False)

    def dead(events: Sequence[Any]) -> list[tuple[str, str, int]]:
        return [(e.sensor_id, e.state, e.event_ns) for e in events if e.detector == "dead"]

    assert dead(with_checks) == dead(without)
    assert dead(without) == [("aq-03", "start", at(64, 3)), ("aq-03", "end", at(100, 3))]


def test_dead_check_is_driven_by_the_watermark_only() -> None:
    det = DeadSensorDetector()
    det.update(to_batch([(0, T0 + k * MIN, {Metric.PM25: 1.0}) for k in range(5)]))
    last = T0 + 4 * MIN
    assert len(det.check(last + 300 * S)) == 0  # exactly at the limit: not yet
    found = det.check(last + 300 * S + 1)
    assert found.ts_ns.tolist() == [last + 300 * S]
    assert len(det.check(last + 3600 * S)) == 0  # already dead: no repeat
    back = det.update(to_batch([(0, last + 3600 * S, {Metric.PM25: 1.0})]))
    assert back.state.tolist() == [END]


def test_traffic_free_flow_is_the_offpeak_85th_percentile() -> None:
    cfg = TrafficStateConfig(min_offpeak_samples=50)
    det = TrafficStateDetector(cfg)
    speeds = np.linspace(40.0, 60.0, 200)
    # 04:00 WIB onwards: off-peak until 05:00 (120 readings), then peak hours
    msgs = [
        (6, T0 + k * 30 * S, {Metric.AVERAGE_VEHICLE_SPEED: float(speeds[k])}) for k in range(200)
    ]
    det.update(to_batch(msgs))
    offpeak = speeds[:120]
    assert det.free_flow(6) == pytest.approx(float(np.quantile(offpeak, 0.85)), abs=2.0)
    assert math.isnan(det.free_flow(7))


def test_los_class_boundaries() -> None:
    ratios = np.array([0.81, 0.80, 0.68, 0.67, 0.51, 0.5, 0.41, 0.4, 0.31, 0.3, 0.0])
    bounds = TrafficStateConfig().los_bounds
    assert los_class(ratios, bounds).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_batch_plan_splits_messages() -> None:
    msgs: list[Message] = [
        (0, T0, {Metric.PM25: 1.0, Metric.PM10: 2.0}),
        (0, T0, {Metric.PM25: 1.0}),  # same sensor and time, metric restarts
        (1, T0, {Metric.PM25: 1.0}),
        (1, T0 + S, {Metric.PM10: 1.0}),
    ]
    plan = BatchPlan.of(to_batch(msgs))
    assert plan.msg_first.tolist() == [0, 2, 3, 4]
    assert plan.n_messages == 4


def test_slot_table_moves_a_series_rows_when_it_reports_a_new_metric() -> None:
    det = SpikeDetector(SpikeConfig(warmup_readings=1))
    t = det.tables["spike"]
    det.update(to_batch([(0, T0, {Metric.PM25: 10.0}), (1, T0, {Metric.PM10: 5.0})]))
    assert t.n_rows == 2  # one row per reported metric, not per metric of the kind
    before = t.row_of(0, Metric.PM25)
    det.update(to_batch([(0, T0 + MIN, {Metric.NO2: 7.0, Metric.TEMPERATURE: 27.0})]))
    rows = [t.row_of(0, m) for m in (Metric.PM25, Metric.NO2, Metric.TEMPERATURE)]
    assert rows == [2, 3, 4]
    assert before == 0
    assert t.row_of(0, Metric.PM10) is None
    assert t.row_of(1, Metric.PM10) == 1
    # the moved state is intact: mean of one reading, count 1
    assert float(t.cols["mean"][2]) == 10.0
    assert int(t.cols["n"][2]) == 1
    assert float(t.cols["mean"][3]) == 7.0
    assert float(t.cols["mean"][4]) == 27.0


def test_kernel_buffers_grow_past_their_first_size() -> None:
    # 600 lanes each going faulty on one reading: many more detections than the
    # first buffer (16 + rows / 256) holds
    cfg = RangeConfig(start_readings=1)
    msgs: list[Message] = [(s, T0, {Metric.AVERAGE_VEHICLE_SPEED: 250.0}) for s in range(600)]
    found = RangeDetector(cfg).update(to_batch(msgs))
    assert records(found) == ref_range(msgs, cfg)[0]
    assert len(found) == 600


def test_importing_the_detectors_does_not_import_numba() -> None:
    code = "import sys, processors; assert 'numba' not in sys.modules, 'numba imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- clean simulated day


def test_clean_simulated_day_raises_no_alarm() -> None:
    start = 1_763_917_200 * S  # 2025-11-23 17:00 UTC = 00:00 WIB
    clock = ManualClock(start)
    sim = Simulator(
        SimOptions(seed=11, n_air=12, n_traffic=6, start_ns=start, duration_s=86_400.0), clock
    )
    reg = SeriesRegistry()
    decoder = NativeJsonDecoder(
        DecodeOptions(max_past_s=2 * 86_400),
        pattern=TopicPattern.compile("urbanpulse/{city}/{district}/{kind}/{sensor_id}"),
        registry=reg,
        clock=clock,
    )
    suite = DetectorSuite(None, reg, clock)
    events: list[Any] = []
    rows = 0
    now = start
    while not sim.done:
        now += 3600 * S
        msgs = sim.next_batch(now)
        clock.advance(3600)
        decoded = decoder.decode([m[0] for m in msgs], [m[1] for m in msgs], [now] * len(msgs))
        assert not decoded.dead
        rows += len(decoded.batch)
        events += suite.update(decoded.batch).events
        events += suite.check(now)
    assert rows > 100_000
    kinds = Counter(e.detector for e in events)
    alarms = {
        k: v for k, v in kinds.items() if k not in ("humid_pm", "congestion", "level_of_service")
    }
    assert alarms == {}
    # conditions are reported as episodes, not per reading
    n_lanes = sum(1 for k in reg.all_keys() if k.kind is Kind.TRAFFIC)
    assert kinds["level_of_service"] <= 10 * n_lanes
    assert kinds["humid_pm"] <= 4 * 12  # saturated nights and rain (see docs)
