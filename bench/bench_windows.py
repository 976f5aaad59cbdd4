"""Throughput of the tumbling-window kernels; run ``python bench/bench_windows.py``.

Prints readings/s of ``partial_aggregate`` (dense and sort paths) next to a plain
Python dict loop, of the full ``TumblingWindows.update`` / ``MultiWindows.update``
over a simulated stream, and the state cost per active series.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from numpy.typing import NDArray

from processors import (
    MultiWindows,
    TumblingWindows,
    WindowSpec,
    partial_aggregate,
    series_metric,
)
from urbanpulse import ReadingBatch

N_SERIES = 10_000
METRICS_PER_SERIES = 8  # an air sensor: pm25 .. relativeHumidity
BATCH = 100_000
T0_NS = 1_700_000_100_000_000_000  # a 15-min boundary
MINUTE_NS = 60_000_000_000


def make_batch(
    rng: np.random.Generator, start_ns: int, span_ns: int, n: int = BATCH
) -> ReadingBatch:
    """``n // 8`` messages of 8 metrics from random sensors, ts in [start, start+span)."""
    n_msg = n // METRICS_PER_SERIES
    sid = rng.integers(0, N_SERIES, n_msg).astype(np.int32)
    ts = np.sort(rng.integers(start_ns, start_ns + span_ns, n_msg))
    ts += rng.integers(-2_000_000_000, 1, n_msg)  # up to 2 s of arrival disorder
    return ReadingBatch(
        sid=np.repeat(sid, METRICS_PER_SERIES),
        metric=np.tile(np.arange(METRICS_PER_SERIES, dtype=np.uint8), n_msg),
        ts_ns=np.repeat(np.maximum(ts, start_ns), METRICS_PER_SERIES),
        value=rng.normal(20.0, 5.0, n_msg * METRICS_PER_SERIES),
    )


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, seconds (after one warm-up call)."""
    fn()
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def dict_loop(sm: NDArray[np.int64], ts: NDArray[np.int64], value: NDArray[np.float64]) -> int:
    """Baseline: the same partials (Welford + first/last) in a per-reading loop."""
    window_ns = MINUTE_NS
    acc: dict[tuple[int, int], list[float]] = {}
    for k, t, v in zip(sm.tolist(), ts.tolist(), value.tolist(), strict=True):
        key = (k, t // window_ns)
        a = acc.get(key)
        if a is None:
            acc[key] = [1, v, 0.0, v, v, t, v, t, v]
            continue
        n = a[0] + 1
        d = v - a[1]
        a[0], a[1] = n, a[1] + d / n
        a[2] += d * (v - a[1])
        a[3], a[4] = min(a[3], v), max(a[4], v)
        if t < a[5]:
            a[5], a[6] = t, v
        if t >= a[7]:
            a[7], a[8] = t, v
    return len(acc)


def bench_batch(b: ReadingBatch, span_s: int, repeat: int) -> None:
    sm = series_metric(b.sid, b.metric)
    win = b.ts_ns // MINUTE_NS
    n_win = int(win.max() - win.min() + 1)
    print(
        f"batch of {len(b):,} readings, {N_SERIES:,} series x {METRICS_PER_SERIES} metrics,"
        f" {span_s} s of event time ({n_win} windows of 1 min)"
    )
    for path in ("dense", "sort"):
        run = partial(partial_aggregate, sm, b.ts_ns, b.value, MINUTE_NS, path=path)
        s = best_of(run, repeat)
        print(
            f"  partial_aggregate {path:<5}  {len(b) / s / 1e6:7.1f} M readings/s"
            f"  ({s * 1e3:.2f} ms/batch)"
        )
    n_loop = 20_000
    s = best_of(partial(dict_loop, sm[:n_loop], b.ts_ns[:n_loop], b.value[:n_loop]), 3)
    print(f"  python dict loop        {n_loop / s / 1e6:7.2f} M readings/s")


def bench_kernels(rng: np.random.Generator, repeat: int) -> None:
    for span_s in (60, 90):
        b = make_batch(rng, T0_NS + 30 * 1_000_000_000, span_s * 1_000_000_000)
        bench_batch(b, span_s, repeat)


def stream(rng: np.random.Generator, minutes: int) -> list[ReadingBatch]:
    """Batches of 100k readings, each 10 s of event time (10k sensors every ~8 s)."""
    step_ns = 10_000_000_000
    return [make_batch(rng, T0_NS + i * step_ns, step_ns) for i in range(minutes * 6)]


def bench_update(rng: np.random.Generator, minutes: int) -> None:
    batches = stream(rng, minutes)
    n = sum(len(b) for b in batches)
    print(f"stream: {len(batches)} batches, {n:,} readings, {minutes} min of event time")
    runners: list[tuple[str, TumblingWindows | MultiWindows]] = [
        ("TumblingWindows 1 min", TumblingWindows(WindowSpec(60_000, 10_000))),
        ("MultiWindows 1+15 min", MultiWindows()),
    ]
    for name, runner in runners:
        times = []
        closed = 0
        for b in batches:
            t = time.perf_counter()
            out = runner.update(b)
            times.append(time.perf_counter() - t)
            ups = out.values() if isinstance(out, dict) else [out]
            closed += sum(len(u.closed) for u in ups)
        s = sum(times)
        p50, p99 = np.percentile(times, [50, 99]) * 1e3
        print(
            f"  {name}.update  {n / s / 1e6:6.1f} M readings/s (median batch {p50:.1f} ms,"
            f" p99 {p99:.1f} ms, max {max(times) * 1e3:.1f} ms), {closed:,} windows closed"
        )
        per_series = runner.state_nbytes / N_SERIES
        print(
            f"    state: {runner.open_windows:,} open windows"
            f" ({runner.open_windows / N_SERIES:.1f} per series), {runner.state_nbytes:,} B"
            f" = {per_series:,.0f} B per active series (incl. growth slack)"
        )


def keep_freed_memory() -> bool:
    """glibc: stop returning freed arrays to the OS (mmap threshold 32 MiB, no trim).

    Each kernel call allocates a few MB of temporaries; with the default dynamic
    thresholds glibc maps and unmaps them per call and every page faults again,
    which is expensive in a VM. Same effect as MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ in the environment.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (m_mmap_threshold, 32 << 20),
            (m_trim_threshold, 512 << 20),
            (m_top_pad, 64 << 20),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--minutes", type=int, default=30)
    args = parser.parse_args()
    for phase in ("default glibc malloc", "malloc keeps freed memory (mallopt)"):
        if phase.startswith("malloc") and not keep_freed_memory():
            print("mallopt unavailable; skipping the tuned run")
            break
        print(f"=== {phase}")
        rng = np.random.default_rng(42)
        bench_kernels(rng, args.repeat)
        bench_update(rng, args.minutes)


if __name__ == "__main__":
    main()
