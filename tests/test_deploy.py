"""Deployment files: the broker configuration against a real Mosquitto, and the
structure of the compose file, Kubernetes manifests, systemd unit, Dockerfile
and Grafana dashboard, checked against the Settings model and the schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from servers import MosquittoServer, free_port

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
        props: Any = Properties(PacketTypes.CONNECT)
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
    n = 3000  # the stock max_queued_messages (1000) would drop about 2000 of these
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
