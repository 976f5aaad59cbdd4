"""The message schedule (``Simulator``) and the paced publishing loop.

Event time and wall time
------------------------
Every stream (air sensor or traffic lane) reports at event times
``phase + k * interval``. Event time runs ``speed`` times faster than wall time
from ``start_ns``: a message with event time ``t`` is due ``(t - start_ns) /
speed`` seconds after the run started.

* ``rate_per_s=None`` (realistic): each stream keeps its nominal interval
  (air 60 s, traffic 30 s) and its phase (aligned to the epoch, so a sensor
  keeps its phase whatever the start time). Wall rate = ``speed x sum(1 /
  interval)``.
* ``rate_per_s=R``: every stream gets the interval ``n_streams x speed / R``
  (event seconds), phases spread evenly, so the wall rate is exactly ``R``.
  ``speed`` then only stretches event time. Traffic ``intensity`` is still the
  count over the nominal 30 s period.

The message sequence is a pure function of the options (``start_ns`` must be
given, or the clock fixed, for byte-identical runs): pacing only decides
*when* a message is sent, never what it contains. ``count`` caps the number
of messages; ``duration_s`` caps the schedule at event time ``start_ns +
duration_s x speed`` (i.e. ``duration_s`` of wall time when the publisher keeps
up).

Pacing
------
Deadline pacing, the token-bucket form where tokens are the messages already
due: every tick (~10 ms) the loop publishes everything due by now as one
batch, then sleeps until the next message is due (at least one tick). If the
publisher falls behind by more than ``max_lag_s`` (the bucket's depth), the
schedule is shifted instead of bursting to catch up; ``SimStats.behind_s``
reports the total shift, and the achieved rate drops below the target.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from sim._cities import bundled_cities, city_fleet, load_city
from sim._faults import FaultPlan, compile_scenario
from sim._fleet import CITIES, MODEL_REFERENCE, Fleet, derive, unit_uniform
from sim._groundtruth import EXPECTED_DETECTORS, Label
from sim._payloads import (
    PAYLOAD_FORMATS,
    PayloadFormat,
    TimestampFormat,
    airrohr_chip_ids,
    codec_rules_for,
    encode_air,
    encode_air_airrohr,
    encode_air_senml,
    encode_air_ttn,
    encode_traffic,
    format_streams,
    format_topics,
    object_array,
    radio_noise,
    wire_sensor_ids,
)
from sim._scenario import Scenario, load_scenario
from sim._values import AirColumns, ValueModel
from urbanpulse._clock import Clock
from urbanpulse._errors import ConfigError
from urbanpulse._schema import Kind

__all__ = [
    "MessageSource",
    "Publisher",
    "SimOptions",
    "SimProgress",
    "SimStats",
    "Simulator",
    "SleepFn",
    "pace",
    "resolve_fleet",
    "run_simulation",
]

SleepFn = Callable[[float], Awaitable[None]]
Message = tuple[str, bytes]


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None: ...

    async def flush(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    seed: int = 0
    n_air: int = 100
    #: Traffic stations (sensor ids); each has 1 or 2 lanes = message streams.
    n_traffic: int = 50
    city: str = "bandung"
    prefix: str = "urbanpulse"
    qos: int = 0
    #: Target wall-clock rate; None = realistic per-sensor intervals.
    rate_per_s: float | None = None
    #: Event time runs this many times faster than wall time.
    speed: float = 1.0
    #: Event time of the start (floored to ms); None = the clock's now.
    start_ns: int | None = None
    count: int | None = None
    duration_s: float | None = None
    ts_format: TimestampFormat = "epoch_s"
    air_interval_s: float = 60.0
    traffic_interval_s: float = 30.0
    #: Share of air sensors that are full reference stations.
    reference_fraction: float = 0.2
    #: A city file (TOML/JSON, see ``sim._cities``); it decides the sensors, so
    #: ``n_air``, ``n_traffic``, ``city`` and the intervals are then ignored.
    #: ``city`` may also name a bundled city file (``sindangraja``, ...).
    city_file: str | None = None
    #: A scenario file (see ``sim._scenario``): faults applied to the run.
    scenario_file: str | None = None
    #: What air sensors send: native JSON or a commodity format (``sim._payloads``;
    #: ``codec_rules_for`` gives the ingest rules that decode it). Traffic stays native.
    payload_format: PayloadFormat = "native"

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"qos must be 0, 1 or 2, got {self.qos}")
        if not self.prefix or any(c in self.prefix for c in "+#") or self.prefix[0] == "/":
            raise ConfigError(f"prefix {self.prefix!r} must be a non-empty topic without wildcards")
        if self.prefix.endswith("/"):
            raise ConfigError(f"prefix {self.prefix!r} must not end with '/'")
        if self.rate_per_s is not None and not (0 < self.rate_per_s < math.inf):
            raise ConfigError(f"rate_per_s must be positive, got {self.rate_per_s}")
        if not (0 < self.speed < math.inf):
            raise ConfigError(f"speed must be positive, got {self.speed}")
        if self.count is not None and self.count < 0:
            raise ConfigError(f"count must be >= 0, got {self.count}")
        if self.duration_s is not None and not (0 < self.duration_s < math.inf):
            raise ConfigError(f"duration_s must be positive, got {self.duration_s}")
        if self.ts_format not in ("epoch_s", "iso"):
            raise ConfigError(f"ts_format must be 'epoch_s' or 'iso', got {self.ts_format!r}")
        if self.payload_format not in PAYLOAD_FORMATS:
            raise ConfigError(
                f"payload_format must be one of {', '.join(PAYLOAD_FORMATS)}, "
                f"got {self.payload_format!r}"
            )


@dataclass(frozen=True, slots=True)
class SimProgress:
    sent: int
    elapsed_s: float
    #: Achieved rate since the previous report.
    rate_per_s: float
    #: Achieved rate since the start.
    mean_rate_per_s: float
    #: Event time of the last message sent (0 before the first).
    event_ns: int


@dataclass(frozen=True, slots=True)
class SimStats:
    sent: int
    duration_s: float
    rate_per_s: float
    #: The schedule's nominal wall-clock rate.
    target_rate_per_s: float
    #: How far the schedule was shifted because the publisher fell behind.
    behind_s: float


def resolve_fleet(options: SimOptions) -> Fleet:
    """The fleet of a set of options: a city file, a bundled city, or a built-in city."""
    o = options
    if o.city_file is not None:
        return city_fleet(load_city(o.city_file), seed=o.seed)
    bundled = bundled_cities()
    if o.city not in CITIES and o.city in bundled:
        return city_fleet(load_city(bundled[o.city]), seed=o.seed)
    return Fleet.generate(
        seed=o.seed,
        n_air=o.n_air,
        n_traffic=o.n_traffic,
        city=o.city,
        air_interval_s=o.air_interval_s,
        traffic_interval_s=o.traffic_interval_s,
        reference_fraction=o.reference_fraction,
    )


class Simulator:
    """The deterministic message schedule of a set of options (no I/O, no sleeping).

    ``fleet`` replaces the fleet the options describe; ``scenario`` (or
    ``options.scenario_file``) injects faults, and :attr:`labels` is their
    ground truth. ``expected`` maps fault kinds to detector names.
    """

    def __init__(
        self,
        options: SimOptions,
        clock: Clock,
        *,
        fleet: Fleet | None = None,
        scenario: Scenario | None = None,
        expected: Mapping[str, tuple[str, ...]] = EXPECTED_DETECTORS,
    ) -> None:
        o = options
        self.options = o
        self.fleet = resolve_fleet(o) if fleet is None else fleet
        self._values = ValueModel(self.fleet)
        start = clock.now_ns() if o.start_ns is None else o.start_ns
        self.start_ns: int = start - start % 1_000_000
        n = self.fleet.n_streams
        if o.rate_per_s is None:
            interval = self.fleet.interval_ns.copy()
            first = self.start_ns + (self.fleet.phase_ns - self.start_ns) % interval
        else:
            interval_ns = round(n * o.speed * 1e9 / o.rate_per_s)
            if interval_ns < 1_000_000:
                raise ConfigError(
                    f"rate_per_s={o.rate_per_s} over {n} streams at speed {o.speed} gives each "
                    f"stream an event-time interval under 1 ms (timestamps would collide): "
                    f"add sensors or raise speed"
                )
            interval = np.full(n, interval_ns, dtype=np.int64)
            first = self.start_ns + (np.arange(n, dtype=np.int64) * interval_ns) // n
        self._interval: NDArray[np.int64] = interval.astype(np.int64)
        self._next: NDArray[np.int64] = first.astype(np.int64)
        if scenario is None and o.scenario_file is not None:
            scenario = load_scenario(o.scenario_file)
        self.plan: FaultPlan | None = None
        if scenario is not None:
            self.plan = compile_scenario(
                scenario,
                self.fleet,
                start_ns=self.start_ns,
                first_slot_ns=self._next.copy(),
                interval_ns=self._interval,
                values=self._values,
                expected=expected,
            )
        self.end_ns: int | None = (
            None if o.duration_s is None else self.start_ns + round(o.duration_s * o.speed * 1e9)
        )
        self._remaining = o.count
        fmt = o.payload_format
        self._topics = np.array(format_topics(self.fleet, fmt, o.prefix), dtype=object)
        self._is_air = self.fleet.kind == Kind.AIR
        #: Streams sending ``payload_format`` (the others send native JSON).
        self._in_format = format_streams(self.fleet, fmt)
        self._wire: dict[str, str] = {}
        self._stream_text: dict[str, NDArray[np.object_]] = {}
        self._setup_format(fmt)
        self._full = self.fleet.model == MODEL_REFERENCE
        self._streams = np.arange(n, dtype=np.intp)
        #: Messages produced so far and the event time of the last one.
        self.emitted = 0
        self.last_event_ns = 0

    def _setup_format(self, fmt: PayloadFormat) -> None:
        """Per-stream texts and radio parameters of the payload format."""
        fleet = self.fleet
        key = fleet.stream_key
        text = self._stream_text
        self._base_rssi: NDArray[np.float64] = np.zeros(fleet.n_streams)
        self._base_battery: NDArray[np.float64] = np.zeros(fleet.n_streams)
        if fmt == "senml":
            text["bn"] = object_array([f"urn:dev:urbanpulse:{s}:" for s in fleet.sensor_id])
        elif fmt == "airrohr":
            text["chip"] = object_array(airrohr_chip_ids(fleet))
            wire = wire_sensor_ids(fleet, fmt)
            self._wire = {a: b for a, b in zip(fleet.sensor_id, wire, strict=True) if a != b}
            # WiFi RSSI -85..-50 dBm per node.
            self._base_rssi[:] = np.rint(-85.0 + 35.0 * unit_uniform(derive(key, 903)))
        elif fmt == "ttn":
            text["device"] = object_array(list(fleet.sensor_id))
            text["app"] = object_array(
                [f"{fleet.city}-{fleet.district(i)}" for i in range(fleet.n_streams)]
            )
            text["gateway"] = object_array(
                [f"gw-{fleet.district(i)}" for i in range(fleet.n_streams)]
            )
            eui = (derive(key, 905) & np.uint64(0xFFFFFF)).tolist()
            text["eui"] = object_array([f"70B3D57ED0{e:06X}" for e in eui])
            # LoRa RSSI -118..-75 dBm per node; a healthy Li-ion cell 3.95-4.15 V.
            self._base_rssi[:] = np.rint(-118.0 + 43.0 * unit_uniform(derive(key, 903)))
            self._base_battery[:] = 3.95 + 0.2 * unit_uniform(derive(key, 904))

    @property
    def labels(self) -> tuple[Label, ...]:
        """Ground truth of the scenario (empty without one), in scenario order.

        Sensor ids are those the pipeline sees (``esp8266-<chip>`` for airrohr nodes).
        """
        if self.plan is None:
            return ()
        if not self._wire:
            return self.plan.labels
        wire = self._wire
        return tuple(
            replace(lb, sensor_id=wire.get(lb.sensor_id, lb.sensor_id)) for lb in self.plan.labels
        )

    def codec_rules(self) -> list[dict[str, Any]]:
        """The ``[[ingest.codecs]]`` rules that decode this run (``codec_rules_for``)."""
        return codec_rules_for(self.options.payload_format, self.fleet.city, self.fleet.districts)

    def wire_sensor_ids(self) -> list[str]:
        """Per stream, the sensor id the pipeline sees."""
        return wire_sensor_ids(self.fleet, self.options.payload_format)

    @property
    def event_rate_per_s(self) -> float:
        """Messages per second of event time."""
        return float(np.sum(1e9 / self._interval.astype(np.float64)))

    @property
    def nominal_rate_per_s(self) -> float:
        """Messages per second of wall time when the publisher keeps up."""
        return self.event_rate_per_s * self.options.speed

    def next_event_ns(self) -> int | None:
        """Event time of the next message, or None when the schedule is over."""
        if self._remaining == 0:
            return None
        t = int(self._next.min())
        if self.end_ns is not None and t >= self.end_ns:
            return None
        return t

    @property
    def done(self) -> bool:
        return self.next_event_ns() is None

    def due_s(self, event_ns: int) -> float:
        """Wall seconds after the start at which a message of this event time is due."""
        return (event_ns - self.start_ns) / 1e9 / self.options.speed

    def next_batch(self, until_ns: int) -> list[Message]:
        """Every not yet emitted message with event time < ``until_ns``, in event-time order.

        Ties (same ms) are ordered by stream (air sensors, then traffic lanes).
        With a scenario, "event time" is the nominal slot: jitter and clock skew
        move the payload's timestamp, and dropouts leave slots empty.
        """
        return self._take(until_ns, None)

    def messages(self, n: int) -> list[Message]:
        """The next ``n`` messages (fewer if count/duration end the schedule first)."""
        out: list[Message] = []
        rate = self.event_rate_per_s
        max_interval = int(self._interval.max())
        while len(out) < n:
            nxt = self.next_event_ns()
            if nxt is None:
                break
            need = n - len(out)
            if self._remaining is not None:
                need = min(need, self._remaining)
            horizon = nxt + math.ceil(need / rate * 1e9) + max_interval
            out.extend(self._take(horizon, need))
        return out

    def _take(self, until_ns: int, limit: int | None) -> list[Message]:
        if self.end_ns is not None:
            until_ns = min(until_ns, self.end_ns)
        if self._remaining is not None:
            limit = self._remaining if limit is None else min(limit, self._remaining)
        if limit == 0:
            return []
        per_stream = np.maximum(-((self._next - until_ns) // self._interval), 0)
        total = int(per_stream.sum())
        if total == 0:
            return []
        sid = np.repeat(self._streams, per_stream)
        k = np.arange(total, dtype=np.int64) - np.repeat(
            np.cumsum(per_stream) - per_stream, per_stream
        )
        t = self._next[sid] + k * self._interval[sid]
        order = np.argsort(t, kind="stable")
        sid = sid[order]
        t = t[order]
        plan = self.plan
        keep: NDArray[np.bool_] | None = None
        if plan is None:
            if limit is not None and total > limit:
                sid, t = sid[:limit], t[:limit]
            reading = t - t % 1_000_000
        else:
            # With a scenario: slots inside a dropout are consumed but send nothing,
            # and count/limit apply to what is sent.
            # Look at no more slots than needed: the first `limit`, more if some are dropped.
            look = total if limit is None else min(total, limit)
            while True:
                nominal = t[:look] - t[:look] % 1_000_000
                reading = plan.reading_ns(sid[:look], nominal)
                keep = plan.kept(sid[:look], reading)
                kept = int(keep.sum())
                if limit is None or kept >= limit or look == total:
                    break
                look = min(total, 2 * look + (limit - kept))
            sid, t = sid[:look], t[:look]
            if limit is not None and kept > limit:
                cut = int(np.searchsorted(np.cumsum(keep), limit, side="left")) + 1
                sid, t, reading, keep = sid[:cut], t[:cut], reading[:cut], keep[:cut]
        self._next += np.bincount(sid, minlength=self._next.shape[0]) * self._interval
        self.last_event_ns = int(t[-1])
        if keep is not None:
            sid, reading = sid[keep], reading[keep]
        m = int(sid.shape[0])
        self.emitted += m
        if self._remaining is not None:
            self._remaining -= m
        return self._encode(sid, reading)

    def _encode(self, sid: NDArray[np.intp], ts_ns: NDArray[np.int64]) -> list[Message]:
        """Payloads of readings taken at ``ts_ns`` (faults applied, skew in the stamp)."""
        fmt = self.options.ts_format
        plan = self.plan
        stamp = ts_ns if plan is None else plan.stamps(sid, ts_ns)
        payloads = np.empty(sid.shape[0], dtype=object)
        air = self._is_air[sid]
        ai = np.flatnonzero(air)
        if ai.shape[0]:
            s, t = sid[ai], ts_ns[ai]
            full = self._full[s]
            air_values = self._values.air(s, t, gases=full)
            if plan is not None:
                plan.apply_air(s, t, air_values)
            other = self._in_format[s]
            native = np.flatnonzero(~other)
            if native.shape[0] == s.shape[0]:
                payloads[ai] = object_array(
                    encode_air(stamp[ai], air_values, full=full, ts_format=fmt)
                )
            else:
                if native.shape[0]:
                    payloads[ai[native]] = object_array(
                        encode_air(
                            stamp[ai[native]],
                            _rows(air_values, native),
                            full=full[native],
                            ts_format=fmt,
                        )
                    )
                sel = np.flatnonzero(other)
                payloads[ai[sel]] = object_array(
                    self._encode_format(s[sel], t[sel], stamp[ai[sel]], _rows(air_values, sel))
                )
        ti = np.flatnonzero(~air)
        if ti.shape[0]:
            s, t = sid[ti], ts_ns[ti]
            trf_values = self._values.traffic(s, t)
            if plan is not None:
                plan.apply_traffic(s, t, trf_values)
            payloads[ti] = object_array(
                encode_traffic(stamp[ti], trf_values, lane=self.fleet.lane[s], ts_format=fmt)
            )
        return list(zip(self._topics[sid].tolist(), payloads.tolist(), strict=True))

    def _encode_format(
        self,
        s: NDArray[np.intp],
        t: NDArray[np.int64],
        stamp: NDArray[np.int64],
        values: AirColumns,
    ) -> list[bytes]:
        """Air payloads in ``options.payload_format`` (not native) of streams ``s``."""
        fmt = self.options.payload_format
        text = self._stream_text
        full = self._full[s]
        if fmt == "senml":
            return encode_air_senml(stamp, values, full=full, base_names=text["bn"][s].tolist())
        noise = radio_noise(self.fleet, s, t)
        jitter = np.rint(noise * 7.0 - 3.5).astype(np.int64)  # +-3 dB
        rssi = np.minimum(self._base_rssi[s].astype(np.int64) + jitter, -1)
        if fmt == "airrohr":
            return encode_air_airrohr(values, chip_ids=text["chip"][s].tolist(), signal_dbm=rssi)
        battery = self._base_battery[s] - 0.0005 * noise
        if self.plan is not None:
            weak = self.plan.power_weak(s, t)
            # A failing cell under load: 3.30-3.45 V.
            battery = np.where(weak, 3.30 + 0.15 * noise, battery)
        snr = np.clip((rssi + 120.0) / 4.0 + noise * 2.0 - 1.0, -7.0, 11.0)
        # The network's receive time: the reading time, without the device's clock skew.
        return encode_air_ttn(
            t,
            values,
            full=full,
            device_ids=text["device"][s].tolist(),
            application_ids=text["app"][s].tolist(),
            dev_euis=text["eui"][s].tolist(),
            gateway_ids=text["gateway"][s].tolist(),
            battery_v=battery,
            rssi_dbm=rssi,
            snr_db=snr,
        )


def _rows(values: AirColumns, idx: NDArray[np.intp]) -> AirColumns:
    return AirColumns(
        pm25=values.pm25[idx],
        pm10=values.pm10[idx],
        no2=values.no2[idx],
        o3=values.o3[idx],
        co=values.co[idx],
        so2=values.so2[idx],
        temperature=values.temperature[idx],
        relative_humidity=values.relative_humidity[idx],
    )


class MessageSource(Protocol):
    """What the pacing loop needs of a schedule (``Simulator``, ``sim.Replayer``)."""

    @property
    def start_ns(self) -> int: ...

    @property
    def last_event_ns(self) -> int: ...

    @property
    def nominal_rate_per_s(self) -> float: ...

    def next_event_ns(self) -> int | None: ...

    def next_batch(self, until_ns: int) -> list[Message]: ...


async def run_simulation(
    options: SimOptions,
    publisher: Publisher,
    clock: Clock,
    progress: Callable[[SimProgress], None] | None = None,
    *,
    sleep: SleepFn = asyncio.sleep,
    tick_s: float = 0.01,
    max_lag_s: float = 0.5,
    progress_interval_s: float = 1.0,
    stop: asyncio.Event | None = None,
    simulator: Simulator | None = None,
) -> SimStats:
    """Publish the schedule of ``options`` at its pace; return when it ends or ``stop`` is set.

    ``sleep`` is awaited between ticks (inject a fake that advances a
    ManualClock in tests). ``progress`` is called every ``progress_interval_s``
    and once at the end. The publisher is flushed before returning.
    ``simulator`` (built from ``options``, e.g. with a fleet or scenario) is
    used instead of a fresh ``Simulator(options, clock)``.
    """
    sim = Simulator(options, clock) if simulator is None else simulator
    return await pace(
        sim,
        publisher,
        clock,
        progress,
        qos=options.qos,
        speed=options.speed,
        duration_s=options.duration_s,
        sleep=sleep,
        tick_s=tick_s,
        max_lag_s=max_lag_s,
        progress_interval_s=progress_interval_s,
        stop=stop,
    )


async def pace(
    sim: MessageSource,
    publisher: Publisher,
    clock: Clock,
    progress: Callable[[SimProgress], None] | None = None,
    *,
    qos: int = 0,
    speed: float = 1.0,
    duration_s: float | None = None,
    sleep: SleepFn = asyncio.sleep,
    tick_s: float = 0.01,
    max_lag_s: float = 0.5,
    progress_interval_s: float = 1.0,
    stop: asyncio.Event | None = None,
) -> SimStats:
    """Publish a schedule's messages when due (event time / ``speed``), see the module doc.

    ``duration_s`` holds the run open until that much wall time has passed.
    """
    t0 = clock.monotonic_s()
    shift = 0.0
    sent = 0
    report_t, report_sent = t0, 0

    def report(now: float) -> None:
        nonlocal report_t, report_sent
        if progress is None:
            return
        dt = now - report_t
        elapsed = now - t0
        progress(
            SimProgress(
                sent=sent,
                elapsed_s=elapsed,
                rate_per_s=(sent - report_sent) / dt if dt > 0 else 0.0,
                mean_rate_per_s=sent / elapsed if elapsed > 0 else 0.0,
                event_ns=sim.last_event_ns,
            )
        )
        report_t, report_sent = now, sent

    def schedule_ns(now: float) -> int:
        """Event-time offset (from start_ns) the schedule has reached at ``now``."""
        return round((now - t0 - shift) * speed * 1e9)

    max_lag_ns = round(max_lag_s * speed * 1e9)
    while stop is None or not stop.is_set():
        nxt = sim.next_event_ns()
        if nxt is None:
            break
        reached = schedule_ns(clock.monotonic_s())
        behind_ns = reached - (nxt - sim.start_ns)
        if behind_ns > max_lag_ns:
            # The publisher cannot keep up: shift the schedule rather than burst.
            shift += (behind_ns - max_lag_ns) / speed / 1e9
            reached = nxt - sim.start_ns + max_lag_ns
        # Everything due by now (event time <= start + reached); integer ns so
        # that a message counted as due is always in the batch.
        batch = sim.next_batch(sim.start_ns + reached + 1)
        for topic, payload in batch:
            await publisher.publish(topic, payload, qos=qos)
        sent += len(batch)
        now = clock.monotonic_s()
        if now - report_t >= progress_interval_s:
            report(now)
        nxt = sim.next_event_ns()
        if nxt is None:
            break
        ahead_ns = nxt - sim.start_ns - schedule_ns(now)
        if ahead_ns <= 0:
            await sleep(0)
            continue
        wait = ahead_ns / speed / 1e9
        if progress is not None:
            wait = min(wait, max(report_t + progress_interval_s - now, 0.0))
        await sleep(max(wait, tick_s))

    if duration_s is not None and (stop is None or not stop.is_set()):
        # Hold until the end of the requested window (the schedule may end earlier).
        while (remaining := t0 + shift + duration_s - clock.monotonic_s()) > 0:
            if stop is not None and stop.is_set():
                break
            await sleep(min(remaining, progress_interval_s) if progress else remaining)
            now = clock.monotonic_s()
            if now - report_t >= progress_interval_s:
                report(now)
    await publisher.flush()
    end = clock.monotonic_s()
    report(end)
    duration = end - t0
    return SimStats(
        sent=sent,
        duration_s=duration,
        rate_per_s=sent / duration if duration > 0 else 0.0,
        target_rate_per_s=sim.nominal_rate_per_s,
        behind_s=shift,
    )
