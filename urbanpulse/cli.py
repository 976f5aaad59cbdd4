"""The ``urbanpulse`` command: run, demo, sim, config check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from urbanpulse._config import MqttSettings, Settings, load_settings, masked_dump
from urbanpulse._errors import UrbanPulseError
from urbanpulse._log import setup_logging

__all__ = ["main"]

log = logging.getLogger("urbanpulse")


def _shard_arg(text: str) -> str:
    from ingest._shard import ShardSpec

    try:
        return str(ShardSpec.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="urbanpulse",
        description="Smart-city sensor ingestion: MQTT -> validated columns -> "
        "windowed aggregates -> InfluxDB.",
    )
    p.add_argument(
        "-c", "--config", type=Path, help="TOML config file (env URBANPULSE_* overrides it)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="the production pipeline against the configured broker and output"
    )
    run.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="k/N",
        help="keep only shard k of N of the sensors (docs/scaling.md; overrides mqtt.shard)",
    )
    run.add_argument(
        "--shard-by",
        choices=("topic", "district"),
        help="shard key: the sensor's topic (default) or its district",
    )

    demo = sub.add_parser(
        "demo",
        help="embedded broker + simulator + pipeline, no external services needed",
    )
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--speed", type=float, default=60.0, help="event-time speed-up (60)")
    demo.add_argument("--n-air", type=int, help="air sensors (default from config: 50)")
    demo.add_argument("--n-traffic", type=int, help="traffic stations (default: 20)")
    demo.add_argument("--out", type=Path, default=Path("var/demo"), help="demo output folder")

    sim = sub.add_parser("sim", help="publish simulated sensors to the configured broker")
    sim.add_argument("--host")
    sim.add_argument("--port", type=int)
    sim.add_argument("--seed", type=int)
    sim.add_argument("--n-air", type=int)
    sim.add_argument("--n-traffic", type=int)
    sim.add_argument("--rate", type=float, help="messages/s (default: realistic intervals)")
    sim.add_argument("--speed", type=float, help="event-time speed-up")
    sim.add_argument("--count", type=int, help="stop after this many messages")
    sim.add_argument("--duration", type=float, help="stop after this many seconds")
    sim.add_argument("--qos", type=int, choices=(0, 1))
    sim.add_argument("--ts-format", choices=("epoch_s", "iso"))
    sim.add_argument("--city", help="built-in or bundled city (bandung, sindangraja, ...)")
    sim.add_argument("--city-file", type=Path, help="a city model file (TOML/JSON)")
    sim.add_argument("--scenario", type=Path, help="a scenario file of faults to inject")
    sim.add_argument(
        "--ground-truth", type=Path, help="write the injected faults' labels here (JSON lines)"
    )
    sim.add_argument(
        "--replay", type=Path, help="replay a recording (.csv or line protocol) instead"
    )
    sim.add_argument(
        "--format",
        dest="payload_format",
        choices=("native", "senml", "airrohr", "ttn"),
        help="payload format of the air sensors",
    )
    sim.add_argument(
        "--print-codec-rules",
        action="store_true",
        help="print the [[ingest.codecs]] rules the pipeline needs for --format, and exit",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress line")

    ev = sub.add_parser(
        "evaluate",
        help="score the detectors on a seeded simulated scenario (precision, recall, F1, delay)",
    )
    ev.add_argument("--city", default="sindangraja", help="built-in or bundled city")
    ev.add_argument("--city-file", help="a city model file")
    ev.add_argument("--days", type=float, default=2.0, help="scored days")
    ev.add_argument(
        "--warmup-days",
        type=float,
        default=1.0,
        help="days simulated first and not scored (learned baselines, 24 h means)",
    )
    ev.add_argument("--seed", type=int, default=7)
    ev.add_argument("--scenario", type=Path, help="a scenario file (default: random, seeded)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of tables")

    al = sub.add_parser(
        "alerts", help="open alerts, acknowledge, silence (talks to the running pipeline)"
    )
    al_sub = al.add_subparsers(dest="alerts_command", required=True)
    al_sub.add_parser("list", help="the open alerts")
    ack = al_sub.add_parser("ack", help="acknowledge an alert")
    ack.add_argument("fingerprint")
    ack.add_argument("--by", required=True, help="operator name")
    ack.add_argument("--comment", default="")
    sil = al_sub.add_parser("silence", help="silence alerts matching labels for a while")
    sil.add_argument(
        "-m", "--match", action="append", required=True,
        help="label matcher, e.g. district=coblong or alertname=~spike|range (repeatable)",
    )  # fmt: skip
    sil.add_argument("--duration", type=float, default=3600.0, help="seconds (3600)")
    sil.add_argument("--by", required=True, help="operator name")
    sil.add_argument("--comment", default="")

    spool = sub.add_parser("spool", help="the disk spool: show it, or write it to the database")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    spool_sub.add_parser("status", help="segments, size, records not yet in the database")
    replay = spool_sub.add_parser(
        "replay", help="write every spooled record to the configured output, then exit"
    )
    replay.add_argument("--timeout", type=float, default=600.0, help="give up after S seconds")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file, print effective settings")
    check.add_argument("file", type=Path)
    return p


def _install_signals(stop: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop)


# -- run ---------------------------------------------------------------------------------
def _shard_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    """``run --shard k/N --shard-by KEY`` over ``mqtt.shard`` / ``mqtt.shard_by``."""
    update: dict[str, str] = {}
    if getattr(args, "shard", None) is not None:
        update["shard"] = args.shard
    if getattr(args, "shard_by", None) is not None:
        update["shard_by"] = args.shard_by
    if not update:
        return settings
    return settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update=update)})


async def _run(settings: Settings) -> int:
    from alerts import AlertDispatcher, build_receivers
    from urbanpulse._app import build_pipeline

    pipeline = build_pipeline(settings)
    _install_signals(pipeline.request_stop)
    mqtt = pipeline.mqtt
    assert mqtt is not None
    dispatcher = AlertDispatcher(
        settings.alerts, build_receivers(settings.alerts, publish=mqtt.publish)
    )
    alerts_task = asyncio.create_task(
        dispatcher.run(
            pipeline.bus.subscribe("alerts", maxsize=settings.alerts.subscription_maxsize)
        ),
        name="alerts",
    )
    web = None
    if settings.web.enabled:
        from urbanpulse._app import web_options
        from web import WebServer

        web = WebServer(web_options(settings), pipeline, alerts=dispatcher)
        await web.start()
    log.info(
        "urbanpulse running",
        extra={
            "broker": f"{settings.mqtt.host}:{settings.mqtt.port}",
            "subscription": pipeline.pattern.subscription,
            "output": settings.output.kind,
            "shard": settings.mqtt.shard,
        },
    )
    try:
        await pipeline.run()
    finally:
        if web is not None:
            await web.close()
        alerts_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await alerts_task
    return 0


# -- sim ---------------------------------------------------------------------------------
def _progress_printer(quiet: bool) -> Any:
    if quiet:
        return None

    def show(p: Any) -> None:
        sys.stderr.write(
            f"\rsim: {p.sent:>10,} sent  {p.rate_per_s:>9,.0f} msg/s now  "
            f"{p.mean_rate_per_s:>9,.0f} msg/s mean  {p.elapsed_s:>7.1f} s"
        )
        sys.stderr.flush()

    return show


async def _sim(settings: Settings, args: argparse.Namespace) -> int:
    from ingest._mqtt import MqttClient
    from sim._groundtruth import write_labels
    from sim._replay import read_csv, read_line_protocol, run_replay
    from sim._runner import Simulator, run_simulation
    from urbanpulse._app import MqttPublisher, mqtt_options, sim_options
    from urbanpulse._clock import SystemClock

    opts = sim_options(settings, count=args.count, duration_s=args.duration)
    if args.print_codec_rules:
        from sim import codec_rules_toml

        print(codec_rules_toml(Simulator(opts, SystemClock()).codec_rules()))
        return 0
    client = MqttClient(mqtt_options(settings.mqtt, client_id=""))
    task = asyncio.create_task(client.run())
    stop = asyncio.Event()
    _install_signals(stop.set)
    clock = SystemClock()
    progress = _progress_printer(args.quiet)
    simulator: Simulator | None = None
    try:
        await client.wait_connected(settings.mqtt.reconnect_max_s + 10)
        if args.replay is not None:
            path: Path = args.replay
            recording = read_csv(path) if path.suffix == ".csv" else read_line_protocol(path)
            stats = await run_replay(
                recording,
                MqttPublisher(client),
                clock,
                progress,
                speed=settings.sim.speed,
                qos=settings.sim.qos,
                prefix=opts.prefix,
                stop=stop,
            )
        else:
            simulator = Simulator(opts, clock)
            stats = await run_simulation(
                opts, MqttPublisher(client), clock, progress, stop=stop, simulator=simulator
            )
    finally:
        await client.stop()
        await task
    if args.ground_truth is not None and simulator is not None:
        n = write_labels(args.ground_truth, simulator.labels)
        print(f"{n} ground-truth labels written to {args.ground_truth}", file=sys.stderr)
    if not args.quiet:
        sys.stderr.write("\n")
    print(
        json.dumps(
            {
                "sent": stats.sent,
                "duration_s": round(stats.duration_s, 3),
                "rate_per_s": round(stats.rate_per_s, 1),
                "target_rate_per_s": round(stats.target_rate_per_s, 1),
            }
        )
    )
    return 0


def _sim_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    sim = settings.sim.model_copy(
        update={
            k: v
            for k, v in {
                "seed": args.seed,
                "n_air": args.n_air,
                "n_traffic": args.n_traffic,
                "rate_per_s": args.rate,
                "speed": args.speed,
                "qos": args.qos,
                "ts_format": args.ts_format,
                "city": args.city,
                "city_file": args.city_file,
                "scenario_file": args.scenario,
                "payload_format": args.payload_format,
            }.items()
            if v is not None
        }
    )
    mqtt = settings.mqtt.model_copy(
        update={k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    )
    return settings.model_copy(update={"sim": sim, "mqtt": mqtt})


# -- demo --------------------------------------------------------------------------------
async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from amqtt.broker import Broker
    from amqtt.contexts import BrokerConfig, ListenerConfig

    from ingest._mqtt import MqttClient
    from sim._runner import run_simulation
    from urbanpulse._app import (
        MqttPublisher,
        build_pipeline,
        free_port,
        make_writer,
        mqtt_options,
        sim_options,
    )
    from urbanpulse._clock import SystemClock

    port = free_port()
    broker = Broker(
        BrokerConfig(
            listeners={"default": ListenerConfig(bind=f"127.0.0.1:{port}")},
            plugins={"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        )
    )
    await broker.start()
    mqtt = MqttSettings(
        host="127.0.0.1",
        port=port,
        protocol="3.1.1",
        topic_pattern=settings.mqtt.topic_pattern,
        deadletter_prefix=settings.mqtt.deadletter_prefix,
    )
    sim = settings.sim.model_copy(
        update={
            k: v
            for k, v in {"n_air": args.n_air, "n_traffic": args.n_traffic}.items()
            if v is not None
        }
        | {"speed": args.speed}
    )
    out_dir: Path = args.out
    external = settings.output.kind in ("influx1", "influx2")
    files_dir = out_dir / "lineprotocol"
    writer = (
        make_writer(settings.output)
        if external
        else make_writer(settings.output.model_copy(update={"kind": "files"}), files_dir=files_dir)
    )
    spool = settings.spool.model_copy(update={"directory": out_dir / "spool"})
    settings = settings.model_copy(
        update={"mqtt": mqtt, "sim": sim, "state_dir": out_dir / "state", "spool": spool}
    )
    pipeline = build_pipeline(settings, writer=writer)
    web = await _demo_web(settings, pipeline)
    # Event time starts a day back so that a fast replay stays behind the clock
    # (readings from the future are refused by the clock-skew policy).
    day_ns = 86_400 * 10**9
    start_ns = time.time_ns() - day_ns
    duration_s = args.duration if args.duration else day_ns / 1e9 / sim.speed
    sim_opts = sim_options(settings, duration_s=duration_s, start_ns=start_ns)
    publisher_client = MqttClient(mqtt_options(mqtt, client_id=""))

    print(f"UrbanPulse demo: embedded MQTT broker (amqtt, MQTT 3.1.1) on 127.0.0.1:{port}")
    print(f"  watch it:  mosquitto_sub -h 127.0.0.1 -p {port} -t 'urbanpulse/#' -v")
    print(
        f"  simulator: {sim.n_air} air sensors + {sim.n_traffic} traffic stations in "
        f"{sim.city}, event time x{sim.speed:g} (starting 24 h ago)"
    )
    if external:
        print(f"  output:    {settings.output.kind} ({_output_url(settings)})")
    else:
        print(f"  output:    line-protocol files in {files_dir}/ (no InfluxDB configured)")
        print(
            "  load them: influx write --bucket urbanpulse --precision ns "
            f"--file {files_dir}/urbanpulse-000001.lp   (InfluxDB 2.x)"
        )
        print(
            "         or curl -XPOST 'http://localhost:8086/write?db=urbanpulse&precision=ns' "
            f"--data-binary @{files_dir}/urbanpulse-000001.lp   (1.x)"
        )
    if web is not None:
        print(f"  dashboard: http://127.0.0.1:{web.port}/  (API: /api/sensors, /metrics)")
    print("  stop with Ctrl-C; everything buffered is flushed first.\n", flush=True)

    stop = asyncio.Event()
    _install_signals(stop.set)
    pipe_task = asyncio.create_task(pipeline.run())
    pub_task = asyncio.create_task(publisher_client.run())
    sim_task: asyncio.Task[Any] | None = None
    try:
        assert pipeline.mqtt is not None
        await pipeline.mqtt.wait_connected(10)
        await publisher_client.wait_connected(10)
        sim_task = asyncio.create_task(
            run_simulation(sim_opts, MqttPublisher(publisher_client), SystemClock(), stop=stop)
        )
        while not stop.is_set() and not sim_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            _print_demo_status(pipeline.snapshot_stats())
        stop.set()
        if sim_task is not None:
            await sim_task
        await publisher_client.stop()
        await pub_task
        await asyncio.sleep(0.5)  # let the broker hand over what is in flight
    finally:
        pipeline.request_stop()
        await pipe_task
        if web is not None:
            await web.close()
        await broker.shutdown()
    _print_demo_status(pipeline.snapshot_stats())
    where = _output_url(settings) if external else f"{files_dir}/"
    print(f"done. Points are in {where}")
    return 0


async def _demo_web(settings: Settings, pipeline: Any) -> Any:
    """The dashboard for the demo, on web.port or, if that is taken, any free port."""
    if not settings.web.enabled:
        return None
    from sim._runner import resolve_fleet
    from urbanpulse._app import sim_options, web_options
    from urbanpulse._errors import ConfigError
    from web import WebServer, directory_of_fleet

    directory = directory_of_fleet(resolve_fleet(sim_options(settings)))
    options = web_options(settings)
    for attempt in (options, replace(options, port=0)):
        web = WebServer(attempt, pipeline, directory=directory)
        try:
            await web.start()
        except (ConfigError, OSError):
            web.detach()
            continue
        return web
    return None


def _output_url(settings: Settings) -> str:
    o = settings.output
    return o.influx2.url if o.kind == "influx2" else o.influx1.url


def _print_demo_status(stats: dict[str, Any]) -> None:
    dead = sum(stats["dead_letters"].values())
    aggs = ", ".join(f"{k}: {v}" for k, v in stats["aggregates"].items()) or "none yet"
    print(
        f"received {stats['received']:,}  readings {stats['readings']:,}  "
        f"points written {stats['points_written']:,}  windows closed ({aggs})  "
        f"dead letters {dead}  series {stats['series']}",
        flush=True,
    )


# -- evaluate ----------------------------------------------------------------------------
def _evaluate(args: argparse.Namespace) -> int:
    from urbanpulse._evaluate import EvaluationOptions, evaluate

    result = evaluate(
        EvaluationOptions(
            city=args.city,
            city_file=args.city_file,
            days=args.days,
            warmup_days=args.warmup_days,
            seed=args.seed,
            scenario_file=args.scenario,
        )
    )
    if args.json:
        print(
            json.dumps(
                {
                    "faults": result.faults.to_dict(),
                    "clean": result.clean.to_dict(),
                    "messages": result.messages,
                    "seconds": round(result.seconds, 1),
                },
                indent=2,
            )
        )
    else:
        print(
            f"# evaluation: {args.city}, {args.days:g} days, seed {args.seed}, "
            f"{len(result.labels)} labels, {result.messages:,} messages in "
            f"{result.seconds:.0f} s\n"
        )
        print(result.to_markdown())
    return 0


# -- alerts ------------------------------------------------------------------------------
def _alerts_cli(settings: Settings, args: argparse.Namespace) -> int:
    """A small client of the running pipeline's HTTP API (web.host, web.port, token)."""
    import urllib.error
    import urllib.request

    w = settings.web
    host = "127.0.0.1" if w.host in ("0.0.0.0", "::", "") else w.host
    base = f"http://{host}:{w.port}"
    headers = {"Content-Type": "application/json"}
    if w.token is not None:
        headers["Authorization"] = f"Bearer {w.token.get_secret_value()}"
    if args.alerts_command == "list":
        method, path, body = "GET", "/api/alerts", None
    elif args.alerts_command == "ack":
        method, path = "POST", f"/api/alerts/{args.fingerprint}/ack"
        body = {"by": args.by, "comment": args.comment}
    else:
        method, path = "POST", "/api/silences"
        body = {
            "matchers": args.match,
            "duration_s": args.duration,
            "by": args.by,
            "comment": args.comment,
        }
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            print(json.dumps(json.loads(resp.read()), indent=2))
    except urllib.error.HTTPError as exc:
        raise UrbanPulseError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode()}") from exc
    except OSError as exc:
        raise UrbanPulseError(f"cannot reach the pipeline at {base}: {exc}") from exc
    return 0


