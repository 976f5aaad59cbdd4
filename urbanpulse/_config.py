"""Settings: ``URBANPULSE_*`` environment variables over a TOML file over defaults.

Read once in ``main`` and passed down as plain option dataclasses; nothing else
reads the environment. Nested fields use ``__`` in variable names, e.g.
``URBANPULSE_MQTT__HOST`` or ``URBANPULSE_OUTPUT__INFLUX2__TOKEN``. Secrets are
``SecretStr`` and can also come from files (``*_file`` fields).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from alerts._config import AlertsConfig
from urbanpulse._errors import ConfigError

__all__ = [
    "FilesSettings",
    "Influx1Settings",
    "Influx2Settings",
    "IngestSettings",
    "LogSettings",
    "MqttSettings",
    "OutputSettings",
    "Settings",
    "SimSettings",
    "SpoolSettings",
    "TlsSettings",
    "WebSettings",
    "WindowSettings",
    "load_settings",
    "masked_dump",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(value: SecretStr | None, path: Path | None, name: str) -> SecretStr | None:
    if path is None:
        return value
    if value is not None:
        raise ValueError(f"set either {name} or {name}_file, not both")
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"{name}_file {str(path)!r}: {exc.strerror}") from exc


class TlsSettings(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TlsSettings = TlsSettings()
    qos: int = Field(0, ge=0, le=1)
    keepalive_s: int = Field(30, ge=5, le=3600)
    clean_start: bool = True
    session_expiry_s: int = Field(0, ge=0, le=0xFFFFFFFF)
    receive_maximum: int | None = Field(None, ge=1, le=65535)
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    #: The topic pattern; {city} {district} {kind} {sensor_id} are required.
    topic_pattern: str = "urbanpulse/{city}/{district}/{kind}/{sensor_id}"
    #: Refused messages are republished under this prefix + /<reason>/<topic>.
    deadletter_prefix: str = "urbanpulse/_deadletter"
    deadletter_qos: int = Field(0, ge=0, le=1)
    #: "k/N": keep only shard k of N (docs/scaling.md); None: every message.
    shard: str | None = None
    #: The shard key: the whole topic (one sensor) or the topic up to {district}.
    shard_by: Literal["topic", "district"] = "topic"

    @model_validator(mode="after")
    def _shard(self) -> MqttSettings:
        if self.shard is not None:
            from ingest._shard import ShardSpec

            object.__setattr__(self, "shard", str(ShardSpec.parse(self.shard)))
        return self

    @model_validator(mode="after")
    def _secrets(self) -> MqttSettings:
        pw = _read_secret(self.password, self.password_file, "password")
        object.__setattr__(self, "password", pw)
        object.__setattr__(self, "password_file", None)
        return self

    @model_validator(mode="after")
    def _pattern(self) -> MqttSettings:
        from ingest._topics import TopicPattern

        TopicPattern.compile(self.topic_pattern)
        return self


class IngestSettings(_Section):
    batch_max_messages: int = Field(5000, ge=1, le=1_000_000)
    batch_max_ms: int = Field(200, ge=1, le=60_000)
    #: Raw messages buffered before decoding; beyond it (QoS 0) messages are
    #: dropped and counted as ``overflow``.
    max_buffered_messages: int = Field(200_000, ge=1000)
    max_payload_bytes: int = Field(4096, ge=64, le=1_048_576)
    unknown_fields: Literal["reject", "ignore"] = "reject"
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s"
    naive_timezone: str | None = None
    max_future_s: float = Field(300.0, ge=0)
    max_past_s: float | None = Field(30 * 86400.0, ge=0)
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    #: Cardinality guard: caps on total series and on new series per minute
    #: (0 disables a cap); refused messages are dead-lettered and an event raised.
    max_series: int = Field(100_000, ge=0)
    max_new_series_per_min: int = Field(5_000, ge=0)

    class CodecRuleSettings(_Section):
        """``[[ingest.codecs]]``: topics matching ``topic_filter`` use ``codec``."""

        #: MQTT topic filter (``+`` one level, ``#`` the rest); the first match wins.
        topic_filter: str
        codec: Literal["native", "senml", "airrohr", "ttn"]
        #: Payload name -> "<metric>", "<metric>[<unit>]" or "" (ignore), over the defaults.
        names: dict[str, str] = Field(default_factory=dict)
        #: Own topic pattern (None: mqtt.topic_pattern); without {sensor_id} the id
        #: comes from the payload (SenML bn, airrohr esp8266id, TTN device_id).
        topic_pattern: str | None = None
        #: city, district, kind for captures the topic pattern lacks.
        tags: dict[str, str] = Field(default_factory=dict)

    #: Codec per topic filter; no rule matches: native JSON (see docs/codecs.md).
    codecs: list[CodecRuleSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> IngestSettings:
        from ingest._codecs import CodecRule, compile_rules
        from urbanpulse._schema import hard_limit_arrays

        hard_limit_arrays(self.limits)
        compile_rules([CodecRule(**r.model_dump()) for r in self.codecs], self.unknown_fields)
        if self.naive_timezone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.naive_timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {self.naive_timezone!r}") from exc
        return self


class WindowSettings(_Section):
    widths_ms: list[int] = Field(default_factory=lambda: [60_000, 900_000], min_length=1)
    grace_ms: int = Field(10_000, ge=0)
    #: A window of a silent sensor closes once the city-wide watermark is this far past it.
    idle_ms: int = Field(300_000, ge=0)

    @model_validator(mode="after")
    def _check(self) -> WindowSettings:
        if any(w < 1000 or w % 1000 for w in self.widths_ms):
            raise ValueError("widths_ms must be whole seconds, >= 1000")
        if len(set(self.widths_ms)) != len(self.widths_ms):
            raise ValueError("widths_ms has duplicates")
        return self


class Influx2Settings(_Section):
    url: str = "http://127.0.0.1:8086"
    org: str = "urbanpulse"
    bucket: str = "urbanpulse"
    token: SecretStr | None = None
    token_file: Path | None = None
    gzip: bool = True
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _secrets(self) -> Influx2Settings:
        object.__setattr__(self, "token", _read_secret(self.token, self.token_file, "token"))
        object.__setattr__(self, "token_file", None)
        return self


class Influx1Settings(_Section):
    url: str = "http://127.0.0.1:8086"
    database: str = "urbanpulse"
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    gzip: bool = True
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _secrets(self) -> Influx1Settings:
        pw = _read_secret(self.password, self.password_file, "password")
        object.__setattr__(self, "password", pw)
        object.__setattr__(self, "password_file", None)
        return self


class FilesSettings(_Section):
    directory: Path = Path("var/lineprotocol")
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=1024)


class OutputSettings(_Section):
    #: Where points go: InfluxDB 2.x API (also VictoriaMetrics), InfluxDB 1.x
    #: API, line-protocol files, or nowhere (counting only).
    kind: Literal["influx2", "influx1", "files", "none"] = "files"
    batch_max_lines: int = Field(20_000, ge=1)
    batch_max_ms: int = Field(1000, ge=1)
    #: Encoded line protocol waiting for the writer, in bytes; when full the
    #: pipeline stops taking batches (and so stops reading) until it drains.
    max_pending_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    write_raw: bool = True
    influx2: Influx2Settings = Influx2Settings()
    influx1: Influx1Settings = Influx1Settings()
    files: FilesSettings = FilesSettings()


class SimSettings(_Section):
    seed: int = 42
    n_air: int = Field(50, ge=0)
    n_traffic: int = Field(20, ge=0)
    city: str = "bandung"
    rate_per_s: float | None = Field(None, gt=0)
    speed: float = Field(1.0, gt=0)
    qos: int = Field(0, ge=0, le=1)
    ts_format: Literal["epoch_s", "iso"] = "epoch_s"
    #: What air sensors send: native JSON, SenML, Sensor.Community (airrohr) or
    #: The Things Stack v3 uplinks (`urbanpulse sim --print-codec-rules` prints
    #: the [[ingest.codecs]] rules the pipeline needs for it).
    payload_format: Literal["native", "senml", "airrohr", "ttn"] = "native"
    #: A city model file (TOML/JSON); ``city`` may also name a bundled one
    #: (sindangraja: 50 sensors, tirtamaya: 1,000, nusapura: 10,000).
    city_file: Path | None = None
    #: A scenario file: faults (haze, spikes, stuck sensors, dropouts, fog,
    #: incidents...) injected with ground-truth labels.
    scenario_file: Path | None = None


class SpoolSettings(_Section):
    """The write-ahead disk spool (see docs/reliability.md)."""

    enabled: bool = True
    directory: Path = Path("var/spool")
    #: "always": fsync each micro-batch before its messages are acknowledged;
    #: "interval": at most every fsync_interval_s (acks wait for it); "never".
    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval_s: float = Field(0.2, gt=0)
    segment_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    max_bytes: int = Field(2 * 1024**3, ge=1024 * 1024)
    #: At the cap: "block" stops intake (QoS 1 messages wait at the broker);
    #: "drop_oldest" deletes the oldest unwritten segment, counted as lost.
    full_policy: Literal["block", "drop_oldest"] = "block"
    checkpoint_interval_s: float = Field(30.0, gt=0)


class WebSettings(_Section):
    """The dashboard, JSON API, /metrics, /healthz and /readyz (docs/dashboard.md)."""

    enabled: bool = True
    #: Loopback by default; any other address requires a token.
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: Path | None = None
    #: Sensor registry: CSV, GeoJSON or a simulator city file.
    sensors_file: Path | None = None
    sse_interval_s: float = Field(0.5, gt=0)
    dead_after_s: float = Field(300.0, gt=0)
    free_flow_kmh: float = Field(50.0, gt=0)

    @model_validator(mode="after")
    def _secrets(self) -> WebSettings:
        object.__setattr__(self, "token", _read_secret(self.token, self.token_file, "token"))
        object.__setattr__(self, "token_file", None)
        return self


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "text"
    stats_interval_s: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="URBANPULSE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    _toml_file: ClassVar[Path | None] = None

    mqtt: MqttSettings = MqttSettings()
    ingest: IngestSettings = IngestSettings()
    windows: WindowSettings = WindowSettings()
    output: OutputSettings = OutputSettings()
    sim: SimSettings = SimSettings()
    log: LogSettings = LogSettings()
    spool: SpoolSettings = SpoolSettings()
    web: WebSettings = WebSettings()
    #: Alert lifecycle, routes and receivers (docs/alerts.md).
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    #: Open windows and the series registry are checkpointed here on a clean
    #: stop and restored on start; empty to keep no state.
    state_dir: Path | None = Path("var/state")
    #: Bound on a graceful stop (drain, flush, checkpoint) after SIGTERM/SIGINT.
    shutdown_timeout_s: float = Field(30.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load settings (env over TOML file over defaults). Raises ConfigError naming the field."""
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")

    class _FromFile(Settings):
        _toml_file: ClassVar[Path | None] = path

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "(root)"
            lines.append(f"  {where}: {err['msg']}")
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}:\n" + "\n".join(lines)) from None
    except (ValueError, OSError) as exc:  # e.g. TOML syntax errors
        raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
    return loaded


_SECRET_KEYS = frozenset({"password", "token", "secret"})


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("**********" if k in _SECRET_KEYS and v else _mask(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets shown as '**********' (SecretStr
    fields, and the plain-string secrets of the alert receivers)."""
    dumped: dict[str, Any] = _mask(settings.model_dump(mode="json"))
    return dumped
