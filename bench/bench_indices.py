"""Throughput of the rolling hourly means and the official indices.

    python bench/bench_indices.py [--sensors 10000] [--batches 30] [--no-docs]

Simulates ``--sensors`` air sensors in 50 districts, each sending one message of
the six pollutants per micro-batch (so a batch is ``6 * sensors`` readings, every
sensor touched), after a warm-up of 24 hours of hourly readings so that every
index has full coverage. Measures, single thread, best of ``--repeat`` runs:

* ``RollingHours.update`` alone (readings/s);
* ``IndexTracker.compute`` for all sensors (ISPU + AQI with NowCast; sensors/s);
* ``IndexTracker.update``: rolling update + indices of touched sensors + district
  aggregation + events (readings/s);
* state bytes per series.

Figures go to stdout and to ``var/bench/indices.md`` (copy into docs/performance.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _load import cpu_model, loadavg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from processors._indices import IndexTracker  # noqa: E402
from processors._rolling import HOUR_NS, RollingHours  # noqa: E402
from urbanpulse import (  # noqa: E402
    Kind,
    ManualClock,
    Metric,
    ReadingBatch,
    SeriesKey,
    SeriesRegistry,
)

POLLUTANTS = np.array(
    [Metric.PM25, Metric.PM10, Metric.NO2, Metric.O3, Metric.CO, Metric.SO2], dtype=np.uint8
)
#: typical levels (ug/m3) per pollutant, in POLLUTANTS order
LEVELS = np.array([30.0, 50.0, 40.0, 60.0, 900.0, 20.0])
T0 = 1_763_892_000 * 10**9 // HOUR_NS * HOUR_NS


def registry_of(n: int) -> SeriesRegistry:
    reg = SeriesRegistry()
    for i in range(n):
        reg.resolve(SeriesKey("bandung", f"district-{i % 50:02d}", Kind.AIR, f"air-{i:05d}"))
    return reg


def batch_at(rng: np.random.Generator, n_sensors: int, ts_ns: int) -> ReadingBatch:
    """One message of six pollutants from every sensor, within a minute of ts_ns."""
    k = POLLUTANTS.shape[0]
    ts = ts_ns + rng.integers(0, 60 * 10**9, n_sensors)
    return ReadingBatch(
        sid=np.repeat(np.arange(n_sensors, dtype=np.int32), k),
        metric=np.tile(POLLUTANTS, n_sensors),
        ts_ns=np.repeat(ts, k),
        value=(np.tile(LEVELS, n_sensors) * rng.lognormal(0.0, 0.4, n_sensors * k)),
    )


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall time and best process CPU time of ``repeat`` calls (after a warm-up);
    on a busy machine the CPU time is the fairer figure."""
    fn()
    best, best_cpu = math.inf, math.inf
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu


def machine() -> list[tuple[str, str]]:
    return [
        ("date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")),
        ("CPU", f"{os.cpu_count()} cores, {cpu_model()}"),
        ("kernel", platform.release()),
        ("python / numpy", f"{platform.python_version()} / {np.__version__}"),
        ("load average", loadavg()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    n = args.sensors
    rng = np.random.default_rng(7)
    reg = registry_of(n)

    def warm(tracker: IndexTracker) -> None:
        for h in range(24):
            tracker.update(batch_at(rng, n, T0 + h * HOUR_NS))

    tracker = IndexTracker(reg, clock=ManualClock())
    warm(tracker)
    now = T0 + 24 * HOUR_NS
    batches = [batch_at(rng, n, now + i * 60 * 10**9) for i in range(args.batches)]
    n_readings = sum(len(b) for b in batches)

    rolling = RollingHours(tracker.rolling.spec)
    for h in range(24):
        rolling.update(batch_at(rng, n, T0 + h * HOUR_NS))

    def run_rolling() -> None:
        for b in batches:
            rolling.update(b)

    def run_tracker() -> None:
        for b in batches:
            tracker.update(b)

    sids = np.arange(n)

    def run_compute() -> None:
        tracker.compute(sids)

    t_roll, c_roll = best_of(run_rolling, args.repeat)
    t_comp, c_comp = best_of(run_compute, args.repeat)
    t_track, c_track = best_of(run_tracker, args.repeat)
    per_batch = len(batches[0])
    nb = len(batches)
    rows = [
        ("RollingHours.update", "readings/s", n_readings, t_roll, c_roll, nb),
        ("IndexTracker.compute, all sensors", "sensors/s", n, t_comp, c_comp, 1),
        (
            "IndexTracker.update (rolling + indices + districts + events)",
            "readings/s",
            n_readings,
            t_track,
            c_track,
            nb,
        ),
    ]
    table = [
        f"| {what} | {count / wall:,.0f} {unit} | {count / cpu:,.0f} {unit} "
        f"| {wall / calls * 1e3:.1f} ms |"
        for what, unit, count, wall, cpu, calls in rows
    ]
    bytes_rolling = tracker.rolling.bytes_per_series
    bytes_total = tracker.state_nbytes / tracker.rolling.n_sid
    info = machine()
    lines = [
        "# Indices: rolling hourly means and ISPU / US AQI throughput",
        "",
        "Measured with `python bench/bench_indices.py` on "
        + ", ".join(f"{k} {v}" for k, v in info)
        + ". Single thread, best of "
        + f"{args.repeat} runs; {n:,} air sensors in 50 districts, six pollutants per "
        f"message, every sensor touched in every batch ({per_batch:,} readings per batch, "
        f"{len(batches)} batches), after 24 h of warm-up data. Every sensor touched in "
        "every batch is the worst case for the tracker (indices are recomputed per "
        "touched sensor). The load average shows other work sharing the cores; the "
        "process-CPU-time column is this process's own CPU and the fairer figure on a "
        "busy machine.",
        "",
        "| what | rate (wall) | rate (process CPU time) | wall per batch / call |",
        "|---|---:|---:|---:|",
        *table,
        "",
        "| state | bytes |",
        "|---|---:|",
        "| rolling rings per series (PM 24 h x2, SO2 24 h, CO/O3 8 h, NO2 1 h) "
        f"| {bytes_rolling:,} |",
        f"| whole tracker per series (rings + indices + categories) | {bytes_total:,.0f} |",
        f"| whole tracker, {n:,} sensors | {tracker.state_nbytes / 2**20:.1f} MiB |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        out = ROOT / "var" / "bench" / "indices.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
