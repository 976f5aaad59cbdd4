"""Throughput and state size of the detector suite; run ``python bench/bench_detectors.py``.

A city of ``--series`` series (56 % air sensors reporting pm25, pm10,
temperature and relativeHumidity every 60 s, 44 % traffic lanes reporting
intensity, occupancy and averageVehicleSpeed every 30 s) is replayed in
micro-batches of ``--batch-s`` seconds of event time (60 s: ~49k readings for
10k series, every lane twice per batch). ``--air-metrics 8`` makes the air
sensors report all eight air metrics (reference-station-like) instead of four.
Prints:

* the whole ``DetectorSuite.update`` in readings/s (best of ``--repeat`` passes
  over ``--batches`` batches, after a warm-up hour; restoring the warmed-up
  state before each pass is not timed), the time per detector and for the
  shared ``BatchPlan``, and the CPU other processes used meanwhile (the machine
  may be shared);
* a plain-Python reading-by-reading loop of the three per-(series, metric)
  detectors (range, spike, flatline) on a subset, next to the suite's versions
  of the same three on the same rows (the plain baseline, same run);
* state bytes per series, per detector (allocated: table capacity, including
  growth slack and rows moved away from);
* the kernels' compile time in a fresh process with an empty numba cache, and
  their load time from the cache (``--no-jit-times`` skips both).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from _load import CpuMeter, cpu_model, loadavg

from processors._detect_core import BatchPlan, DetectorBase
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
from processors._jit import numba_version
from urbanpulse._batch import ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._clock import ManualClock
from urbanpulse._schema import KIND_METRICS, Kind, Metric

S = 1_000_000_000
T0 = 1_763_917_200 * S  # 00:00 WIB
AIR4 = np.array([Metric.PM25, Metric.PM10, Metric.TEMPERATURE, Metric.RELATIVE_HUMIDITY], np.uint8)
AIR8 = np.array(KIND_METRICS[Kind.AIR], np.uint8)
T = TypeVar("T")
TRAFFIC = np.array([Metric.INTENSITY, Metric.OCCUPANCY, Metric.AVERAGE_VEHICLE_SPEED], np.uint8)


class City:
    """Columns of a synthetic city, batch by batch (values with noise, no faults)."""

    def __init__(self, n_series: int, seed: int = 1, air_metrics: int = 4) -> None:
        self.air = AIR4 if air_metrics == 4 else AIR8
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
        if self.air.shape[0] == 8:  # gases (NO2, O3, CO, SO2) between PM10 and T
            gas = np.round(np.array([30.0, 40.0, 600.0, 10.0]) * rng.uniform(0.8, 1.2, (na, 4)), 1)
            air_vals = np.concatenate([air_vals[:, :2], gas, air_vals[:, 2:]], axis=1)
        w_air = self.air.shape[0]
        # messages in event-time order, rows of a message contiguous
        msg_sid = np.concatenate([a_sid, self.n_air + t_sid])
        msg_ts = np.concatenate([a_ts, t_ts])
        order = np.argsort(msg_ts, kind="stable")
        is_air = order < na
        width = np.where(is_air, w_air, 3)
        starts = np.cumsum(width) - width
        n = int(width.sum())
        sid = np.repeat(msg_sid[order], width).astype(np.int32)
        ts = np.repeat(msg_ts[order], width)
        within = np.arange(n) - np.repeat(starts, width)
        air_row = np.repeat(is_air, width)
        metric = np.where(
            air_row, self.air[np.minimum(within, w_air - 1)], TRAFFIC[np.minimum(within, 2)]
        )
        src = np.repeat(order, width)
        value = np.where(
            air_row,
            air_vals[np.minimum(src, na - 1), np.minimum(within, w_air - 1)],
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


def best_of(run: Callable[[T], object], setup: Callable[[], T], repeat: int) -> float:
    """Best wall time of ``run(setup())`` over ``repeat`` passes (setup not timed)."""
    best = math.inf
    for _ in range(repeat):
        arg = setup()
        t = time.perf_counter()
        run(arg)
        best = min(best, time.perf_counter() - t)
    return best


def machine() -> str:
    py, npv, nb = platform.python_version(), np.__version__, numba_version()
    return f"{cpu_model()}, nproc {os.cpu_count()}, Python {py}, numpy {npv}, numba {nb}"


_JIT_PROBE = """
import time
t0 = time.perf_counter()
import processors._detectors as d
t1 = time.perf_counter()
if not hasattr(d, "warm_up"):
    raise SystemExit("no compiled kernels in this tree")
