"""Turns Settings into running parts: the only place that reads Settings."""

from __future__ import annotations

import asyncio
import socket
from contextlib import closing
from pathlib import Path
from typing import Any

from ingest._buffer import BufferOptions
from ingest._decode import DecodeOptions
from ingest._mqtt import BackoffOptions, MqttClient, MqttOptions, TlsOptions
from ingest._shard import ShardFilter, ShardSpec
from outputs._files import LineProtocolFileWriter
from outputs._influx import (
    InfluxV1Options,
    InfluxV1Writer,
    InfluxV2Options,
    InfluxV2Writer,
    LineWriter,
)
from outputs._retry import RetryPolicy
from outputs._stage import StageOptions
from processors._windows import WindowSpec
from sim._runner import SimOptions
from urbanpulse._config import MqttSettings, OutputSettings, Settings
from urbanpulse._pipeline import Pipeline, PipelineOptions
from urbanpulse._spool import SpoolOptions

__all__ = [
    "MqttPublisher",
    "NullWriter",
    "build_pipeline",
    "free_port",
    "make_writer",
    "mqtt_options",
    "pipeline_options",
    "shard_settings",
    "sim_options",
    "web_options",
]


def mqtt_options(
    m: MqttSettings, *, client_id: str | None = None, durable_acks: bool = False
) -> MqttOptions:
    """Client options; ``durable_acks``: acknowledge QoS 1 only once spooled."""
    tls = None
    if m.tls.enabled:
        tls = TlsOptions(
            ca_file=str(m.tls.ca_file) if m.tls.ca_file else None,
            cert_file=str(m.tls.cert_file) if m.tls.cert_file else None,
            key_file=str(m.tls.key_file) if m.tls.key_file else None,
            insecure=m.tls.insecure,
        )
    return MqttOptions(
        host=m.host,
        port=m.port,
        protocol=m.protocol,
        client_id=client_id if client_id is not None else m.client_id,
        username=m.username,
        password=m.password.get_secret_value() if m.password else None,
        tls=tls,
        keepalive_s=m.keepalive_s,
        clean_start=m.clean_start,
        session_expiry_s=m.session_expiry_s,
        # Acks wait for the spool's fsync, so let the broker keep many in flight.
        receive_maximum=m.receive_maximum or (65535 if durable_acks else None),
        backoff=BackoffOptions(initial_s=m.reconnect_initial_s, max_s=m.reconnect_max_s),
        manual_ack=durable_acks,
    )


def pipeline_options(s: Settings, *, state_dir: Path | None = None) -> PipelineOptions:
    from ingest._codecs import CodecRule

    return PipelineOptions(
        topic_pattern=s.mqtt.topic_pattern,
        deadletter_prefix=s.mqtt.deadletter_prefix,
        deadletter_qos=s.mqtt.deadletter_qos,
        subscribe_qos=s.mqtt.qos,
        buffer=BufferOptions(
            batch_max_messages=s.ingest.batch_max_messages,
            batch_max_ms=s.ingest.batch_max_ms,
            max_buffered_messages=s.ingest.max_buffered_messages,
        ),
        decode=DecodeOptions(
            max_payload_bytes=s.ingest.max_payload_bytes,
            unknown_fields=s.ingest.unknown_fields,
            timestamp_unit=s.ingest.timestamp_unit,
            naive_timezone=s.ingest.naive_timezone,
            max_future_s=s.ingest.max_future_s,
            max_past_s=s.ingest.max_past_s,
            limits=dict(s.ingest.limits),
            max_series=s.ingest.max_series or None,
            max_new_series_per_min=s.ingest.max_new_series_per_min or None,
            codecs=tuple(CodecRule(**r.model_dump()) for r in s.ingest.codecs),
        ),
        windows=tuple(
            WindowSpec(window_ms=w, grace_ms=s.windows.grace_ms, idle_ms=s.windows.idle_ms)
            for w in s.windows.widths_ms
        ),
        stage=StageOptions(
            batch_max_lines=s.output.batch_max_lines,
            batch_max_ms=s.output.batch_max_ms,
            max_pending_bytes=s.output.max_pending_bytes,
            retry=RetryPolicy(
                max_attempts=None,
                base_delay_s=s.output.retry_initial_s,
                max_delay_s=s.output.retry_max_s,
            ),
        ),
        write_raw=s.output.write_raw,
        state_dir=state_dir if state_dir is not None else s.state_dir,
        stats_interval_s=s.log.stats_interval_s,
        shutdown_timeout_s=s.shutdown_timeout_s,
        spool=SpoolOptions(
            directory=s.spool.directory,
            fsync=s.spool.fsync,
            fsync_interval_s=s.spool.fsync_interval_s,
            segment_bytes=s.spool.segment_bytes,
            max_bytes=s.spool.max_bytes,
            full_policy=s.spool.full_policy,
        )
        if s.spool.enabled
        else None,
        checkpoint_interval_s=s.spool.checkpoint_interval_s,
    )