# -- spool -------------------------------------------------------------------------------
def _spool_status(settings: Settings) -> int:
    from dataclasses import asdict

    from urbanpulse._spool import Spool, SpoolOptions

    if not settings.spool.directory.exists():
        print(json.dumps({"directory": str(settings.spool.directory), "exists": False}))
        return 0
    spool = Spool(SpoolOptions(directory=settings.spool.directory))
    try:
        print(json.dumps(asdict(spool.status()), indent=2))
    finally:
        spool.close()
    return 0


async def _spool_replay(settings: Settings, timeout_s: float) -> int:
    """Recover like `run` does (checkpoint + spool), write what is pending, stop."""
    from urbanpulse._app import make_writer, pipeline_options
    from urbanpulse._pipeline import Pipeline

    if not settings.spool.enabled:
        raise UrbanPulseError("the spool is disabled in this configuration")
    pipeline = Pipeline(pipeline_options(settings), writer=make_writer(settings.output))
    pending = pipeline.stage.pending_records
    task = asyncio.create_task(pipeline.stage.run())
    try:
        await asyncio.wait_for(pipeline.stage.close(), timeout_s)
    except TimeoutError:
        log.error("replay did not finish", extra={"pending": pipeline.stage.pending_records})
        return 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pipeline.checkpoint()
        if pipeline.spool is not None:
            pipeline.spool.close()
        pipeline.writer.close()
    st = pipeline.stage.stats
    print(
        json.dumps(
            {
                "replayed_records": pending,
                "points_written": st.points_written,
                "points_rejected": st.points_rejected,
            }
        )
    )
    return 0


# -- config ------------------------------------------------------------------------------
def _config_check(path: Path) -> int:
    settings = load_settings(path)
    print(json.dumps(masked_dump(settings), indent=2))
    print(f"{path}: OK", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from urbanpulse._malloc import tune_malloc

    tune_malloc()
    try:
        if args.command == "config":
            return _config_check(args.file)
        settings = load_settings(args.config)
        setup_logging(settings.log.level, settings.log.format)
        if args.command in ("run", "spool"):
            from urbanpulse._app import shard_settings

            settings = shard_settings(_shard_overrides(settings, args))
        if args.command == "run":
            return asyncio.run(_run(settings))
        if args.command == "sim":
            return asyncio.run(_sim(_sim_overrides(settings, args), args))
        if args.command == "demo":
            return asyncio.run(_demo(settings, args))
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "alerts":
            return _alerts_cli(settings, args)
        if args.command == "spool":
            if args.spool_command == "status":
                return _spool_status(settings)
            return asyncio.run(_spool_replay(settings, args.timeout))
    except UrbanPulseError as exc:
        print(f"urbanpulse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