print(f"{t1 - t0:.3f} {d.warm_up():.3f}")
"""


def jit_times() -> None:
    """Kernel compile time with an empty cache, then load time from it (fresh processes)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for what in ("cold (compile, empty NUMBA_CACHE_DIR)", "cached (load from the cache)"):
            done = subprocess.run(
                [sys.executable, "-c", _JIT_PROBE],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                print(f"jit: {done.stderr.strip().splitlines()[-1]}")
                return
            imp, warm = (float(x) for x in done.stdout.split())
            print(f"jit {what}: import {imp:.2f} s, first use of every kernel {warm:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--air-metrics", type=int, choices=(4, 8), default=4)
    ap.add_argument("--batch-s", type=int, default=60)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warmup-batches", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--loop-rows", type=int, default=50_000)
    ap.add_argument("--no-jit-times", action="store_true")
    args = ap.parse_args()

    city = City(args.series, air_metrics=args.air_metrics)
    span = args.batch_s * S
    warm = [city.batch(T0 + i * span, span) for i in range(args.warmup_batches)]
    timed = [city.batch(T0 + (args.warmup_batches + i) * span, span) for i in range(args.batches)]
    n_rows = sum(len(b) for b in timed)
    print(f"machine: {machine()}; load average {loadavg()}")
    print(
        f"{args.series} series ({city.n_air} air with {args.air_metrics} metrics, "
        f"{city.n_lanes} lanes), {len(timed)} batches of {args.batch_s} s, "
        f"{n_rows / len(timed):,.0f} readings/batch"
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

    def run_suite(s: DetectorSuite) -> None:
        for b in timed:
            s.update(b)

    meter = CpuMeter()
    meter.start()
    t_suite = best_of(run_suite, fresh, args.repeat)
    other = meter.other_percent()
    per_batch_ms = t_suite / len(timed) * 1e3
    print(
        f"suite update: {n_rows / t_suite / 1e6:.2f} M readings/s ({per_batch_ms:.2f} ms/batch; "
        f"other processes used {other:.0f} % of a core meanwhile)"
    )

    # per detector, with the shared plan
    plans = [BatchPlan.of(b) for b in timed]
    t_plan = best_of(lambda _: [BatchPlan.of(b) for b in timed], lambda: None, args.repeat)
    print(f"  plan            {t_plan / len(timed) * 1e3:6.2f} ms/batch")
    for i, det in enumerate(fresh().detectors):

        def run_one(d: DetectorBase) -> None:
            for b, p in zip(timed, plans, strict=True):
                if isinstance(d, HumidityDetector):
                    d.update_flags(b, p)
                else:
                    d.update(b, p)

        def setup_one(i: int = i) -> DetectorBase:
            return fresh().detectors[i]

        t_det = best_of(run_one, setup_one, args.repeat)
        print(f"  {det.name:15s} {t_det / len(timed) * 1e3:6.2f} ms/batch")

    # baseline: plain Python on a subset vs the same three detectors of the suite
    sub = ReadingBatch.concat(timed)
    k = min(args.loop_rows, len(sub))
    sub = sub.take(np.arange(k))
    cols = (sub.sid.tolist(), sub.metric.tolist(), sub.value.tolist())
    t_loop = best_of(lambda c: python_loop(*c), lambda: cols, 1)

    def three(_: None) -> None:
        p = BatchPlan.of(sub)
        for d in (RangeDetector(), SpikeDetector(), FlatlineDetector()):
            d.update(sub, p)

    t_three = best_of(three, lambda: None, args.repeat)
    print(
        f"range+spike+flatline on {k:,} rows (new state): Python loop {k / t_loop / 1e6:.3f} M/s, "
        f"suite's detectors {k / t_three / 1e6:.2f} M/s (x{t_loop / t_three:.0f})"
    )

    s = fresh()
    print(f"state: {s.state_nbytes / args.series:.0f} bytes/series (allocated, incl. growth slack)")
    for det in s.detectors:
        print(f"  {det.name:15s} {det.state_nbytes / args.series:6.1f} bytes/series")

    if not args.no_jit_times:
        jit_times()


if __name__ == "__main__":
    main()