class NullWriter:
    """Counts and discards (output kind "none")."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, lines: bytes) -> None:
        self.bytes += len(lines)

    def close(self) -> None:
        return None


def make_writer(o: OutputSettings, *, files_dir: Path | None = None) -> LineWriter:
    if o.kind == "influx2":
        token = o.influx2.token.get_secret_value() if o.influx2.token else ""
        return InfluxV2Writer(
            InfluxV2Options(
                url=o.influx2.url,
                org=o.influx2.org,
                bucket=o.influx2.bucket,
                token=token,
                timeout_s=o.influx2.timeout_s,
                gzip=o.influx2.gzip,
            )
        )
    if o.kind == "influx1":
        return InfluxV1Writer(
            InfluxV1Options(
                url=o.influx1.url,
                database=o.influx1.database,
                retention_policy=o.influx1.retention_policy,
                username=o.influx1.username,
                password=o.influx1.password.get_secret_value() if o.influx1.password else None,
                timeout_s=o.influx1.timeout_s,
                gzip=o.influx1.gzip,
            )
        )
    if o.kind == "files":
        return LineProtocolFileWriter(files_dir or o.files.directory, o.files.rotate_bytes)
    return NullWriter()


def build_pipeline(
    s: Settings, *, writer: LineWriter | None = None, mqtt_settings: MqttSettings | None = None
) -> Pipeline:
    opts = pipeline_options(s)
    m = mqtt_settings or s.mqtt
    pipeline_writer = writer if writer is not None else make_writer(s.output)
    pipeline = Pipeline(opts, writer=pipeline_writer)
    durable = opts.spool is not None and m.qos == 1
    shard = (
        ShardFilter(ShardSpec.parse(m.shard, by=m.shard_by), topic_pattern=m.topic_pattern)
        if m.shard is not None
        else None
    )
    pipeline.attach_mqtt(
        MqttClient(mqtt_options(m, durable_acks=durable), subscriptions=pipeline.subscription),
        shard=shard,
    )
    return pipeline


def shard_settings(s: Settings) -> Settings:
    """With ``mqtt.shard`` set: this shard's own client id, spool and state directory.

    A ``shard-k-of-N`` suffix is appended to ``mqtt.client_id`` (when one is set)
    and a ``shard-k-of-N`` subdirectory is used under ``spool.directory`` and
    ``state_dir``, so N processes started from one config never share a broker
    session or a journal. Without ``mqtt.shard``: ``s`` unchanged.
    """
    if s.mqtt.shard is None:
        return s
    suffix = ShardSpec.parse(s.mqtt.shard).suffix
    mqtt = s.mqtt
    if mqtt.client_id is not None:
        mqtt = mqtt.model_copy(update={"client_id": f"{mqtt.client_id}-{suffix}"})
    spool = s.spool.model_copy(update={"directory": s.spool.directory / suffix})
    state_dir = s.state_dir / suffix if s.state_dir is not None else None
    return s.model_copy(update={"mqtt": mqtt, "spool": spool, "state_dir": state_dir})


def sim_options(
    s: Settings,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    start_ns: int | None = None,
) -> SimOptions:
    prefix = s.mqtt.topic_pattern.split("/", 1)[0]
    return SimOptions(
        seed=s.sim.seed,
        n_air=s.sim.n_air,
        n_traffic=s.sim.n_traffic,
        city=s.sim.city,
        prefix=prefix,
        qos=s.sim.qos,
        rate_per_s=s.sim.rate_per_s,
        speed=s.sim.speed,
        count=count,
        duration_s=duration_s,
        start_ns=start_ns,
        ts_format=s.sim.ts_format,
        city_file=str(s.sim.city_file) if s.sim.city_file else None,
        scenario_file=str(s.sim.scenario_file) if s.sim.scenario_file else None,
        payload_format=s.sim.payload_format,
    )


class MqttPublisher:
    """The simulator's Publisher over MqttClient, with flow control.

    It waits for a connection rather than dropping, and keeps the socket's write
    buffer (QoS 0) or the unacknowledged window (QoS 1) bounded.
    """

    def __init__(
        self, client: MqttClient, *, max_buffer_bytes: int = 4 << 20, max_inflight: int = 2000
    ) -> None:
        self._client = client
        self._max_buffer = max_buffer_bytes
        self._max_inflight = max_inflight
        self._n = 0

    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        while not self._client.publish(topic, payload, qos=qos):
            await self._client.wait_connected(None)
        self._n += 1
        if self._n % 256 == 0:
            while self._client.write_buffer_bytes() > self._max_buffer or (
                qos and self._client.inflight() > self._max_inflight
            ):
                await asyncio.sleep(0.002)

    async def flush(self) -> None:
        for _ in range(30_000):
            if self._client.write_buffer_bytes() == 0 and self._client.inflight() == 0:
                return
            await asyncio.sleep(0.002)


def web_options(s: Settings) -> Any:
    """The web server's options (``web.WebOptions``) from the settings."""
    from web import LiveOptions, WebOptions

    w = s.web
    return WebOptions(
        enabled=w.enabled,
        host=w.host,
        port=w.port,
        token=w.token.get_secret_value() if w.token else None,
        sensors_file=w.sensors_file,
        sse_interval_s=w.sse_interval_s,
        live=LiveOptions(dead_after_s=w.dead_after_s, free_flow_kmh=w.free_flow_kmh),
    )


def free_port(host: str = "127.0.0.1") -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
