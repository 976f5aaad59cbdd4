"""`urbanpulse evaluate`: run a seeded scenario through the real pipeline, score it.

The simulator injects faults (haze, spikes, stuck sensors, dropouts, humid fog,
out-of-range values, traffic incidents) with ground-truth labels; the messages
go, micro-batch by micro-batch in event-time order, through the same
``Pipeline.process`` that `urbanpulse run` uses (decoder, duplicate filter,
windows, indices, detectors) with event time driving an injected clock, so a
day runs in seconds. Detections are scored per detector against the labels
(precision, recall, F1, median and p95 detection delay), and a second run of the
same city without faults gives the false alarms per sensor-day on clean data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from ingest._buffer import RawBatch
from processors._windows import WindowSpec
from sim._fleet import Fleet
from sim._groundtruth import Label, clip_labels
from sim._runner import SimOptions, Simulator, resolve_fleet
from sim._scenario import Scenario, load_scenario, random_scenario
from sim._score import ScoreTable, score_detections
from sim._truth import condition_labels
from urbanpulse._app import NullWriter
from urbanpulse._clock import ManualClock
from urbanpulse._errors import ConfigError
from urbanpulse._events import Event, Severity
from urbanpulse._pipeline import Pipeline, PipelineOptions

__all__ = ["EvaluationOptions", "EvaluationResult", "evaluate"]

#: Detection tolerance per detector (s): how far outside a labelled interval a
#: detection still counts as that label's. Indices react to 24 h / 12 h means.
#: ``detector@condition`` keys apply to the natural-condition labels of
#: ``sim._truth``, whose times come from the same hourly means (one evaluation
#: interval of slack).
TOLERANCE_S: dict[str, float] = {
    "*": 300.0,
    "ispu": 86_400.0,
    "aqi": 43_200.0,
    "dead": 900.0,
    "aqi@aqi_unhealthy": 3600.0,
    "ispu@ispu_unhealthy": 3600.0,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationOptions:
    city: str = "sindangraja"
    city_file: str | None = None
    #: Scored days, from ``start_ns``.
    days: float = 2.0
    #: Days simulated before ``start_ns`` and not scored: long enough for the
    #: learned baselines (traffic free flow needs an off-peak night, the ISPU
    #: 24 h means a day, the spike baselines their warm-up); faults are injected
    #: in the scored period only.
    warmup_days: float = 1.0
    seed: int = 7
    scenario_file: Path | None = None
    #: Event-time span of one micro-batch.
    batch_s: float = 60.0
    #: Event-time interval between index evaluations.
    index_interval_s: float = 3600.0
    #: First day of the run (UTC midnight of this epoch day, ns); fixed so that a
    #: seed always means the same run.
    start_ns: int = 1_798_761_600 * 10**9  # 2027-01-01T00:00:00Z = 07:00 WIB

    def __post_init__(self) -> None:
        if not self.days > 0 or self.warmup_days < 0:
            raise ConfigError("evaluate needs days > 0 and warmup_days >= 0")

    @property
    def run_start_ns(self) -> int:
        """Start of the simulated run: the warm-up before ``start_ns``."""
        return self.start_ns - round(self.warmup_days * 86_400e9)

    @property
    def end_ns(self) -> int:
        """End of the scored period."""
        return self.start_ns + round(self.days * 86_400e9)


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    faults: ScoreTable
    clean: ScoreTable
    labels: list[Label]
    #: Natural conditions of the faults run (``sim._truth``).
    conditions: list[Label]
    events: int
    messages: int
    seconds: float

    def to_markdown(self) -> str:
        return (
            "### Injected faults\n\n"
            + self.faults.to_markdown()
            + "\n\n### Clean data (no faults injected)\n\n"
            + self.clean.to_markdown()
            + "\n"
        )


def _batches(sim: Simulator, batch_ns: int) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    while True:
        nxt = sim.next_event_ns()
        if nxt is None:
            return
        until = nxt + batch_ns
        yield until, sim.next_batch(until)


def _run(
    opts: EvaluationOptions, fleet: Fleet, scenario: Scenario | None
) -> tuple[list[Event], list[Label], int]:
    run_start_ns = opts.run_start_ns
    sim_opts = SimOptions(
        seed=opts.seed,
        city=opts.city,
        city_file=opts.city_file,
        start_ns=run_start_ns,
        duration_s=(opts.warmup_days + opts.days) * 86_400.0,
    )
    clock = ManualClock(run_start_ns)
    sim = Simulator(sim_opts, clock, fleet=fleet, scenario=scenario)
    pipeline = Pipeline(
        PipelineOptions(
            windows=(WindowSpec(window_ms=60_000, grace_ms=10_000),),
            index_interval_s=opts.index_interval_s,
            stats_interval_s=1e9,
        ),
        writer=NullWriter(),
        clock=clock,
    )
    events: list[Event] = []
    messages = 0
    batch_ns = round(opts.batch_s * 1e9)
    next_index_ns = run_start_ns + round(opts.index_interval_s * 1e9)
    for until_ns, msgs in _batches(sim, batch_ns):
        clock.advance(max(0.0, (until_ns - clock.now_ns()) / 1e9))
        if msgs:
            recv = [until_ns] * len(msgs)
            pipeline.process(RawBatch([t for t, _ in msgs], [p for _, p in msgs], recv))
            messages += len(msgs)
        if until_ns >= next_index_ns:
            events.extend(pipeline.indices.evaluate().events)
            next_index_ns += round(opts.index_interval_s * 1e9)
        events.extend(pipeline.take_events())
    events.extend(pipeline.indices.evaluate().events)
    if pipeline.detectors is not None:
        events.extend(pipeline.detectors.check(opts.end_ns))
    return events, list(sim.labels), messages


#: Injected fault -> detectors whose events during it are right although the
#: fault does not expect them (not counted in their recall): the queue of an
#: incident reaching an upstream station is a sudden speed drop there too, and
#: a weak battery that loses slots leaves the sensor really silent at times.
SIDE_EFFECTS: dict[str, tuple[str, ...]] = {"congestion": ("incident",), "power": ("dead",)}


def _side_effects(labels: list[Label]) -> list[Label]:
    return [
        replace(lb, detectors=SIDE_EFFECTS[lb.fault]) for lb in labels if lb.fault in SIDE_EFFECTS
    ]


def _alarms(events: list[Event]) -> list[Event]:
    """The events that count as alarms: an index category change counts only when
    it moves to WARNING or worse (Tidak Sehat / Unhealthy for Sensitive Groups and
    up); moves between good categories are information, not alarms."""
    return [
        e
        for e in events
        if e.detector != "cardinality"
        and not (e.detector in ("ispu", "aqi") and e.severity < Severity.WARNING)
    ]


def evaluate(opts: EvaluationOptions) -> EvaluationResult:
    started = time.perf_counter()
    sim_opts = SimOptions(seed=opts.seed, city=opts.city, city_file=opts.city_file)
    fleet = resolve_fleet(sim_opts)
    scenario = (
        load_scenario(opts.scenario_file)
        if opts.scenario_file is not None
        else random_scenario(fleet, seed=opts.seed, days=opts.days, start_ns=opts.start_ns)
    )
    if scenario.origin is None:
        # a scenario's times count from the scored period, not the warm-up
        origin = datetime.fromtimestamp(opts.start_ns // 10**9, UTC)
        scenario = scenario.model_copy(update={"origin": origin})
    end_ns = opts.end_ns
    events, labels, messages = _run(opts, fleet, scenario)
    n_sensors = len(fleet.sensors())
    labels = clip_labels(labels, opts.start_ns, end_ns)

    def truth(scenario: Scenario | None) -> list[Label]:
        found = condition_labels(
            fleet, start_ns=opts.run_start_ns, end_ns=end_ns, scenario=scenario
        )
        return clip_labels(found, opts.start_ns, end_ns)

    conditions = truth(scenario)
    faults = score_detections(
        labels,
        _alarms(events),
        n_sensors=n_sensors,
        start_ns=opts.start_ns,
        end_ns=end_ns,
        tolerance_s=TOLERANCE_S,
        context=conditions + _side_effects(labels),
    )
    clean_events, _, clean_messages = _run(opts, fleet, None)
    clean = score_detections(
        truth(None),
        _alarms(clean_events),
        n_sensors=n_sensors,
        start_ns=opts.start_ns,
        end_ns=end_ns,
        tolerance_s=TOLERANCE_S,
    )
    return EvaluationResult(
        faults,
        clean,
        labels,
        conditions,
        len(events),
        messages + clean_messages,
        time.perf_counter() - started,
    )
