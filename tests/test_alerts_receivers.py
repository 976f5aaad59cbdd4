"""Receivers against real servers: a stdlib HTTP server checking the HMAC signature,
Prometheus Alertmanager (Debian), Mosquitto; and the disk outbox across a restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from servers import (
    MosquittoServer,
    QuietHandler,
    _http,
    _Process,
    _tcp_open,
    free_port,
    http_server,
)

from alerts import (
    SIGNATURE_HEADER,
    AlertDispatcher,
    AlertmanagerConfig,
    AlertsConfig,
    DiskQueue,
    LifecycleConfig,
    MqttAlertConfig,
    QueueConfig,
    Route,
    WebhookConfig,
    WebhookReceiver,
    build_receivers,
)
from ingest._mqtt import MqttClient, MqttOptions
from urbanpulse._clock import ManualClock
from urbanpulse._errors import RetryableOutputError
from urbanpulse._events import Event, EventState, Severity

SECRET = "s3cret"


def ev(state: EventState = "start", *, sensor: str = "s1") -> Event:
    now = time.time_ns()
    return Event(
        detector="haze",
        state=state,
        severity=Severity.WARNING,
        kind="air",
        city="Jakarta",
        district="Menteng",
        sensor_id=sensor,
        metric="pm25",
        value=180.0,
        event_ns=now,
        detected_ns=now,
        message=f"PM2.5 haze at {sensor}",
    )


# --------------------------------------------------------------------- webhook
class _Hook(QuietHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    bad_signatures: ClassVar[int] = 0
    fail_next: ClassVar[int] = 0

    def do_POST(self) -> None:  # noqa: N802 - the stdlib handler's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.fail_next > 0:
            cls.fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), want):
            cls.bad_signatures += 1
            self.send_response(401)
            self.end_headers()
            return
        cls.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()


@pytest.fixture
def hook_server() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "bad_signatures": 0, "fail_next": 0})
    with http_server(handler) as server:
        yield f"http://127.0.0.1:{server.server_port}/hook", handler


def hook_config(url: str, tmp_path: Path, *, secret: str = SECRET) -> AlertsConfig:
    return AlertsConfig(
        lifecycle=LifecycleConfig(flap_transitions=0),
        routes=(
            Route(
                name="all",
                receivers=("ops",),
                group_by=("district",),
                group_wait_s=0,
                group_interval_s=0,
            ),
        ),
        webhooks=(
            WebhookConfig(
                name="ops", url=url, secret=secret, retries=0, backoff_s=0.01, timeout_s=2
            ),
        ),
        queue=QueueConfig(directory=str(tmp_path / "q"), retry_backoff_s=0.01),
    )


def test_webhook_signed_payload_reaches_real_server(
    hook_server: tuple[str, type[_Hook]], tmp_path: Path
) -> None:
    url, handler = hook_server
    cfg = hook_config(url, tmp_path)

    async def main() -> None:
        disp = AlertDispatcher(cfg, build_receivers(cfg), clock=ManualClock())
        disp.handle([ev(sensor="s1"), ev(sensor="s2")])
        assert await disp.deliver_all()
        await disp.close()

    asyncio.run(main())
    assert handler.bad_signatures == 0
    (payload,) = handler.received
    assert payload["version"] == "4"
    assert payload["status"] == "firing"
    assert payload["groupLabels"] == {"district": "Menteng"}
    assert [a["labels"]["sensor_id"] for a in payload["alerts"]] == ["s1", "s2"]
    assert payload["alerts"][0]["annotations"]["summary"] == "PM2.5 haze at s1"


def test_webhook_wrong_secret_is_rejected_and_dropped(
    hook_server: tuple[str, type[_Hook]], tmp_path: Path
) -> None:
    url, handler = hook_server
    cfg = hook_config(url, tmp_path, secret="wrong")

    async def main() -> AlertDispatcher:
        disp = AlertDispatcher(cfg, build_receivers(cfg), clock=ManualClock())
        disp.handle([ev()])
        assert await disp.deliver_all()  # 401 is final: dropped, not retried
        await disp.close()
        return disp

    disp = asyncio.run(main())
    assert handler.bad_signatures == 1
    assert handler.received == []
    assert disp.counters()["ops.rejected"] == 1
    assert disp.counters()["ops.pending"] == 0


def test_outbox_survives_restart_and_retries_when_receiver_is_back(
    hook_server: tuple[str, type[_Hook]], tmp_path: Path
) -> None:
    url, handler = hook_server
    down = hook_config(f"http://127.0.0.1:{free_port()}/nobody", tmp_path)

    async def first_run() -> None:
        disp = AlertDispatcher(down, build_receivers(down), clock=ManualClock())
        disp.handle([ev(sensor="s1")])
        disp.engine.ingest([ev("end", sensor="s1")])
        disp.handle()
        assert not await disp.deliver_all()
        assert disp.counters()["ops.failures"] == 1
        assert disp.pending() == {"ops": 2}
        await disp.close()

    asyncio.run(first_run())
    # "restart": a new process with the receiver back at another address
    up = hook_config(url, tmp_path)

    async def second_run() -> AlertDispatcher:
        disp = AlertDispatcher(up, build_receivers(up), clock=ManualClock())
        assert disp.pending() == {"ops": 2}
        handler.fail_next = 1
        assert not await disp.deliver_all()  # 503: stays queued
        assert await disp.deliver_all()
        await disp.close()
        return disp

    disp = asyncio.run(second_run())
    assert [p["status"] for p in handler.received] == ["firing", "resolved"]
    assert disp.counters()["ops.delivered"] == 2
    assert DiskQueue(tmp_path / "q" / "ops", max_records=10).peek() is None


def test_dispatcher_task_consumes_bus_while_receiver_is_down(
    hook_server: tuple[str, type[_Hook]], tmp_path: Path
) -> None:
    url, handler = hook_server
    from urbanpulse._events import EventBus

    async def main() -> None:
        cfg = hook_config(url, tmp_path)
        bus = EventBus()
        disp = AlertDispatcher(cfg, build_receivers(cfg))
        handler.fail_next = 3
        task = asyncio.create_task(disp.run(bus.subscribe("alerts")))
        bus.publish([ev()])
        deadline = time.monotonic() + 10
        while not handler.received and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert disp.stats["ops"].failures == 3

    asyncio.run(main())
    assert len(handler.received) == 1


def test_disk_queue_cap_drops_oldest_and_ignores_torn_line(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path, max_records=3)
    for i in range(5):
        q.append({"i": i})
    assert q.dropped == 2
    q.pop()
    q.close()
    with open(tmp_path / "queue.jsonl", "ab") as fh:
        fh.write(b'{"seq": 99, "rec')  # crash mid-write
    q2 = DiskQueue(tmp_path, max_records=3)
    assert q2.torn == 1
    got = []
    while (item := q2.peek()) is not None:
        got.append(item["i"])
        q2.pop()
    assert got == [3, 4]
    q2.append({"i": 5})
    q2.close()
    assert DiskQueue(tmp_path, max_records=3).peek() == {"i": 5}


def test_disk_queue_compaction_keeps_order(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path, max_records=10_000, fsync=False)
    for i in range(1000):
        q.append({"i": i})
    for _ in range(900):
        q.pop()
    q.close()
    assert (tmp_path / "queue.jsonl").read_bytes().count(b"\n") < 1000
    q2 = DiskQueue(tmp_path, max_records=10_000)
    assert len(q2) == 100
    assert q2.peek() == {"i": 900}


# ---------------------------------------------------------------- alertmanager
class AlertmanagerServer(_Process):
    name = "alertmanager"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.port = free_port()
        self.config_path = self.data_dir / "alertmanager.yml"
        self.config_path.write_text(
            "route:\n  receiver: 'null'\n  group_wait: 1h\nreceivers:\n  - name: 'null'\n"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            "/usr/bin/prometheus-alertmanager",
            f"--config.file={self.config_path}",
            f"--storage.path={self.data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

    def _ready(self) -> bool:
        if not _tcp_open(self.port):
            return False
        status, _ = _http("GET", f"{self.url}/-/ready")
        return status == 200


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerServer]:
    if not Path("/usr/bin/prometheus-alertmanager").exists():
        pytest.fail("apt-get install -y prometheus-alertmanager", pytrace=False)
    with AlertmanagerServer(tmp_path_factory.mktemp("alertmanager")) as server:
        yield server


def am_alerts(url: str, sensor: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(
        f"{url}/api/v2/alerts?active=true&silenced=true&inhibited=true"
    ) as resp:
        items: list[dict[str, Any]] = json.loads(resp.read())
    return [a for a in items if a["labels"].get("sensor_id") == sensor]


@pytest.mark.integration
def test_alertmanager_receives_then_resolves(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    cfg = AlertsConfig(
        lifecycle=LifecycleConfig(flap_transitions=0),
        routes=(Route(name="am", receivers=("am",), group_wait_s=0, group_interval_s=0),),
        alertmanagers=(AlertmanagerConfig(name="am", url=alertmanager.url, retries=0),),
        queue=QueueConfig(directory=str(tmp_path / "q")),
        external_url="http://urbanpulse.example",
    )
    sensor = f"am-{time.time_ns()}"

    async def main() -> None:
        disp = AlertDispatcher(cfg, build_receivers(cfg), clock=ManualClock(time.time_ns()))
        disp.handle([ev(sensor=sensor)])
        assert await disp.deliver_all()
        (got,) = am_alerts(alertmanager.url, sensor)
        assert got["labels"]["alertname"] == "haze"
        assert got["labels"]["severity"] == "warning"
        assert got["status"]["state"] == "active"
        assert got["annotations"]["summary"] == f"PM2.5 haze at {sensor}"
        assert got["generatorURL"].startswith("http://urbanpulse.example/alerts/")
        disp.engine.ingest([ev("end", sensor=sensor)])
        disp.handle()
        assert await disp.deliver_all()
        assert disp.stats["am"].rejected == 0
        assert disp.stats["am"].delivered == 2
        await disp.close()

    asyncio.run(main())
    # resolved with endsAt <= now: Alertmanager no longer lists it as active
    assert am_alerts(alertmanager.url, sensor) == []


# ------------------------------------------------------------------------ mqtt
@pytest.mark.integration
def test_mqtt_retained_state_set_then_cleared(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    prefix = f"urbanpulse/_alerts/t{time.time_ns()}"
    cfg = AlertsConfig(
        lifecycle=LifecycleConfig(flap_transitions=0),
        routes=(Route(name="m", receivers=("mqtt",), group_wait_s=0, group_interval_s=0),),
        mqtt=(MqttAlertConfig(name="mqtt", topic_prefix=prefix),),
        queue=QueueConfig(directory=str(tmp_path / "q")),
    )

    def retained() -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        client: Any = paho.Client(CallbackAPIVersion.VERSION2)  # type: ignore[arg-type, unused-ignore]
        client.on_message = lambda _c, _u, msg: got.__setitem__(msg.topic, bytes(msg.payload))
        client.connect(mosquitto.host, mosquitto.port)
        client.subscribe(f"{prefix}/#", qos=1)
        client.loop_start()
        time.sleep(0.5)  # retained messages arrive right after SUBACK; no clock here
        client.loop_stop()
        client.disconnect()
        return got

    async def main() -> None:
        client = MqttClient(MqttOptions(host=mosquitto.host, port=mosquitto.port))
        runner = asyncio.create_task(client.run())
        await client.wait_connected(10)
        disp = AlertDispatcher(
            cfg, build_receivers(cfg, publish=client.publish), clock=ManualClock()
        )
        disp.handle([ev(sensor="m1")])
        assert await disp.deliver_all()
        got = await asyncio.to_thread(retained)
        (topic,) = got
        body = json.loads(got[topic])
        assert topic == f"{prefix}/{body['fingerprint']}"
        assert body["status"] == "firing"
        assert body["labels"]["sensor_id"] == "m1"
        disp.engine.ingest([ev("end", sensor="m1")])
        disp.handle()
        assert await disp.deliver_all()
        assert await asyncio.to_thread(retained) == {}
        await disp.close()
        await client.stop()
        await runner

    asyncio.run(main())


def test_retryable_error_for_unreachable_webhook(tmp_path: Path) -> None:
    cfg = hook_config(f"http://127.0.0.1:{free_port()}/", tmp_path)
    (receiver,) = build_receivers(cfg)
    with pytest.raises(RetryableOutputError):
        asyncio.run(receiver.send({"alerts": [], "status": "firing"}))


class _Broken:
    name = "ops"

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, payload: Any) -> None:
        self.calls += 1
        if self.calls == 1 and payload["status"] == "firing":
            raise KeyError("bug")


def test_receiver_bug_drops_that_record_and_keeps_going(tmp_path: Path) -> None:
    cfg = hook_config("http://unused/", tmp_path)
    broken = _Broken()

    async def main() -> AlertDispatcher:
        disp = AlertDispatcher(cfg, [broken], clock=ManualClock())
        disp.handle([ev(sensor="s1")])
        disp.engine.ingest([ev("end", sensor="s1")])
        disp.handle()
        assert await disp.deliver_all()
        await disp.close()
        return disp

    disp = asyncio.run(main())
    assert broken.calls == 2
    assert disp.stats["ops"].rejected == 1
    assert disp.stats["ops"].delivered == 1
    assert "KeyError" in disp.stats["ops"].last_error


def test_severity_map_rewrites_alert_common_and_group_labels() -> None:
    cfg = WebhookConfig(name="ops", url="http://unused/", severity_map={"critical": "page"})
    payload: dict[str, Any] = {
        "status": "firing",
        "groupLabels": {"severity": "critical"},
        "commonLabels": {"severity": "critical", "city": "Jakarta"},
        "alerts": [
            {"labels": {"severity": "critical", "sensor_id": "s1"}},
            {"labels": {"severity": "warning", "sensor_id": "s2"}},
        ],
    }
    body, _ = WebhookReceiver(cfg).encode(payload)
    sent = json.loads(body)
    assert [a["labels"] for a in sent["alerts"]] == [
        {"severity": "page", "sensor_id": "s1"},
        {"severity": "warning", "sensor_id": "s2"},
    ]
    assert sent["commonLabels"] == {"severity": "page", "city": "Jakarta"}
    assert sent["groupLabels"] == {"severity": "page"}
    assert payload["alerts"][0]["labels"]["severity"] == "critical"  # the input is not changed
