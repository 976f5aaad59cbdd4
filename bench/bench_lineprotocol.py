# mypy: allow-untyped-calls
# (the influxdb_client Point baseline is untyped)
"""Line-protocol builder and writer throughput.

    python bench/bench_lineprotocol.py [--messages N] [--no-write] [--no-docs]

* builder: ``encode_readings`` / ``encode_aggregates`` points per second, against
  influxdb-client's ``Point`` (one object per point) on the same data in the same run;
* writers: bodies of ``--chunk`` points POSTed one after another to a real
  VictoriaMetrics (started here through ``tests/servers.py``) via the v2 path
  (influxdb-client WriteApi, ``/api/v2/write``) and the v1 path (urllib3, ``/write``).

Figures go to stdout and to ``var/bench/outputs.md`` (copy into docs/performance.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

# _load puts the repo root and tests/ on sys.path (run as a script from anywhere).
from _load import ROOT, VictoriaMetricsServer, cpu_model
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision
from numpy.typing import NDArray

from outputs import (
    InfluxV1Options,
    InfluxV1Writer,
    InfluxV2Options,
    InfluxV2Writer,
    LineWriter,
    TagCache,
    encode_aggregates,
    encode_readings,
)
from urbanpulse import (
    KIND_METRICS,
    METRIC_INFO,
    Kind,
    ReadingBatch,
    SeriesKey,
    SeriesRegistry,
)

T0 = 1_700_000_000_000_000_000


def make_data(n_messages: int, n_series: int, seed: int = 1) -> tuple[SeriesRegistry, ReadingBatch]:
    """Messages of random series; air messages carry 8 metrics, traffic ones 3."""
    rng = np.random.default_rng(seed)
    registry = SeriesRegistry()
    for i in range(n_series):
        kind = Kind.AIR if i % 3 else Kind.TRAFFIC
        registry.resolve(
            SeriesKey(
                city=["Madrid", "Zürich", "São Paulo"][i % 3],
                district=f"district {i % 40}",
                kind=kind,
                sensor_id=f"{kind.label}-{i:05d}",
                lane=(i % 4) if kind is Kind.TRAFFIC else 0,
            )
        )
    msg_sid = rng.integers(0, n_series, n_messages).astype(np.int32)
    msg_ts = T0 + np.arange(n_messages, dtype=np.int64) * 1_000_003
    kinds = np.array([int(registry.key(s).kind) for s in range(n_series)])
    metrics_by_kind = [np.array([int(m) for m in KIND_METRICS[k]], np.uint8) for k in Kind]
    per_msg = np.array([len(metrics_by_kind[k]) for k in kinds[msg_sid]])
    sid = np.repeat(msg_sid, per_msg)
    ts = np.repeat(msg_ts, per_msg)
    metric = np.concatenate([metrics_by_kind[k] for k in kinds[msg_sid]])
    value = np.round(rng.normal(40.0, 15.0, sid.shape[0]), 2)
    value[rng.random(sid.shape[0]) < 0.001] = np.nan
    flags = (rng.random(sid.shape[0]) < 0.02).astype(np.uint8) * 2
    return registry, ReadingBatch(sid=sid, metric=metric, ts_ns=ts, value=value, flags=flags)


@dataclass(frozen=True)
class Aggs:
    window_ms: int
    sid: NDArray[np.int32]
    metric: NDArray[np.uint8]
    start_ns: NDArray[np.int64]
    count: NDArray[np.int64]
    mean: NDArray[np.float64]
    min: NDArray[np.float64]
    max: NDArray[np.float64]
    std: NDArray[np.float64]
    first: NDArray[np.float64]
    last: NDArray[np.float64]


def make_aggs(registry: SeriesRegistry, n_windows: int) -> Aggs:
    sids: list[int] = []
    metrics: list[int] = []
    starts: list[int] = []
    for w in range(n_windows):
        for s in range(len(registry)):
            for m in KIND_METRICS[registry.key(s).kind]:
                sids.append(s)
                metrics.append(int(m))
                starts.append(T0 + w * 60_000_000_000)
    n = len(sids)
    rng = np.random.default_rng(2)
    mean = rng.normal(40, 10, n)
    return Aggs(
        60_000,
        np.array(sids, np.int32),
        np.array(metrics, np.uint8),
        np.array(starts, np.int64),
        rng.integers(1, 60, n),
        mean,
        mean - 5,
        mean + 5,
        rng.random(n),
        mean - 1,
        mean + 1,
    )


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def point_baseline(
    registry: SeriesRegistry, batch: ReadingBatch, max_rows: int
) -> tuple[int, float]:
    """influxdb-client Point per message (same folding and fields), to_line_protocol()."""
    sid = batch.sid[:max_rows].tolist()
    metric = batch.metric[:max_rows].tolist()
    ts = batch.ts_ns[:max_rows].tolist()
    value = batch.value[:max_rows].tolist()
    flags = batch.flags[:max_rows].tolist()
    fields = [METRIC_INFO[m].field for m in sorted(METRIC_INFO)]
    started = time.perf_counter()
    lines: list[str] = []
    point: Point | None = None
    prev: tuple[int, int, int] = (-1, -1, 99)
    flag_acc = 0
    for s, m, t, v, f in zip(sid, metric, ts, value, flags, strict=True):
        if point is None or (s, t) != prev[:2] or m <= prev[2]:
            if point is not None:
                if flag_acc:
                    point.field("flags", flag_acc)
                lines.append(point.to_line_protocol())
            key = registry.key(s)
            point = Point(key.kind.label).tag("city", key.city).tag("district", key.district)
            if key.lane:
                point.tag("lane", str(key.lane))
            point.tag("sensor_id", key.sensor_id).time(t, WritePrecision.NS)
            flag_acc = 0
        prev = (s, t, m)
        if not math.isnan(v):
            point.field(fields[m], v)
            flag_acc |= f
    if point is not None:
        lines.append(point.to_line_protocol())
    "\n".join(lines).encode()
    return len(lines), time.perf_counter() - started


def write_throughput(
    writer: LineWriter, chunks: list[bytes], points_per_chunk: list[int]
) -> tuple[float, float]:
    started = time.perf_counter()
    for body in chunks:
        writer.write(body)
    elapsed = time.perf_counter() - started
    total_points = sum(points_per_chunk)
    total_bytes = sum(len(c) for c in chunks)
    return total_points / elapsed, total_bytes / elapsed / 1e6


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"influxdb-client {version('influxdb-client')}, urllib3 {version('urllib3')}"
    )


def vm_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--series", type=int, default=3_000)
    parser.add_argument("--chunk", type=int, default=5_000, help="points per write")
    parser.add_argument("--baseline-rows", type=int, default=200_000)
    parser.add_argument("--no-write", action="store_true", help="skip the VictoriaMetrics part")
    parser.add_argument("--no-docs", action="store_true", help="do not write var/bench/outputs.md")
    args = parser.parse_args()

    registry, batch = make_data(args.messages, args.series)
    rows = len(batch)
    out: list[str] = []

    def report(line: str) -> None:
        print(line, flush=True)
        out.append(line)

    report(f"data: {args.messages:,} messages, {rows:,} rows, {args.series:,} series")

    # -- builder ------------------------------------------------------------------------
    started = time.perf_counter()
    cache = TagCache(registry)
    enc = encode_readings(batch, cache)
    cold = time.perf_counter() - started
    warm = best_of(5, lambda: encode_readings(batch, cache))
    n_base, t_base = point_baseline(registry, batch, args.baseline_rows)
    base_rate = n_base / t_base
    report("")
    report("| builder (raw readings) | points | points/s | MB/s | vs Point |")
    report("|---|---:|---:|---:|---:|")
    report(
        f"| encode_readings, cold TagCache | {enc.points:,} | {enc.points / cold:,.0f} | "
        f"{len(enc.data) / cold / 1e6:.1f} | {enc.points / cold / base_rate:.1f}x |"
    )
    report(
        f"| encode_readings, warm TagCache | {enc.points:,} | {enc.points / warm:,.0f} | "
        f"{len(enc.data) / warm / 1e6:.1f} | {enc.points / warm / base_rate:.1f}x |"
    )
    report(
        f"| influxdb_client Point + to_line_protocol | {n_base:,} | {base_rate:,.0f} | - | 1.0x |"
    )

    aggs = make_aggs(registry, 10)
    agg_enc = encode_aggregates(aggs, cache)
    t_agg = best_of(3, lambda: encode_aggregates(aggs, cache))
    report("")
    report("| builder (aggregates) | rows | points | points/s | rows/s |")
    report("|---|---:|---:|---:|---:|")
    report(
        f"| encode_aggregates, 1m windows | {len(aggs.sid):,} | {agg_enc.points:,} | "
        f"{agg_enc.points / t_agg:,.0f} | {len(aggs.sid) / t_agg:,.0f} |"
    )

    # -- writers ------------------------------------------------------------------------
    if not args.no_write:
        lines = enc.data.split(b"\n")
        chunks = [b"\n".join(lines[i : i + args.chunk]) for i in range(0, len(lines), args.chunk)]
        counts = [min(args.chunk, len(lines) - i) for i in range(0, len(lines), args.chunk)]
        report("")
        report(
            f"| write to VictoriaMetrics {vm_version()} (loopback, {args.chunk:,} points/request, "
            "sequential) | points/s, new series | points/s, existing series | MB/s |"
        )
        report("|---|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as tmp, VictoriaMetricsServer(Path(tmp)) as vm:
            cases: list[tuple[str, Callable[[], LineWriter]]] = [
                (
                    "v2: InfluxV2Writer (influxdb-client, /api/v2/write)",
                    lambda: InfluxV2Writer(InfluxV2Options(url=vm.write_url, org="o", bucket="b")),
                ),
                (
                    "v2 + gzip (client's gzip level 9)",
                    lambda: InfluxV2Writer(
                        InfluxV2Options(url=vm.write_url, org="o", bucket="b", gzip=True)
                    ),
                ),
                (
                    "v1: InfluxV1Writer (urllib3, /write)",
                    lambda: InfluxV1Writer(InfluxV1Options(url=vm.write_url, database="bench")),
                ),
                (
                    "v1 + gzip (level 1)",
                    lambda: InfluxV1Writer(
                        InfluxV1Options(url=vm.write_url, database="bench", gzip=True)
                    ),
                ),
            ]
            for case, (name, make) in enumerate(cases):
                # Own measurement names per case, so the first pass creates new series.
                own = [
                    re.sub(rb"^(air|traffic),", rb"\1_c%d," % case, c, flags=re.MULTILINE)
                    for c in chunks
                ]
                writer = make()
                writer.write(b"warmup,case=%d x=1" % case)  # connect
                new_rate, _ = write_throughput(writer, own, counts)
                rate, mbps = write_throughput(writer, own, counts)
                writer.close()
                report(f"| {name} | {new_rate:,.0f} | {rate:,.0f} | {mbps:.1f} |")
            vm.force_flush()

    if not args.no_docs:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        doc = [
            "# Outputs: line-protocol builder and writer throughput",
            "",
            f"Measured {now} with `python bench/bench_lineprotocol.py` on {machine()}.",
            "Single thread; best of several runs for the builder; the writer figures include",
            "the HTTP round trip and VictoriaMetrics ingestion on the same machine, which also",
            f"ran other work (load average {os.getloadavg()[0]:.1f} at the end): treat them as",
            "orders of magnitude, and compare rows of one table with each other.",
            "",
            *out,
            "",
        ]
        path = ROOT / "var" / "bench" / "outputs.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(doc))
        print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
