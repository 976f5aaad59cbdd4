"""Deployment files: the broker configuration against a real Mosquitto, and the
structure of the compose file, Kubernetes manifests, systemd unit, Dockerfile
and Grafana dashboard, checked against the Settings model and the schema.
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel
from servers import MosquittoServer, free_port

from outputs import window_label
from outputs._eventlines import encode_events, encode_index_rows
from processors import (
    AQI_POLLUTANTS,
    DEFAULT_ISPU_TABLE,
    ISPU_CATEGORIES,
    DetectorConfig,
    IndexRows,
    build_detectors,
)
from processors._detect_core import STATE_NAMES, DetectionRow
from urbanpulse import SeriesKey, SeriesRegistry
from urbanpulse._config import Settings, load_settings
from urbanpulse._events import Event, Severity
from urbanpulse._schema import METRIC_INFO, Kind, Metric

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
ACL_FILE = DEPLOY / "mosquitto" / "aclfile"
BROKER_INIT = DEPLOY / "compose" / "init" / "broker-init.sh"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
COMPOSE_TOML = DEPLOY / "compose" / "urbanpulse.toml"
IMAGE_TOML = DEPLOY / "docker" / "urbanpulse.toml"
K8S = DEPLOY / "k8s"
SYSTEMD_UNIT = DEPLOY / "systemd" / "urbanpulse.service"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"

SENSOR_TOPIC = "urbanpulse/bandung/coblong/air/{}"
PASSWORDS = {"pipeline": "pipeline-pw", "aq-1": "sensor-1-pw", "aq-2": "sensor-2-pw"}


# =========================================================================== broker


def localise_mosquitto_conf(text: str, *, root: Path, plain_port: int, tls_port: int) -> str:
    """The shipped config with its container paths under ``root`` and loopback ports.

    Nothing else changes; every expected line must be present exactly once, so
    a renamed path or listener in the shipped file fails here.
    """
    lines = text.splitlines()
    replaced = {"listener 1883": 0, "listener 8883": 0}
    out: list[str] = []
    for line in lines:
        if line in replaced:
            replaced[line] += 1
            port = plain_port if line.endswith("1883") else tls_port
            out.append(f"listener {port} 127.0.0.1")
        elif not line.startswith("#") and "/mosquitto/" in line:
            out.append(line.replace("/mosquitto/", f"{root}/"))
        else:
            out.append(line)
    assert replaced == {"listener 1883": 1, "listener 8883": 1}, replaced
    # As root, Mosquitto drops to user "mosquitto"; stay who we are instead.
    out.append(f"user {_current_user()}")
    return "\n".join(out) + "\n"


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


class DeployedMosquitto(MosquittoServer):
    """deploy/mosquitto/mosquitto.conf as shipped, paths moved into ``root``."""

    def __init__(self, data_dir: Path, *, root: Path) -> None:
        self.root = root
        self.tls_port = free_port()
        super().__init__(data_dir)

    def _config(self) -> str:
        return localise_mosquitto_conf(
            MOSQUITTO_CONF.read_text(), root=self.root, plain_port=self.port, tls_port=self.tls_port
        )


def _run_broker_init(root: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    secrets_dir = root / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    for name, value in secrets.items():
        (secrets_dir / name).write_text(value + "\n")
    env = {
        **os.environ,
        "AUTH_DIR": str(root / "auth"),
        "CERTS_DIR": str(root / "certs"),
        "SECRETS_DIR": str(secrets_dir),
        "OWNER": f"{os.getuid()}:{os.getgid()}",
    }
    return subprocess.run(
        ["sh", str(BROKER_INIT)], env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedMosquitto]:
    root = tmp_path_factory.mktemp("deployed-mosquitto")
    (root / "config").mkdir()
    shutil.copy(ACL_FILE, root / "config" / "aclfile")
    (root / "data").mkdir()
    done = _run_broker_init(
        root,
        {"mqtt_pipeline_password": PASSWORDS["pipeline"], "mqtt_simulator_password": ""},
    )
    assert done.returncode == 0, done.stderr
    for user in ("aq-1", "aq-2"):  # as docs/deploy.md tells operators to add sensors
        subprocess.run(
            ["mosquitto_passwd", "-b", str(root / "auth" / "passwd"), user, PASSWORDS[user]],
            check=True,
        )
    with DeployedMosquitto(root / "run", root=root) as server:
        yield server


@dataclass(frozen=True, slots=True)
class Reason:
    """An MQTT reason code as paho-mqtt reports it (v5 and v3.1.1 alike)."""

    text: str
    failure: bool

    @classmethod
    def of(cls, rc: Any) -> Reason:
        return cls(str(rc), bool(rc.is_failure))


@dataclass
class Client:
    """A paho-mqtt client that records what the broker answered, for assertions.

    ``raw`` is typed Any: the installed types-paho-mqtt stubs describe paho 1.6,
    not the 2.x API used here.
    """

    name: str
    raw: Any
    connack: list[Reason] = field(default_factory=list)
    connack_props: list[dict[str, Any]] = field(default_factory=list)
    subacks: list[list[Reason]] = field(default_factory=list)
    pubacks: dict[int, Reason] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: condition not reached in {timeout_s} s")
            time.sleep(0.01)

    def publish(self, topic: str, payload: bytes) -> Reason:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.raw.publish(topic, payload, qos=1)
        self.wait(lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> Reason:
        n = len(self.subacks)
        self.raw.subscribe(topic, qos=1)
        self.wait(lambda: len(self.subacks) > n)
        return self.subacks[n][0]

    def close(self) -> None:
        self.raw.disconnect()
        self.raw.loop_stop()


def connect(
    port: int,
    user: str | None,
    password: str | None = None,
    *,
    client_id: str = "",
    protocol: int = mqtt.MQTTv5,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    ca_file: Path | None = None,
) -> Client:
    """Connect and wait for the CONNACK (refusals included)."""
    raw: Any = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)  # type: ignore[arg-type, call-arg, misc, unused-ignore]
    c = Client(user or "anonymous", raw)
    if user is not None:
        raw.username_pw_set(user, password)
    if ca_file is not None:
        raw.tls_set(ca_certs=str(ca_file))

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, props: Any) -> None:
        with c.lock:
            c.connack.append(Reason.of(rc))
            c.connack_props.append(props.json() if props is not None else {})
        if c.connack[-1].failure:
            raw.disconnect()  # no reconnect attempts after a refusal

    def on_subscribe(_c: Any, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        with c.lock:
            c.subacks.append([Reason.of(rc) for rc in rcs])

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with c.lock:
            c.pubacks[mid] = Reason.of(rc)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with c.lock:
            c.messages.append((msg.topic, bytes(msg.payload)))

    raw.on_connect = on_connect
    raw.on_subscribe = on_subscribe
    raw.on_publish = on_publish
    raw.on_message = on_message
    if protocol == mqtt.MQTTv5:
        new_properties: Any = Properties  # paho's Properties is untyped (no stubs needed)
        props: Any = new_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        raw.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
    else:
        raw.connect("127.0.0.1", port)
    raw.loop_start()
    c.wait(lambda: bool(c.connack))
    return c


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*args: Any, **kwargs: Any) -> Client:
        c = connect(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _ok(rc: Reason) -> bool:
    return not rc.failure


@pytest.mark.integration
def test_the_shipped_config_starts_with_only_paths_and_ports_changed(
    broker: DeployedMosquitto,
) -> None:
    shipped = MOSQUITTO_CONF.read_text().splitlines()
    running = broker.config_path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, running, strict=False) if a != b]
    assert all(a.startswith("listener ") or "/mosquitto/" in a for a, _ in changed)
    assert len(running) == len(shipped) + 1  # the "user" line
    assert broker.running
    for setting in (
        "allow_anonymous false",
        "persistence true",
        "max_queued_messages 1000000",
        "max_inflight_messages 65535",
    ):
        assert setting in shipped


@pytest.mark.integration
def test_a_sensor_publishes_only_under_its_own_topic(
    broker: DeployedMosquitto, clients: Callable[..., Client]
) -> None:
    pipeline = clients(broker.port, "pipeline", PASSWORDS["pipeline"])
    assert _ok(pipeline.subscribe("urbanpulse/#"))
    sensor = clients(broker.port, "aq-1", PASSWORDS["aq-1"])
    assert _ok(sensor.connack[0])

    forged = sensor.publish(SENSOR_TOPIC.format("aq-2"), b"forged")
    forged_alert = sensor.publish("urbanpulse/_alerts/bandung/coblong/aq-1", b"forged alert")
    forged_deadletter = sensor.publish("urbanpulse/_deadletter/x/y/aq-1", b"forged dead letter")
    too_deep = sensor.publish("urbanpulse/bandung/coblong/air/x/aq-1", b"too deep")
    own = sensor.publish(SENSOR_TOPIC.format("aq-1"), b"own")

    assert [rc.text for rc in (forged, forged_alert, forged_deadletter, too_deep)] == [
        "Not authorized"
    ] * 4
    assert _ok(own)
    # Messages of one publisher arrive in order: once "own" is in, nothing
    # refused before it can still come.
    pipeline.wait(lambda: len(pipeline.messages) >= 1)
    assert pipeline.messages == [(SENSOR_TOPIC.format("aq-1"), b"own")]


@pytest.mark.integration
def test_an_mqtt311_sensor_gets_a_plain_puback_and_its_forgery_is_dropped(
    broker: DeployedMosquitto, clients: Callable[..., Client]
) -> None:
    pipeline = clients(broker.port, "pipeline", PASSWORDS["pipeline"])
    assert _ok(pipeline.subscribe("urbanpulse/#"))
    sensor = clients(broker.port, "aq-1", PASSWORDS["aq-1"], protocol=mqtt.MQTTv311)
    assert _ok(sensor.publish(SENSOR_TOPIC.format("aq-2"), b"forged"))  # 3.1.1 cannot say no
    assert _ok(sensor.publish(SENSOR_TOPIC.format("aq-1"), b"own"))
    pipeline.wait(lambda: len(pipeline.messages) >= 1)
    assert pipeline.messages == [(SENSOR_TOPIC.format("aq-1"), b"own")]


@pytest.mark.integration
def test_the_pipeline_reads_everything_and_writes_only_its_own_topics(
    broker: DeployedMosquitto, clients: Callable[..., Client]
) -> None:
    reader = clients(broker.port, "pipeline", PASSWORDS["pipeline"])
    assert _ok(reader.subscribe("urbanpulse/#"))
    pipeline = clients(broker.port, "pipeline", PASSWORDS["pipeline"])
    deadletter = "urbanpulse/_deadletter/not_json/" + SENSOR_TOPIC.format("aq-1")
    alert = "urbanpulse/_alerts/bandung/coblong/aq-1"
    assert pipeline.publish(SENSOR_TOPIC.format("aq-1"), b"forged").text == "Not authorized"
    assert _ok(pipeline.publish(deadletter, b"dead letter"))
    assert _ok(pipeline.publish(alert, b"alert"))
    reader.wait(lambda: len(reader.messages) >= 2)
    assert reader.messages == [(deadletter, b"dead letter"), (alert, b"alert")]


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("aq-1", "wrong"), ("nobody", "x")],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_anonymous_and_unknown_clients_are_refused(
    broker: DeployedMosquitto,
    clients: Callable[..., Client],
    protocol: int,
    user: str | None,
    password: str | None,
) -> None:
    c = clients(broker.port, user, password, protocol=protocol)
    assert c.connack[0].failure
    assert c.connack[0].text == "Not authorized"


@pytest.mark.integration
def test_a_sensor_may_subscribe_but_receives_nothing(
    broker: DeployedMosquitto, clients: Callable[..., Client]
) -> None:
    """Mosquitto 2.0 grants the SUBSCRIBE and checks read access per message."""
    snoop = clients(broker.port, "aq-1", PASSWORDS["aq-1"])
    granted = snoop.subscribe("urbanpulse/#")
    assert _ok(granted)  # documented in deploy/mosquitto/README.md
    pipeline = clients(broker.port, "pipeline", PASSWORDS["pipeline"])
    assert _ok(pipeline.subscribe("urbanpulse/#"))
    other = clients(broker.port, "aq-2", PASSWORDS["aq-2"])
    assert _ok(other.publish(SENSOR_TOPIC.format("aq-2"), b"reading"))
    pipeline.wait(lambda: len(pipeline.messages) >= 1)
    # Anything sent to the snoop before this PUBACK arrives before it (one
    # connection, in order); the broker had routed "reading" already.
    assert _ok(snoop.publish(SENSOR_TOPIC.format("aq-1"), b"marker"))
    assert snoop.messages == []
    pipeline.wait(lambda: len(pipeline.messages) >= 2)
    assert [p for _, p in pipeline.messages] == [b"reading", b"marker"]


@pytest.mark.integration
def test_mqtt5_clients_are_offered_the_raised_receive_maximum(
    broker: DeployedMosquitto, clients: Callable[..., Client]
) -> None:
    c = clients(broker.port, "pipeline", PASSWORDS["pipeline"])
    # 65535 is the protocol default, so Mosquitto leaves the property out; with
    # the stock max_inflight_messages (20) it would say ReceiveMaximum 20.
    assert c.connack_props[0].get("ReceiveMaximum", 65535) == 65535


@pytest.mark.integration
def test_the_tls_listener_serves_the_generated_certificate(
    broker: DeployedMosquitto, clients: Callable[..., Client]
) -> None:
    ca = broker.root / "certs" / "ca.crt"
    assert not (broker.root / "certs" / "ca.key").exists()
    sensor = clients(broker.tls_port, "aq-1", PASSWORDS["aq-1"], ca_file=ca)
    assert _ok(sensor.connack[0])
    assert _ok(sensor.publish(SENSOR_TOPIC.format("aq-1"), b"over tls"))


@pytest.mark.integration
def test_an_offline_persistent_session_keeps_more_than_the_stock_1000_across_a_restart(
    broker: DeployedMosquitto, clients: Callable[..., Client]
) -> None:
    n = 1500  # the stock max_queued_messages (1000) would drop about 500 of these
    session_id = "urbanpulse-deploy-test"
    first = connect(
        broker.port,
        "pipeline",
        PASSWORDS["pipeline"],
        client_id=session_id,
        clean_start=False,
        session_expiry_s=3600,
    )
    topic = "urbanpulse/queued/coblong/air/aq-1"
    assert _ok(first.subscribe(topic))
    first.close()

    sensor = connect(broker.port, "aq-1", PASSWORDS["aq-1"])
    infos = [sensor.raw.publish(topic, str(i).encode(), qos=1) for i in range(n)]
    sensor.wait(lambda: len(sensor.pubacks) >= n, timeout_s=60)
    assert all(_ok(sensor.pubacks[i.mid]) for i in infos)
    sensor.close()

    broker.restart()  # a clean stop writes the persistence database

    again = clients(
        broker.port, "pipeline", PASSWORDS["pipeline"], client_id=session_id, clean_start=False
    )
    assert _ok(again.connack[0])
    again.wait(lambda: len(again.messages) >= n, timeout_s=60)
    assert sorted(int(p) for _, p in again.messages) == list(range(n))


@pytest.mark.integration
def test_broker_init_adds_and_removes_the_simulator_and_keeps_sensors(tmp_path: Path) -> None:
    secrets = {"mqtt_pipeline_password": "p1", "mqtt_simulator_password": "s1"}
    assert _run_broker_init(tmp_path, secrets).returncode == 0
    passwd = tmp_path / "auth" / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "aq-9", "x"], check=True)

    def users() -> list[str]:
        return sorted(line.split(":")[0] for line in passwd.read_text().splitlines())

    assert users() == ["aq-9", "pipeline", "simulator"]
    cert = (tmp_path / "certs" / "server.crt").read_bytes()

    secrets["mqtt_simulator_password"] = ""
    assert _run_broker_init(tmp_path, secrets).returncode == 0
    assert users() == ["aq-9", "pipeline"]
    assert (tmp_path / "certs" / "server.crt").read_bytes() == cert  # never replaced
    assert passwd.stat().st_mode & 0o077 == 0

    secrets["mqtt_pipeline_password"] = ""
    failed = _run_broker_init(tmp_path, secrets)
    assert failed.returncode != 0
    assert "mqtt_pipeline_password" in failed.stderr


# =========================================================================== settings


def settings_field(env_name: str) -> bool:
    """True when ``URBANPULSE_A__B__C`` names a field of the Settings model.

    Walks ``Settings.model_fields`` (nested sections are BaseModel fields),
    case-insensitively as pydantic-settings matches them.
    """
    prefix = "URBANPULSE_"
    if not env_name.startswith(prefix):
        return False
    model: type[BaseModel] = Settings
    parts = env_name[len(prefix) :].lower().split("__")
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            return False
        if i == len(parts) - 1:
            return True
        sub = info.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return False
        model = sub
    return False


def test_the_env_name_check_knows_real_fields_from_typos() -> None:
    assert settings_field("URBANPULSE_MQTT__HOST")
    assert settings_field("URBANPULSE_OUTPUT__INFLUX2__TOKEN_FILE")
    assert settings_field("URBANPULSE_STATE_DIR")
    assert not settings_field("URBANPULSE_MQTT_HOST")  # one underscore: silently ignored
    assert not settings_field("URBANPULSE_MQTT__HOST__X")
    assert not settings_field("URBANPULSE_OUTPUT__INFLUX3__URL")
    assert not settings_field("MQTT__HOST")


def _secret_stand_ins(text: str, tmp: Path) -> str:
    """Point every /run/secrets/... or /etc/urbanpulse/... file setting at a temp file."""

    def swap(m: re.Match[str]) -> str:
        stand_in = tmp / m.group(0).strip("/").replace("/", "_")
        stand_in.write_text("stand-in secret\n")
        return str(stand_in)

    return re.sub(r"/(?:run/secrets|etc/urbanpulse)/[\w./-]+", swap, text)


def _load_with_env(
    toml_text: str, env: dict[str, str], tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name in list(os.environ):
        if name.startswith("URBANPULSE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, _secret_stand_ins(value, tmp))
    path = tmp / "urbanpulse.toml"
    path.write_text(_secret_stand_ins(toml_text, tmp))
    return load_settings(path)


# =========================================================================== compose


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with no VAR set, as on a fresh checkout."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form for environment"
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _tagged(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and bool(tag) and tag != "latest" and "/" not in tag


def test_compose_services_have_pinned_images_health_checks_and_restart_policies() -> None:
    services = _compose()["services"]
    assert set(services) >= {"mosquitto", "influxdb", "urbanpulse", "sim", "grafana"}
    for name, svc in services.items():
        assert _tagged(_interpolate(svc["image"])), f"{name}: image {svc['image']!r} unpinned"
    assert _interpolate(services["influxdb"]["image"]) == "influxdb:2.7"
    assert _interpolate(services["urbanpulse"]["image"]).startswith("urbanpulse:")
    assert services["urbanpulse"]["build"]["dockerfile"] == "Dockerfile"
    assert (
        COMPOSE_FILE.parent / services["urbanpulse"]["build"]["context"] / "Dockerfile"
    ).is_file()
    for name in ("mosquitto", "influxdb", "grafana"):
        assert services[name]["healthcheck"]["test"], name
    # urbanpulse's health check is the image's HEALTHCHECK
    assert "healthcheck" not in services["urbanpulse"]
    assert re.search(r"^HEALTHCHECK ", (ROOT / "Dockerfile").read_text(), re.M)
    for name in ("urbanpulse", "mosquitto"):
        deps = services[name].get("depends_on", {})
        assert all(d["condition"].startswith("service_") for d in deps.values())
    assert services["urbanpulse"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert services["urbanpulse"]["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert services["sim"]["profiles"] == ["sim"]


def _conf_listeners() -> list[int]:
    return [
        int(line.split()[1])
        for line in MOSQUITTO_CONF.read_text().splitlines()
        if line.startswith("listener ")
    ]


def test_compose_ports_match_the_broker_listeners_and_the_pipeline_settings() -> None:
    services = _compose()["services"]
    listeners = _conf_listeners()
    assert listeners == [1883, 8883]
    published = {int(str(p).rsplit(":", 1)[1]) for p in services["mosquitto"]["ports"]}
    assert published == set(listeners)
    # only the TLS port is reachable from other hosts
    for p in services["mosquitto"]["ports"]:
        host_part = str(p).rsplit(":", 2)
        if str(p).endswith(":1883"):
            assert host_part[0] == "127.0.0.1", p
    for name in ("urbanpulse", "sim"):
        env = _service_env(services[name])
        assert env["URBANPULSE_MQTT__HOST"] == "mosquitto"
        assert int(env["URBANPULSE_MQTT__PORT"]) in listeners
    influx_port = {int(str(p).rsplit(":", 1)[1]) for p in services["influxdb"]["ports"]}
    url = _service_env(services["urbanpulse"])["URBANPULSE_OUTPUT__INFLUX2__URL"]
    assert url == f"http://influxdb:{influx_port.pop()}"


def test_every_urbanpulse_env_name_in_compose_is_a_setting() -> None:
    names = [
        k for svc in _compose()["services"].values() for k in _service_env(svc) if "URBANPULSE" in k
    ]
    assert len(names) >= 10
    assert [n for n in names if not settings_field(n)] == []


_SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET)$")


def test_compose_secrets_are_files_never_inline_values() -> None:
    compose = _compose()
    declared = compose["secrets"]
    for name, source in declared.items():
        assert set(source) == {"environment"}, name  # from .env, never written in the file
    example = (COMPOSE_FILE.parent / ".env.example").read_text()
    for source in declared.values():
        assert re.search(rf"^{source['environment']}=$", example, re.M), source
    for svc_name, svc in compose["services"].items():
        env = _service_env(svc)
        granted = set(svc.get("secrets", []))
        assert granted <= set(declared), svc_name
        for key, value in env.items():
            assert not _SECRET_NAME.search(key), f"{svc_name}: {key} carries a secret inline"
            if value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in granted, f"{svc_name}: {key}"


def test_the_compose_config_validates_with_the_services_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _compose()["services"]
    run = _load_with_env(
        COMPOSE_TOML.read_text(), _service_env(services["urbanpulse"]), tmp_path, monkeypatch
    )
    assert run.mqtt.host == "mosquitto"
    assert run.mqtt.username == "pipeline"
    assert run.mqtt.password is not None
    assert run.mqtt.qos == 1
    assert run.mqtt.clean_start is False
    assert run.mqtt.session_expiry_s > 0
    assert run.mqtt.client_id
    assert run.output.kind == "influx2"
    assert run.output.influx2.token is not None
    sim = _load_with_env(
        COMPOSE_TOML.read_text(), _service_env(services["sim"]), tmp_path, monkeypatch
    )
    assert sim.mqtt.username == "simulator"
    assert sim.mqtt.clean_start is True
    grace_s = int(services["urbanpulse"]["stop_grace_period"].removesuffix("s"))
    assert grace_s > run.shutdown_timeout_s
    mounts = services["urbanpulse"]["volumes"]
    assert "./urbanpulse.toml:/etc/urbanpulse/urbanpulse.toml:ro" in mounts
    assert str(run.state_dir).startswith("/var/lib/urbanpulse/")
    assert str(run.spool.directory).startswith("/var/lib/urbanpulse/")
    assert any(m.endswith(":/var/lib/urbanpulse") for m in mounts)


def test_compose_bind_mounts_exist() -> None:
    for name, svc in _compose()["services"].items():
        for mount in svc.get("volumes", []):
            source = str(mount).split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source}"


# =========================================================================== image


def test_the_dockerfile_is_multi_stage_slim_non_root_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK .*\n.*urbanpulse\", \"config\", \"check\"", text, re.M)
    assert re.search(r'^ENTRYPOINT \["urbanpulse"\]', text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM", text, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*")
        for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
        if p.endswith("*")
    ]
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for package in packages:
        assert f"COPY {package} ./{package}" in text, package
        assert f"!{package}/" in ignore, package


def test_the_image_default_config_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _load_with_env(IMAGE_TOML.read_text(), {}, tmp_path, monkeypatch)
    assert str(s.state_dir).startswith("/var/lib/urbanpulse/")
    assert str(s.output.files.directory).startswith("/var/lib/urbanpulse/")
    assert str(s.spool.directory).startswith("/var/lib/urbanpulse/")


def _third_party_imports() -> set[str]:
    import ast
    import sys

    local = {"urbanpulse", "ingest", "processors", "outputs", "sim", "alerts", "web", "__future__"}
    found: set[str] = set()
    for package in sorted(local - {"__future__"}):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {name for name in found - local if name not in sys.stdlib_module_names}


def test_every_runtime_import_is_a_declared_dependency() -> None:
    import importlib.metadata

    dists = importlib.metadata.packages_distributions()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {
        re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("_", "-")
        for d in pyproject["project"]["dependencies"]
    }
    missing = {
        name
        for name in _third_party_imports()
        if not {d.lower().replace("_", "-") for d in dists.get(name, [name])} & declared
    }
    assert missing == set()


def test_the_simulators_city_files_are_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = [
        f"{pkg}/{pat}" if pkg != "*" else pat
        for pkg, pats in pyproject["tool"]["setuptools"]["package-data"].items()
        for pat in pats
    ]
    data = [p for p in (ROOT / "sim" / "cities").iterdir() if p.is_file()]
    assert data
    for path in data:
        rel = path.relative_to(ROOT).as_posix()
        assert any(Path(rel).match(p) for p in patterns), rel


# =========================================================================== kubernetes


def _k8s_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    docs: list[dict[str, Any]] = []
    for name in listed:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def test_k8s_deployments_are_pinned_probed_bounded_and_non_root() -> None:
    docs = _k8s_docs()
    for name in ("urbanpulse", "mosquitto"):
        dep = _one(docs, "Deployment", name)
        spec = dep["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"]["type"] == "Recreate"
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        c = _container(dep)
        assert _tagged(c["image"])
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in c, (name, probe)
        for key in ("cpu", "memory"):
            assert key in c["resources"]["requests"], (name, key)
        assert "memory" in c["resources"]["limits"]
    up = _container(_one(docs, "Deployment", "urbanpulse"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert up[probe]["exec"]["command"][:3] == ["urbanpulse", "config", "check"]
        assert up[probe]["timeoutSeconds"] >= 10


def test_the_pdb_selects_the_pipeline_pods() -> None:
    docs = _k8s_docs()
    pdb = _one(docs, "PodDisruptionBudget", "urbanpulse")
    labels = _one(docs, "Deployment", "urbanpulse")["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector
    assert selector.items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    mosquitto_labels = _one(docs, "Deployment", "mosquitto")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert not selector.items() <= mosquitto_labels.items()


def test_k8s_services_select_the_broker_and_target_its_named_ports() -> None:
    docs = _k8s_docs()
    broker = _one(docs, "Deployment", "mosquitto")
    labels = broker["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in _container(broker)["ports"]}
    assert sorted(ports.values()) == _conf_listeners()
    services = [d for d in docs if d["kind"] == "Service"]
    assert services
    for svc in services:
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports
    public = _one(docs, "Service", "mosquitto-public")
    assert [p["port"] for p in public["spec"]["ports"]] == [8883]  # never the plain port
    config = _one(docs, "ConfigMap", "urbanpulse-config")["data"]["urbanpulse.toml"]
    assert (
        tomllib.loads(config)["mqtt"]["port"]
        == _one(docs, "Service", "mosquitto")["spec"]["ports"][0]["port"]
    )


def test_the_k8s_broker_config_is_the_shipped_one() -> None:
    data = _one(_k8s_docs(), "ConfigMap", "mosquitto-config")["data"]
    assert data == {"mosquitto.conf": MOSQUITTO_CONF.read_text(), "aclfile": ACL_FILE.read_text()}


def test_the_k8s_secret_holds_placeholders_only() -> None:
    docs = _k8s_docs()
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == ["urbanpulse-secrets"]
    values = secrets[0]["stringData"]
    assert set(values) == {"mqtt_password", "influx_token"}
    assert all(v.startswith("REPLACE-WITH-") for v in values.values())
    assert "data" not in secrets[0]


def test_the_k8s_config_validates_and_matches_the_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _k8s_docs()
    dep = _one(docs, "Deployment", "urbanpulse")
    c = _container(dep)
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    assert [n for n in env if not settings_field(n)] == []
    toml_text = _one(docs, "ConfigMap", "urbanpulse-config")["data"]["urbanpulse.toml"]
    s = _load_with_env(toml_text, env, tmp_path, monkeypatch)
    assert s.mqtt.password is not None
    assert s.output.influx2.token is not None
    assert s.mqtt.clean_start is False
    assert s.mqtt.client_id

    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    config_path = c["args"][c["args"].index("-c") + 1]
    assert config_path == f"{mounts['config']}/urbanpulse.toml"
    assert volumes["config"]["configMap"]["name"] == "urbanpulse-config"
    secret_dir = mounts["secrets"]
    assert volumes["secrets"]["secret"]["secretName"] == "urbanpulse-secrets"
    raw = tomllib.loads(toml_text)
    assert raw["mqtt"]["password_file"] == f"{secret_dir}/mqtt_password"
    assert raw["output"]["influx2"]["token_file"] == f"{secret_dir}/influx_token"
    assert raw["state_dir"].startswith(mounts["state"] + "/")
    assert raw["spool"]["directory"].startswith(mounts["state"] + "/")
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    _one(docs, "PersistentVolumeClaim", claim)
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > s.shutdown_timeout_s


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_manifest() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert len(rendered) == len(_k8s_docs())
    assert all(
        d["metadata"].get("namespace") == "urbanpulse" for d in rendered if d["kind"] != "Namespace"
    )


# =========================================================================== systemd


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read_string(SYSTEMD_UNIT.read_text())
    return unit


def test_the_systemd_unit_runs_hardened_with_state_and_a_bounded_stop() -> None:
    unit = _unit()
    svc = unit["Service"]
    assert svc["User"] == "urbanpulse"
    assert svc["EnvironmentFile"] == "/etc/urbanpulse/urbanpulse.env"
    assert svc["Restart"] == "on-failure"
    assert svc["RestartPreventExitStatus"] == "2"
    assert svc["ProtectSystem"] == "strict"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["StateDirectory"] == "urbanpulse"
    assert svc["ExecStart"].split()[-1] == "run"
    config = Path(svc["ExecStart"].split()[svc["ExecStart"].split().index("-c") + 1])
    assert config == Path("/etc/urbanpulse/urbanpulse.toml")
    example = tomllib.loads((DEPLOY / "urbanpulse.example.toml").read_text())
    assert int(svc["TimeoutStopSec"]) > example["shutdown_timeout_s"]
    assert example["state_dir"].startswith(f"/var/lib/{svc['StateDirectory']}/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_systemd_env_example_names_real_settings() -> None:
    text = (DEPLOY / "systemd" / "urbanpulse.env.example").read_text()
    names = re.findall(r"^#?(URBANPULSE_\w+)=", text, re.M)
    assert len(names) >= 4
    assert [n for n in names if not settings_field(n)] == []


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    text = SYSTEMD_UNIT.read_text()
    # Only the paths of an installed system change: the binary and the env file.
    text = text.replace("/opt/urbanpulse/bin/urbanpulse", shutil.which("true") or "/bin/true")
    text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/")
    unit = tmp_path / "urbanpulse.service"
    unit.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(unit) in line or "Unknown" in line or "Invalid" in line
    ]
    assert done.returncode == 0, done.stderr
    assert complaints == []


# =========================================================================== grafana


def _line_keys(line: str) -> tuple[str, set[str], set[str]]:
    """Measurement, tag keys and field keys of one line (no spaces in values)."""
    head, fields, _ts = line.split(" ")
    measurement, *tags = head.split(",")
    return (
        measurement,
        {t.split("=", 1)[0] for t in tags},
        {f.split("=", 1)[0] for f in fields.split(",")},
    )


def _index_lines() -> str:
    """``aq_index`` lines as outputs/_eventlines.py encodes them: one sensor row and
    one district row with every value present."""
    n_ispu, n_aqi = len(DEFAULT_ISPU_TABLE.pollutants), len(AQI_POLLUTANTS)
    registry = SeriesRegistry()
    sid = registry.resolve(SeriesKey("bandung", "coblong", Kind.AIR, "aq-1"))
    rows = IndexRows(
        ts_ns=np.array([1, 1], np.int64),
        sid=np.array([sid, -1], np.int32),
        district=np.array([0, 0], np.int32),
        n_sensors=np.array([1, 1], np.int32),
        ispu=np.array([60.0, 60.0]),
        ispu_category=np.array([1, 1], np.int8),
        ispu_dominant=np.array([0, 0], np.int8),
        ispu_sub=np.full((2, n_ispu), 60.0),
        ispu_mean=np.array([60.0, 60.0]),
        aqi=np.array([70.0, 70.0]),
        aqi_category=np.array([1, 1], np.int8),
        aqi_dominant=np.array([0, 0], np.int8),
        aqi_sub=np.full((2, n_aqi), 70.0),
        aqi_mean=np.array([70.0, 70.0]),
    )
    return encode_index_rows(
        rows,
        registry=registry,
        district_keys=[("bandung", "coblong")],
        ispu_pollutants=DEFAULT_ISPU_TABLE.pollutants,
    ).data.decode()


def _index_keys() -> tuple[set[str], set[str]]:
    """Tag and field keys of ``aq_index``."""
    text = _index_lines()
    # Category names hold spaces ("Tidak Sehat" is not among these rows: Sedang).
    tags: set[str] = set()
    fields: set[str] = set()
    for line in text.splitlines():
        m, t, f = _line_keys(line)
        assert m == "aq_index"
        tags |= t
        fields |= f
    return tags, fields


def _event_keys() -> tuple[set[str], set[str]]:
    """Tag and field keys of ``events`` (outputs/_eventlines.py), one event with
    every optional part set; ``label_x`` stands for any label."""
    event = Event(
        detector="congestion",
        state="start",
        severity=Severity.WARNING,
        kind="traffic",
        city="bandung",
        district="coblong",
        sensor_id="tr-1",
        lane=1,
        metric="averageVehicleSpeed",
        value=20.0,
        score=0.4,
        event_ns=1,
        detected_ns=2,
        message="m",
        labels={"x": "y"},
    )
    _m, tags, fields = _line_keys(encode_events([event]).data.decode())
    return tags, fields


def _written_names(widths_ms: list[int]) -> dict[str, tuple[set[str], set[str]]]:
    """Measurement -> (tags, fields) the pipeline writes (outputs/_lineprotocol.py,
    outputs/_eventlines.py)."""
    names: dict[str, tuple[set[str], set[str]]] = {}
    for kind in Kind:
        metrics = [info.field for info in METRIC_INFO.values() if info.kind is kind]
        names[kind.label] = (_TAGS, {*metrics, "flags"})
        for w in widths_ms:
            names[f"{kind.label}_{window_label(w)}"] = (
                _TAGS,
                {
                    f"{m}_{stat}"
                    for m in metrics
                    for stat in ("count", "mean", "min", "max", "std", "first", "last")
                },
            )
    names["aq_index"] = _index_keys()
    names["events"] = _event_keys()
    return names


_TAGS = {"city", "district", "sensor_id", "lane"}


def _detector_labels() -> dict[str, set[str]]:
    """Event ``detector`` name -> its label keys, from the detectors' own ``describe``
    over every code, state, metric and kind (combinations a detector does not
    describe raise and are skipped). Index (``ispu``, ``aqi``) and ``cardinality``
    events are not included: no dashboard filters on them."""
    out: dict[str, set[str]] = {}
    for det in build_detectors(DetectorConfig()):
        for kind in Kind:
            key = SeriesKey("c", "d", kind, "s", lane=1)
            for code, state, metric in itertools.product(range(4), range(3), [None, *Metric]):
                row = DetectionRow(
                    key=key, metric=metric, code=code, state=state, ts_ns=1,
                    value=1.0, score=0.5, ref=2.0, label=1,
                )  # fmt: skip
                try:
                    text = det.describe(row)
                except (IndexError, KeyError, TypeError, ValueError):
                    continue
                out.setdefault(text.detector, set()).update(text.labels)
    return out


def _tag_values() -> dict[str, set[str]]:
    """Values a dashboard may compare these tags with (``r.tag == "value"``)."""
    scopes = set(re.findall(r"scope=(\w+)", _index_lines()))
    return {
        "detector": set(_detector_labels()),
        "kind": {k.label for k in Kind},
        "scope": scopes,
        "severity": {s.label for s in Severity},
        "state": set(STATE_NAMES),
    }


#: Columns every Flux table has besides tags and fields.
_FLUX_COLUMNS = {"_measurement", "_field", "_value", "_time", "_start", "_stop"}


def _queries() -> list[tuple[str, str]]:
    """(where, query) of every panel target and query variable of every dashboard."""
    queries: list[tuple[str, str]] = []
    paths = sorted(DASHBOARDS.glob("*.json"))
    assert {p.name for p in paths} >= {
        "pipeline-health.json",
        "city-air-quality.json",
        "traffic.json",
    }
    for path in paths:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"], path.name
        for panel in dashboard["panels"]:
            where = f"{path.name}: {panel['title']}"
            assert panel["datasource"]["uid"] == "urbanpulse-influxdb", where
            assert panel["targets"], where
            queries.extend((where, t["query"]) for t in panel["targets"])
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                where = f"{path.name}: ${var['name']}"
                assert var["datasource"]["uid"] == "urbanpulse-influxdb", where
                queries.append((where, var["query"]))
    return queries


def _field_ok(name: str, allowed: set[str]) -> bool:
    """``allowed`` holds ``label_x`` for events: any ``label_<key>`` is written."""
    return name in allowed or (
        "label_x" in allowed and re.fullmatch(r"label_\w+", name) is not None
    )


def check_query(q: str, written: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """What in one Flux query the pipeline does not write (empty: all good)."""
    problems: list[str] = []
    measurements = set(re.findall(r'r\._measurement == "([^"]+)"', q))
    fields = set(re.findall(r'r\._field == "([^"]+)"', q))
    if not measurements:
        return ["no r._measurement filter"]
    if not fields:
        problems.append("no r._field filter")
    if re.search(r'r\["', q):
        problems.append("use r.name, so that names can be checked")
    if "from(bucket: v.defaultBucket)" not in q:
        problems.append("not from(bucket: v.defaultBucket)")
    unknown = measurements - written.keys()
    if unknown:
        return [*problems, f"unknown measurements {sorted(unknown)}"]
    tags = set().union(*(written[m][0] for m in measurements))
    allowed_fields = set().union(*(written[m][1] for m in measurements))
    problems += [f"unknown field {f}" for f in sorted(fields) if not _field_ok(f, allowed_fields)]
    made = set(re.findall(r"\{r with (\w+):", q))
    # After a pivot on _field the fields are columns.
    columns = tags | made | _FLUX_COLUMNS | (fields if "pivot(" in q else set())
    used = set(re.findall(r"\br\.(\w+)", q))
    for lists in re.findall(r"(?:columns|rowKey|columnKey): \[([^\]]*)\]", q):
        used |= set(re.findall(r'"([^"]+)"', lists))
    used |= set(re.findall(r'(?:column|valueColumn): "([^"]+)"', q))
    problems += [f"unknown column {c}" for c in sorted(used - columns)]
    for tag, values in _TAG_VALUES.items():
        for value in re.findall(rf'r\.{tag} == "([^"]*)"', q):
            if value not in values:
                problems.append(f"{tag} {value!r} is never written")
    detectors = set(re.findall(r'r\.detector == "([^"]*)"', q)) & _DETECTOR_LABELS.keys()
    if detectors:
        labels = set().union(*(_DETECTOR_LABELS[d] for d in detectors))
        problems += [
            f"no detector of {sorted(detectors)} has label {f[6:]}"
            for f in sorted(fields)
            if f.startswith("label_") and f[6:] not in labels
        ]
    return problems


_DETECTOR_LABELS = _detector_labels()
_TAG_VALUES = _tag_values()


def test_dashboard_queries_use_only_what_the_pipeline_writes() -> None:
    widths = tomllib.loads(COMPOSE_TOML.read_text())["windows"]["widths_ms"]
    written = _written_names(widths)
    queries = _queries()
    assert len(queries) >= 20
    measurements = set()
    for where, q in queries:
        assert check_query(q, written) == [], (where, q)
        measurements |= set(re.findall(r'r\._measurement == "([^"]+)"', q))
    assert {"air", "traffic", "air_1m", "traffic_1m", "aq_index", "events"} <= measurements


def test_the_dashboard_check_catches_a_misspelt_name() -> None:
    written = _written_names([60_000])
    assert "air_15m" not in written  # only configured widths
    assert {"scope", "sensor_id"} <= written["aq_index"][0]
    assert {"ispu", "ispu_category", "ispu_pm25", "aqi_pm25", "n_sensors"} <= written["aq_index"][1]
    assert {"detector", "state", "severity", "lane"} <= written["events"][0]
    assert {"message", "value", "score", "detected_ns"} <= written["events"][1]
    good = (
        "from(bucket: v.defaultBucket)\n"
        '  |> filter(fn: (r) => r._measurement == "air_1m" and r._field == "pm25_mean")\n'
        '  |> group(columns: ["district"])'
    )
    assert check_query(good, written) == []
    for wrong, right in [
        ('"pm2_5_mean"', '"pm25_mean"'),
        ('"air_15m"', '"air_1m"'),
        ('["distrikt"]', '["district"]'),
        ('r._field == "flags" or r.scope == "x"', 'r._field == "pm25_mean"'),
        ("v.bucket", "v.defaultBucket"),
    ]:
        assert check_query(good.replace(right, wrong), written) != [], wrong
    los = (
        "from(bucket: v.defaultBucket)\n"
        '  |> filter(fn: (r) => r._measurement == "events" and r.detector == "level_of_service"'
        ' and r.state == "change" and r.severity == "info" and r._field == "label_to")'
    )
    assert check_query(los, written) == []
    for wrong, right in [
        ("r.detektor", "r.detector"),
        ('"labels_to"', '"label_to"'),
        ('"label_too"', '"label_to"'),
        ('"level_of_servis"', '"level_of_service"'),
        ('"congestion"', '"level_of_service"'),  # congestion events have no label "to"
        ('"changed"', '"change"'),
        ('"informational"', '"info"'),
    ]:
        assert check_query(los.replace(right, wrong), written) != [], wrong
    assert _TAG_VALUES["scope"] == {"sensor", "district"}
    assert {"range", "dead", "congestion", "level_of_service"} <= _DETECTOR_LABELS.keys()
    index = (
        "from(bucket: v.defaultBucket)\n"
        '  |> filter(fn: (r) => r._measurement == "aq_index" and r._field == "ispu")\n'
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        '  |> sort(columns: ["ispu"])'
    )
    assert check_query(index, written) == []
    assert check_query(index.replace('["ispu"]', '["ispu_cat"]'), written) != []
    assert check_query(index.replace('"ispu")', '"ispu_cat")'), written) != []


def _ispu_steps(defaults: dict[str, Any]) -> list[tuple[float | None, str]]:
    return [(s["value"], s["color"].lower()) for s in defaults["thresholds"]["steps"]]


def test_the_air_quality_dashboard_colours_ispu_by_the_official_categories() -> None:
    expected: list[tuple[float | None, str]] = []
    lower: float | None = None
    for cat in ISPU_CATEGORIES:
        expected.append((lower, cat.colour.lower()))
        lower = cat.index_max + 1
    assert expected[1] == (51.0, "#0000cc")
    dashboard = json.loads((DASHBOARDS / "city-air-quality.json").read_text())
    ispu_panels = [
        p
        for p in dashboard["panels"]
        if any('r._field == "ispu"' in t["query"] for t in p["targets"])
    ]
    assert len(ispu_panels) >= 2
    for panel in ispu_panels:
        assert _ispu_steps(panel["fieldConfig"]["defaults"]) == expected, panel["title"]
    names = {
        name: spec["color"].lower()
        for panel in dashboard["panels"]
        for o in panel["fieldConfig"]["overrides"]
        if o["matcher"]["options"] == "ispu_category"
        for prop in o["properties"]
        if prop["id"] == "mappings"
        for mapping in prop["value"]
        for name, spec in mapping["options"].items()
    }
    assert names == {c.name: c.colour.lower() for c in ISPU_CATEGORIES}
    district = [q for _w, q in _queries() if 'r.scope == "district"' in q]
    assert district


def test_the_dashboards_filter_by_their_template_variables() -> None:
    for name in ("city-air-quality.json", "traffic.json"):
        dashboard = json.loads((DASHBOARDS / name).read_text())
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert variables == {"city", "district"}, name
        uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")]
        assert len(uids) == len(set(uids))
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                for var in variables:
                    assert f"r.{var} =~ /^${{{var}:regex}}$/" in target["query"], (
                        name,
                        panel["title"],
                        var,
                    )


def test_the_grafana_datasource_points_at_the_compose_influxdb() -> None:
    ds = yaml.safe_load((DATASOURCES / "influxdb.yaml").read_text())["datasources"][0]
    assert ds["uid"] == "urbanpulse-influxdb"
    assert ds["jsonData"]["version"] == "Flux"
    assert (
        ds["url"]
        == _service_env(_compose()["services"]["urbanpulse"])["URBANPULSE_OUTPUT__INFLUX2__URL"]
    )
    token = ds["secureJsonData"]["token"]
    assert token == "$__file{/run/secrets/influx_token}"
    assert "influx_token" in _compose()["services"]["grafana"]["secrets"]
