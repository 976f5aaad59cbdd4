"""Prometheus text exposition (format 0.0.4), written by hand.

The pipeline keeps plain counters (``Pipeline.snapshot_stats``, the output
stage's ``StageStats``); this module renders them, plus the two histograms the
web server observes itself (micro-batch size and processing time per batch).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Exposition", "Histogram", "render_pipeline_metrics"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


class Histogram:
    """Cumulative-bucket histogram (one observation per micro-batch, not per reading)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Exposition:
    """Collects families; ``text()`` gives the exposition body."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._seen: set[str] = set()

    def _head(self, name: str, kind: str, help_text: str) -> None:
        if name in self._seen:
            raise ValueError(f"metric family {name} rendered twice")
        self._seen.add(name)
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    @staticmethod
    def _labels(labels: Mapping[str, str]) -> str:
        if not labels:
            return ""
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        return "{" + inner + "}"

    def sample(
        self,
        name: str,
        kind: str,
        help_text: str,
        values: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        # Text format 0.0.4: a counter's family is named as its samples (``_total``).
        if kind == "counter":
            name += "_total"
        self._head(name, kind, help_text)
        for labels, value in values:
            self._lines.append(f"{name}{self._labels(labels)} {_num(value)}")

    def counter(self, name: str, help_text: str, value: float, **labels: str) -> None:
        self.sample(name, "counter", help_text, [(labels, value)])

    def gauge(self, name: str, help_text: str, value: float, **labels: str) -> None:
        self.sample(name, "gauge", help_text, [(labels, value)])

    def histogram(self, name: str, help_text: str, hist: Histogram) -> None:
        self._head(name, "histogram", help_text)
        cumulative = 0
        for bound, count in zip((*hist.bounds, math.inf), hist.counts, strict=True):
            cumulative += count
            self._lines.append(f'{name}_bucket{{le="{_num(bound)}"}} {cumulative}')
        self._lines.append(f"{name}_sum {_num(hist.sum)}")
        self._lines.append(f"{name}_count {hist.count}")

    def summary(self, name: str, help_text: str, total: float, count: int) -> None:
        self._head(name, "summary", help_text)
        self._lines.append(f"{name}_sum {_num(total)}")
        self._lines.append(f"{name}_count {count}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def render_pipeline_metrics(
    exp: Exposition,
    stats: Mapping[str, Any],
    *,
    buffered: int,
    pending_bytes: int,
    stage_healthy: bool,
    write_seconds: float,
    writes: int,
    mqtt_last_connected_ns: int | None,
) -> None:
    """The pipeline's counters and gauges (``stats`` is ``Pipeline.snapshot_stats()``)."""
    exp.counter("urbanpulse_messages_received", "MQTT messages received.", stats["received"])
    exp.counter(
        "urbanpulse_messages_decoded", "Messages decoded and accepted.", stats["messages_ok"]
    )
    exp.sample(
        "urbanpulse_messages_rejected",
        "counter",
        "Messages refused (dead letters), by reason.",
        [({"reason": r}, n) for r, n in sorted(stats["dead_letters"].items())],
    )
    exp.counter(
        "urbanpulse_messages_overflow",
        "Messages dropped because the micro-batch buffer was full.",
        stats["overflow"],
    )
    exp.counter("urbanpulse_readings", "Readings accepted.", stats["readings"])
    exp.counter(
        "urbanpulse_readings_late", "Readings after their window closed.", stats["late_readings"]
    )
    exp.counter(
        "urbanpulse_readings_implausible",
        "Readings outside their plausible range (sensor faults), kept out of the indices.",
        stats.get("implausible_readings", 0),
    )
    exp.counter(
        "urbanpulse_readings_duplicate", "Redelivered readings dropped.", stats["duplicates"]
    )
    exp.counter(
        "urbanpulse_deadletter_publish_failed",
        "Dead-letter copies that could not be published.",
        stats["deadletter_publish_failed"],
    )
    exp.counter(
        "urbanpulse_points_written", "Points written to the database.", stats["points_written"]
    )
    exp.counter(
        "urbanpulse_points_rejected", "Points the database refused.", stats["points_rejected"]
    )
    exp.counter("urbanpulse_write_retries", "Database write retries.", stats["write_retries"])
    exp.summary(
        "urbanpulse_write_seconds",
        "Time spent in database writes (sum and count; the stage keeps no distribution).",
        write_seconds,
        writes,
    )
    exp.sample(
        "urbanpulse_events",
        "counter",
        "Detector events published, by detector.",
        [({"detector": d}, n) for d, n in sorted(stats["events"].items())],
    )
    exp.gauge("urbanpulse_buffer_messages", "Messages waiting in the micro-batch buffer.", buffered)
    exp.gauge(
        "urbanpulse_stage_pending_points",
        "Points queued for the database.",
        stats["pending_points"],
    )
    exp.gauge(
        "urbanpulse_stage_pending_records",
        "Records queued for the database.",
        stats["pending_records"],
    )
    exp.gauge(
        "urbanpulse_stage_pending_bytes", "Line-protocol bytes queued in memory.", pending_bytes
    )
    exp.gauge(
        "urbanpulse_stage_healthy", "1 unless database writes are failing.", int(stage_healthy)
    )
    exp.gauge("urbanpulse_series", "Series known to the registry.", stats["series"])
    exp.gauge("urbanpulse_open_windows", "Open aggregation windows.", stats["open_windows"])
    spool = stats.get("spool")
    if spool is not None:
        exp.gauge("urbanpulse_spool_bytes", "Bytes in the write-ahead spool.", spool["bytes"])
        exp.gauge(
            "urbanpulse_spool_segments", "Segments in the write-ahead spool.", spool["segments"]
        )
        exp.gauge(
            "urbanpulse_spool_uncommitted_records",
            "Spool records not yet written to the database.",
            spool["last_seq"] - spool["committed_seq"],
        )
    if "mqtt_connected" in stats:
        exp.gauge(
            "urbanpulse_mqtt_connected",
            "1 while connected to the broker.",
            int(stats["mqtt_connected"]),
        )
        exp.counter("urbanpulse_mqtt_reconnects", "Broker reconnections.", stats["mqtt_reconnects"])
    if mqtt_last_connected_ns:
        exp.gauge(
            "urbanpulse_mqtt_last_connected_timestamp_seconds",
            "When the broker connection was last established (Unix time).",
            mqtt_last_connected_ns / 1e9,
        )
