"""The MQTT client against a real Mosquitto: protocols, reconnect, auth, TLS."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import MosquittoServer

from ingest._mqtt import BackoffOptions, MqttClient, MqttOptions, TlsOptions, backoff_delays
from urbanpulse._errors import BrokerError

pytestmark = pytest.mark.integration


class ConfiguredMosquitto(MosquittoServer):
    """Mosquitto with extra configuration lines (auth, TLS listener)."""

    def __init__(self, data_dir: Path, extra: list[str]) -> None:
        self._extra = extra
        super().__init__(data_dir)

    def _config(self) -> str:
        base = super()._config().replace("allow_anonymous true\n", "")
        return base + "\n".join(self._extra) + "\n"


async def _until(predicate: object, timeout_s: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _roundtrip(sub_opts: MqttOptions, pub_opts: MqttOptions, n: int = 50) -> list[bytes]:
    got: list[bytes] = []
    sub = MqttClient(
        sub_opts, subscriptions=(("t/#", 1),), on_message=lambda _t, p, _q: got.append(p)
    )
    pub = MqttClient(pub_opts)
    tasks = [asyncio.create_task(sub.run()), asyncio.create_task(pub.run())]
    try:
        await sub.wait_connected(10)
        await pub.wait_connected(10)
        await asyncio.sleep(0.2)
        for i in range(n):
            assert pub.publish(f"t/{i % 3}", str(i).encode(), qos=1)
        await _until(lambda: len(got) >= n)
    finally:
        await sub.stop()
        await pub.stop()
        await asyncio.gather(*tasks)
    return got


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_receives_with_both_protocol_versions(mosquitto: MosquittoServer, protocol: str) -> None:
    opts = MqttOptions(port=mosquitto.port, protocol=protocol)  # type: ignore[arg-type]
    got = asyncio.run(_roundtrip(opts, opts))
    assert sorted(int(p) for p in got) == list(range(50))


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    with MosquittoServer(tmp_path) as server:
        yield server


def test_reconnects_and_resubscribes_after_a_broker_restart(own_mosquitto: MosquittoServer) -> None:
    got: list[bytes] = []

    async def go() -> MqttClient:
        fast = BackoffOptions(initial_s=0.05, max_s=0.2)
        sub = MqttClient(
            MqttOptions(port=own_mosquitto.port, backoff=fast),
            subscriptions=(("t/#", 0),),
            on_message=lambda _t, p, _q: got.append(p),
        )
        pub = MqttClient(MqttOptions(port=own_mosquitto.port, backoff=fast))
        tasks = [asyncio.create_task(sub.run()), asyncio.create_task(pub.run())]
        try:
            await sub.wait_connected(10)
            await pub.wait_connected(10)
            await asyncio.sleep(0.2)
            pub.publish("t/a", b"before")
            await _until(lambda: got == [b"before"])
            await asyncio.to_thread(own_mosquitto.restart)
            await _until(lambda: sub.stats.connects >= 2 and pub.stats.connects >= 2, 20)
            await asyncio.sleep(0.3)  # SUBACK of the fresh subscription
            pub.publish("t/a", b"after")
            await _until(lambda: got == [b"before", b"after"])
        finally:
            await sub.stop()
            await pub.stop()
            await asyncio.gather(*tasks)
        return sub

    sub = asyncio.run(go())
    assert sub.stats.disconnects >= 1


def test_connect_failures_retry_with_backoff_until_the_broker_appears(tmp_path: Path) -> None:
    server = MosquittoServer(tmp_path)  # not started yet
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)
        if len(delays) == 3:
            await asyncio.to_thread(server.start)
        await asyncio.sleep(0)

    async def go() -> MqttClient:
        client = MqttClient(
            MqttOptions(
                port=server.port, backoff=BackoffOptions(initial_s=1, max_s=4, jitter=False)
            ),
            sleep=sleep,
        )
        task = asyncio.create_task(client.run())
        try:
            await client.wait_connected(30)
        finally:
            await client.stop()
            await task
        return client

    try:
        client = asyncio.run(go())
    finally:
        server.stop()
    assert delays[:3] == [1, 2, 4]
    assert client.stats.failed_attempts == 3
    assert client.stats.connects == 1


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    delay = backoff_delays(BackoffOptions(initial_s=0.5, max_s=8), random.Random(1))
    caps = [0.5, 1, 2, 4, 8, 8, 8]
    samples = [[delay(i) for _ in range(200)] for i in range(len(caps))]
    for cap, xs in zip(caps, samples, strict=True):
        assert all(0 <= x <= cap for x in xs)
        assert max(xs) > cap * 0.8  # full jitter spans the range
    fixed = backoff_delays(BackoffOptions(initial_s=0.5, max_s=8, jitter=False), random.Random())
    assert [fixed(i) for i in range(6)] == [0.5, 1, 2, 4, 8, 8]


def _password_file(path: Path, user: str, password: str) -> Path:
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), user, password], check=True)
    path.chmod(0o600)
    return path


def test_username_password_and_a_permanent_refusal(tmp_path: Path) -> None:
    pw = _password_file(tmp_path / "passwd", "pipeline", "s3cret")
    server = ConfiguredMosquitto(
        tmp_path / "broker", [f"password_file {pw}", "allow_anonymous false"]
    )
    server.data_dir.mkdir(exist_ok=True)
    with server:
        good = MqttOptions(port=server.port, username="pipeline", password="s3cret")
        got = asyncio.run(_roundtrip(good, good, n=5))
        assert len(got) == 5

        async def bad() -> None:
            client = MqttClient(
                MqttOptions(port=server.port, username="pipeline", password="wrong")
            )
            await asyncio.wait_for(client.run(), 10)

        with pytest.raises(BrokerError, match="refused"):
            asyncio.run(bad())


def _make_certs(d: Path) -> tuple[Path, Path, Path]:
    ca_key, ca_crt = d / "ca.key", d / "ca.crt"
    key, csr, crt = d / "server.key", d / "server.csr", d / "server.crt"

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=UrbanPulse test CA", "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    for p in (key, crt, ca_crt):
        p.chmod(0o644)
    return ca_crt, crt, key


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca, crt, key = _make_certs(tmp_path)
    server = ConfiguredMosquitto(
        tmp_path / "broker",
        ["allow_anonymous true", f"certfile {crt}", f"keyfile {key}", f"cafile {ca}"],
    )
    server.data_dir.mkdir(exist_ok=True)
    with server:
        opts = MqttOptions(host="127.0.0.1", port=server.port, tls=TlsOptions(ca_file=str(ca)))
        got = asyncio.run(_roundtrip(opts, opts, n=5))
        assert len(got) == 5

        async def untrusted() -> None:
            client = MqttClient(
                MqttOptions(
                    port=server.port,
                    tls=TlsOptions(),  # system CAs only: the private CA is not trusted
                    connect_timeout_s=3,
                    backoff=BackoffOptions(initial_s=0.01, max_s=0.01),
                )
            )
            task = asyncio.create_task(client.run())
            await asyncio.sleep(1.0)
            assert not client.connected
            assert client.stats.failed_attempts >= 1
            await client.stop()
            await task

        asyncio.run(untrusted())
