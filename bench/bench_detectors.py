"""Throughput and state size of the detector suite; run ``python bench/bench_detectors.py``.

A city of ``--series`` series (56 % air sensors reporting pm25, pm10,
temperature and relativeHumidity every 60 s, 44 % traffic lanes reporting
intensity, occupancy and averageVehicleSpeed every 30 s) is replayed in
micro-batches of ``--batch-s`` seconds of event time (60 s: ~49k readings for
10k series, every lane twice per batch, so two rounds). Prints:

* the whole ``DetectorSuite.update`` in readings/s (best of ``--repeat`` passes
  over ``--batches`` batches, after a warm-up hour), and the time per detector
  and for the shared ``BatchPlan``;
* a plain-Python reading-by-reading loop of the three per-(series, metric)
  detectors (range, spike, flatline) on a subset, next to the vectorised
  versions of the same three on the same rows;
* state bytes per series, per detector.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable

import numpy as np

from processors._detect_core import BatchPlan
from processors._detect_humid import HumidityDetector
from processors._detect_sensor import (
    DEFAULT_MIN_STD,
    FLATLINE_DEFAULTS,
    PLAUSIBLE_RANGES,
    FlatlineDetector,
    RangeDetector,
    SpikeConfig,
    SpikeDetector,
)
from processors._detectors import DetectorSuite
from urbanpulse._batch import ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import ManualClock
from urbanpulse._schema import Kind, Metric

S = 1_000_000_000
T0 = 1_763_917_200 * S  # 00:00 WIB
AIR = np.array([Metric.PM25, Metric.PM10, Metric.TEMPERATURE, Metric.RELATIVE_HUMIDITY], np.uint8)
TRAFFIC = np.array([Metric.INTENSITY, Metric.OCCUPANCY, Metric.AVERAGE_VEHICLE_SPEED], np.uint8)


class City:
    """Columns of a synthetic city, batch by batch (values with noise, no faults)."""

    def __init__(self, n_series: int, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_air = round(n_series * 0.56)
        self.n_lanes = n_series - self.n_air
        self.air_phase = self.rng.integers(0, 60 * S, self.n_air)
        self.lane_phase = self.rng.integers(0, 30 * S, self.n_lanes)
        self.pm = self.rng.uniform(20, 50, self.n_air)
        self.v_free = self.rng.uniform(40, 60, self.n_lanes)

    def registry(self) -> SeriesRegistry:
        reg = SeriesRegistry()
        for i in range(self.n_air):
            reg.resolve(SeriesKey("kota", f"d{i % 30}", Kind.AIR, f"aq-{i:05d}"))
        for i in range(self.n_lanes):
            reg.resolve(
                SeriesKey("kota", f"d{i % 30}", Kind.TRAFFIC, f"tc-{i // 2:05d}", i % 2 + 1)
            )
        return reg

    def batch(self, start_ns: int, span_ns: int) -> ReadingBatch:
        rng = self.rng
        # air: one message per sensor per 60 s inside [start, start + span)
        k_air = np.arange(span_ns // (60 * S))
        a_sid = np.repeat(np.arange(self.n_air), k_air.shape[0])
        a_ts = start_ns + self.air_phase[a_sid] + np.tile(k_air, self.n_air) * 60 * S
        k_tr = np.arange(span_ns // (30 * S))
        t_sid = np.repeat(np.arange(self.n_lanes), k_tr.shape[0])
        t_ts = start_ns + self.lane_phase[t_sid] + np.tile(k_tr, self.n_lanes) * 30 * S
        na, nt = a_sid.shape[0], t_sid.shape[0]
        pm = np.round(self.pm[a_sid] * np.exp(0.15 * rng.standard_normal(na)), 1)
        air_vals = np.stack(
            [
                pm,
                np.round(pm * 1.5, 1),
                np.round(27 + 0.3 * rng.standard_normal(na), 2),
                np.round(75 + 2 * rng.standard_normal(na), 1),
            ],
            axis=1,
        )
        speed = np.round(self.v_free[t_sid] * np.exp(0.05 * rng.standard_normal(nt)), 1)
        tr_vals = np.stack(
            [
                rng.poisson(8, nt).astype(np.float64),
                np.round(0.08 * np.exp(0.1 * rng.standard_normal(nt)), 3),
                speed,
            ],
            axis=1,
        )
        # messages in event-time order, rows of a message contiguous
        msg_sid = np.concatenate([a_sid, self.n_air + t_sid])
        msg_ts = np.concatenate([a_ts, t_ts])
        order = np.argsort(msg_ts, kind="stable")
        is_air = order < na
        width = np.where(is_air, 4, 3)
        starts = np.cumsum(width) - width
        n = int(width.sum())
        sid = np.repeat(msg_sid[order], width).astype(np.int32)
        ts = np.repeat(msg_ts[order], width)
        within = np.arange(n) - np.repeat(starts, width)
        air_row = np.repeat(is_air, width)
        metric = np.where(air_row, AIR[np.minimum(within, 3)], TRAFFIC[np.minimum(within, 2)])
        src = np.repeat(order, width)
        value = np.where(
            air_row,
            air_vals[np.minimum(src, na - 1), np.minimum(within, 3)],
            tr_vals[np.maximum(src - na, 0), np.minimum(within, 2)],
        )
        return ReadingBatch(sid=sid, metric=metric.astype(np.uint8), ts_ns=ts, value=value)


def python_loop(sid: list[int], metric: list[int], value: list[float]) -> int:
    """Range + spike + flatline, reading by reading, dict state (the baseline)."""
    cfg = SpikeConfig()
    state: dict[tuple[int, int], list[float]] = {}
    events = 0
    for s, m, x in zip(sid, metric, value, strict=True):
        st = state.get((s, m))
        if st is None:
            st = state[(s, m)] = [0.0, 0.0, 0.0, 0.0, math.nan, 0.0, 0.0]
        # range
        lo, hi = PLAUSIBLE_RANGES.get(Metric(m), (-math.inf, math.inf))
        if (x < lo or x > hi) and st[6] == 0:
            events += 1
            st[6] = 1
        # spike
        mu, var, n = st[0], st[1], st[2]
        sd = math.sqrt(max(var, DEFAULT_MIN_STD[Metric(m)] ** 2))
        z = (x - mu) / sd
        warm = n >= cfg.warmup_readings
        if warm and abs(z) > cfg.threshold_z:
            events += 1
        xc = min(max(x, mu - 3 * sd), mu + 3 * sd) if warm else x
        a = max(cfg.alpha, 1 / (n + 1))
        av = max(cfg.alpha_var, 1 / (n + 1))
        d = xc - mu
        st[0], st[1], st[2] = mu + a * d, (1 - av) * (var + av * d * d), n + 1
        # flatline
        rule = FLATLINE_DEFAULTS.get(Metric(m))
        if rule is not None:
            if x == st[4]:
                st[5] += 1
                if st[5] == rule.min_readings:
                    events += 1
            else:
                st[4], st[5] = x, 1
    return events


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), "?"
        )
    except OSError:
        model = "?"
    py, npv = platform.python_version(), np.__version__
    return f"{model}, nproc {os.cpu_count()}, Python {py}, numpy {npv}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--batch-s", type=int, default=60)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warmup-batches", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loop-rows", type=int, default=50_000)
    args = ap.parse_args()

    city = City(args.series)
    span = args.batch_s * S
    warm = [city.batch(T0 + i * span, span) for i in range(args.warmup_batches)]
    timed = [city.batch(T0 + (args.warmup_batches + i) * span, span) for i in range(args.batches)]
    n_rows = sum(len(b) for b in timed)
    print(f"machine: {machine()}")
    print(
        f"{args.series} series ({city.n_air} air, {city.n_lanes} lanes), "
        f"{len(timed)} batches of {args.batch_s} s, {n_rows / len(timed):,.0f} readings/batch"
    )

    clock = ManualClock(T0)
    reg = city.registry()
    base = DetectorSuite(None, reg, clock)
    for b in warm:
        base.update(b)
    snap = base.snapshot()

    def fresh() -> DetectorSuite:
        s = DetectorSuite(None, reg, clock)
        s.restore(snap)
        return s

    def run_suite() -> None:
        s = fresh()
        for b in timed:
            s.update(b)

    t_suite = best_of(run_suite, args.repeat)
    per_batch_ms = t_suite / len(timed) * 1e3
    print(f"suite update: {n_rows / t_suite / 1e6:.2f} M readings/s ({per_batch_ms:.1f} ms/batch)")

    # per detector, with the shared plan
    plans = [BatchPlan.of(b) for b in timed]
    t_plan = best_of(lambda: [BatchPlan.of(b) for b in timed], args.repeat)
    print(f"  plan            {t_plan / len(timed) * 1e3:6.2f} ms/batch")
    for i, det in enumerate(fresh().detectors):

        def run_one(i: int = i) -> None:
            d = fresh().detectors[i]
            for b, p in zip(timed, plans, strict=True):
                if isinstance(d, HumidityDetector):
                    d.update_flags(b, p)
                else:
                    d.update(b, p)

        t_det = best_of(run_one, args.repeat)
        print(f"  {det.name:15s} {t_det / len(timed) * 1e3:6.2f} ms/batch")

    # baseline: plain Python on a subset vs the same three detectors vectorised
    sub = ReadingBatch.concat(timed)
    k = min(args.loop_rows, len(sub))
    sub = sub.take(np.arange(k))
    cols = (sub.sid.tolist(), sub.metric.tolist(), sub.value.tolist())
    t_loop = best_of(lambda: python_loop(*cols), 1)

    def three() -> None:
        p = BatchPlan.of(sub)
        for d in (RangeDetector(), SpikeDetector(), FlatlineDetector()):
            d.update(sub, p)

    t_three = best_of(three, args.repeat)
    print(
        f"range+spike+flatline on {k:,} rows: Python loop {k / t_loop / 1e6:.3f} M/s, "
        f"vectorised {k / t_three / 1e6:.2f} M/s (x{t_loop / t_three:.0f})"
    )

    s = fresh()
    print(f"state: {s.state_nbytes / args.series:.0f} bytes/series (allocated, incl. growth slack)")
    for det in s.detectors:
        print(f"  {det.name:15s} {det.state_nbytes / args.series:6.1f} bytes/series")


if __name__ == "__main__":
    main()
