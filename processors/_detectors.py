"""The detector suite: every detector over the same micro-batches, as ``Event``s.

``DetectorSuite(config, registry, clock)`` computes one ``BatchPlan`` per batch
(columns and message boundaries) and runs the enabled detectors on it; each
detector is a compiled kernel (``processors._jit``; ``warm_up()`` compiles them,
or loads them from numba's cache, ahead of the first batch). Detections
stay columnar until the end and are turned into ``urbanpulse._events.Event``
objects only for the (rare) state changes, ordered by the batch row that
triggered them and then by detector (suite order below), so the event list of
a stream does not depend on how it was cut into micro-batches.
``check(watermark_ns)`` runs the time-driven part (dead sensors) without data.

Suite order and detector names (``Event.detector``):

=========================  ==========================================
detector                   events
=========================  ==========================================
``RangeDetector``          ``sensor_fault`` start/end
``SpikeDetector``          ``spike`` start/end
``FlatlineDetector``       ``flatline`` start/end
``DeadSensorDetector``     ``dead_sensor`` start/end
``HumidityDetector``       ``humid_pm`` start/end (+ ``ReadingFlag.HUMID`` flags)
``TrafficStateDetector``   ``congestion`` start/end, ``level_of_service`` change
``SpeedDropDetector``      ``speed_drop`` start/end
``LoopHealthDetector``     ``loop_intermittent``, ``loop_constant_occupancy``
=========================  ==========================================
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processors._detect_core import (
    STATE_NAMES,
    BatchPlan,
    DetectionRow,
    Detections,
    DetectorBase,
)
from processors._detect_humid import HumidityConfig, HumidityDetector
from processors._detect_sensor import (
    DeadSensorConfig,
    DeadSensorDetector,
    FlatlineConfig,
    FlatlineDetector,
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
)
from urbanpulse._batch import ReadingBatch, SeriesRegistry
from urbanpulse._clock import Clock
from urbanpulse._events import Event
from urbanpulse._schema import KIND_METRICS, Kind, Metric

__all__ = ["DetectionResult", "DetectorConfig", "DetectorSuite", "warm_up"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """One config per detector; each has ``enabled`` (and sub-flags where it has
    several outputs)."""

    sensor_fault: RangeConfig = field(default_factory=RangeConfig)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    flatline: FlatlineConfig = field(default_factory=FlatlineConfig)
    dead_sensor: DeadSensorConfig = field(default_factory=DeadSensorConfig)
    humid_pm: HumidityConfig = field(default_factory=HumidityConfig)
    traffic_state: TrafficStateConfig = field(default_factory=TrafficStateConfig)
    speed_drop: SpeedDropConfig = field(default_factory=SpeedDropConfig)
    loop_health: LoopHealthConfig = field(default_factory=LoopHealthConfig)


@dataclass(frozen=True, slots=True, eq=False)
class DetectionResult:
    events: list[Event]
    #: ``ReadingFlag`` bits per batch row (``HUMID``), to OR into the batch flags.
    flags: NDArray[np.uint8]
    #: The same detections, columnar (``det`` = index in ``DetectorSuite.names``).
    detections: Detections


def build_detectors(config: DetectorConfig) -> list[DetectorBase]:
    """All detectors of a config, in suite order (disabled ones included)."""
    return [
        RangeDetector(config.sensor_fault),
        SpikeDetector(config.spike),
        FlatlineDetector(config.flatline),
        DeadSensorDetector(config.dead_sensor),
        HumidityDetector(config.humid_pm),
        TrafficStateDetector(config.traffic_state),
        SpeedDropDetector(config.speed_drop),
        LoopHealthDetector(config.loop_health),
    ]


class DetectorSuite:
    """Runs the enabled detectors over micro-batches and converts to events."""

    def __init__(
        self, config: DetectorConfig | None, registry: SeriesRegistry, clock: Clock
    ) -> None:
        self.config = DetectorConfig() if config is None else config
        self.registry = registry
        self.clock = clock
        self.detectors = [d for d in build_detectors(self.config) if d.enabled]
        self._humid = next((d for d in self.detectors if isinstance(d, HumidityDetector)), None)

    @property
    def traffic_state(self) -> TrafficStateDetector | None:
        """The enabled free-flow / congestion / level-of-service detector, if any."""
        return next((d for d in self.detectors if isinstance(d, TrafficStateDetector)), None)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.detectors]

    def update(self, batch: ReadingBatch) -> DetectionResult:
        flags = np.zeros(len(batch), np.uint8)
        if len(batch) == 0:
            return DetectionResult([], flags, Detections.empty())
        plan = BatchPlan.of(batch)
        parts: list[Detections] = []
        for i, det in enumerate(self.detectors):
            if det is self._humid:
                found, flags = self._humid.update_flags(batch, plan)
            else:
                found = det.update(batch, plan)
            if len(found):
                parts.append(found.with_det(i))
        detections = Detections.concat(parts).sorted_by_row()
        return DetectionResult(self.to_events(detections), flags, detections)

    def check(self, watermark_ns: int) -> list[Event]:
        """Time-driven detections at the city-wide event-time watermark."""
        parts = [
            found.with_det(i)
            for i, det in enumerate(self.detectors)
            if len(found := det.check(watermark_ns))
        ]
        return self.to_events(Detections.concat(parts))

    def to_events(self, detections: Detections) -> list[Event]:
        if len(detections) == 0:
            return []
        now = self.clock.now_ns()
        events: list[Event] = []
        cols = detections.columns()
        lists = {k: v.tolist() for k, v in cols.items()}
        for i in range(len(detections)):
            key = self.registry.key(lists["sid"][i])
            m = lists["metric"][i]
            row = DetectionRow(
                key=key,
                metric=None if m < 0 else Metric(m),
                code=lists["code"][i],
                state=lists["state"][i],
                ts_ns=lists["ts_ns"][i],
                value=lists["value"][i],
                score=lists["score"][i],
                ref=lists["ref"][i],
                label=lists["label"][i],
            )
            text = self.detectors[lists["det"][i]].describe(row)
            events.append(
                Event(
                    detector=text.detector,
                    state=STATE_NAMES[row.state],
                    severity=text.severity,
                    kind=key.kind.label,
                    city=key.city,
                    district=key.district,
                    sensor_id=key.sensor_id,
                    lane=key.lane,
                    metric=row.field,
                    value=row.value,
                    score=row.score,
                    event_ns=row.ts_ns,
                    detected_ns=now,
                    message=text.message,
                    labels=text.labels,
                )
            )
        return events

    @property
    def state_nbytes(self) -> int:
        return sum(d.state_nbytes for d in self.detectors)

    def snapshot(self) -> dict[str, NDArray[Any]]:
        """Every enabled detector's state, keys ``<detector>.<table>.<column>``."""
        return {f"{d.name}.{k}": v for d in self.detectors for k, v in d.snapshot().items()}

    def restore(self, snap: Mapping[str, NDArray[Any]]) -> None:
        """Restore a snapshot of a suite with the same config and version; raises
        ValueError and changes nothing when any detector's state does not fit
        (another version's layout, another config's metrics, a detector that was
        not enabled then)."""
        parts = []
        for d in self.detectors:
            prefix = f"{d.name}."
            part = {k[len(prefix) :]: v for k, v in snap.items() if k.startswith(prefix)}
            reason = d.misfit(part)
            if reason is not None:
                raise ValueError(f"cannot restore detector state: {reason}")
            parts.append(part)
        for d, part in zip(self.detectors, parts, strict=True):
            d.restore(part)


def warm_up() -> float:
    """Compile every detector kernel (or load it from numba's on-disk cache) by
    running two tiny messages (one air sensor, one traffic lane) through fresh
    detectors of the default config; returns the seconds it took. Optional: the
    first batch does the same otherwise."""
    t0 = time.perf_counter()
    air, traffic = KIND_METRICS[Kind.AIR], KIND_METRICS[Kind.TRAFFIC]
    metric = np.array([*air, *traffic], np.uint8)
    batch = ReadingBatch(
        sid=np.array([0] * len(air) + [1] * len(traffic), np.int32),
        metric=metric,
        ts_ns=np.full(metric.shape[0], 1_763_917_200 * 1_000_000_000, np.int64),
        value=np.ones(metric.shape[0], np.float64),
    )
    plan = BatchPlan.of(batch)
    for det in build_detectors(DetectorConfig()):
        if isinstance(det, HumidityDetector):
            det.update_flags(batch, plan)
        else:
            det.update(batch, plan)
        det.snapshot()
    return time.perf_counter() - t0
