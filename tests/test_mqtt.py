"""The MQTT client against a real Mosquitto: protocols, reconnect, auth, TLS."""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.protocol import MQTTProtocol
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import MosquittoServer

from ingest._mqtt import (
    BackoffOptions,
    MqttClient,
    MqttOptions,
    TlsOptions,
    backoff_delays,
    gmqtt_api_problems,
)
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


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "gmqtt"])
@pytest.mark.parametrize("manual_ack", [False, True], ids=["auto-ack", "manual-ack"])
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_receives_with_both_protocol_versions(
    mosquitto: MosquittoServer, protocol: str, manual_ack: bool, fast: bool
) -> None:
    opts = MqttOptions(port=mosquitto.port, protocol=protocol)  # type: ignore[arg-type]
    sub = replace(opts, manual_ack=manual_ack, fast_receive=fast)
    got = asyncio.run(_roundtrip(sub, opts))
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


# -- the PUBLISH fast path against gmqtt's own receive path, no broker ----------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


#: MQTT 5 PUBLISH properties (already encoded, without the length prefix).
def _topic_alias(alias: int) -> bytes:
    return b"\x23" + alias.to_bytes(2, "big")


USER_PROPERTY = b"\x26\x00\x01k\x00\x02vv"
PAYLOAD_FORMAT = b"\x01\x01"
BAD_PROPERTY = b"\x7f\x00"  # no such property id: gmqtt skips the message


def _publish(
    topic: bytes, payload: bytes, *, qos: int, mid: int = 0, v5: bool, props: bytes = b""
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += _varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + _varint(len(body)) + body


PINGRESP = b"\xd0\x00"


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class Wired:
    """A gmqtt client built by ``MqttClient`` on a fake transport; bytes in, calls out."""

    def __init__(self, opts: MqttOptions, handler: Any, *, v5: bool) -> None:
        self.stats_owner = MqttClient(opts, on_message=handler)
        self.client = self.stats_owner._new_client()
        self.client._connection_state.protocol_version = MQTTv50 if v5 else MQTTv311
        self.transport, self.proto, self.conn = self.connect()
        self._buf = b""

    def connect(self) -> tuple[FakeTransport, Any, Any]:
        """A new connection of the same client (as gmqtt's own reconnect makes)."""
        transport = FakeTransport()
        proto = MQTTProtocol(
            connection_state=self.client._connection_state,
            id_generator=self.client._package_handler.id_generator,
        )
        proto._transport = transport
        conn = MQTTConnection(
            transport, proto, True, 0, package_handler=self.client._package_handler
        )
        self.client._connection = conn
        return transport, proto, conn

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:  # what MQTTProtocol._read_loop does with each read
            self._buf += chunk
            used = self.proto._read_packet(self._buf)
            assert used >= 0
            self._buf = self._buf[used:]


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _pubacks(mids: list[int], *, v5: bool) -> bytes:
    tail = b"\x00\x00" if v5 else b""
    return b"".join(bytes([0x40, 4 if v5 else 2]) + m.to_bytes(2, "big") + tail for m in mids)


TOPICS = st.sampled_from(
    [b"urbanpulse/bandung/coblong/air/AQ-0001", b"t/\xc3\xa9", b"t/\xff\xfe", b"a", b""]
)
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(16_370, 16_400), st.integers(0, 255)),
)
PROPS = st.sampled_from(
    [b"", b"", USER_PROPERTY, PAYLOAD_FORMAT, BAD_PROPERTY, _topic_alias(1), _topic_alias(2)]
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, bytes]:
    v5 = draw(st.booleans())
    out = bytearray()
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["publish", "publish", "publish", "ping", "malformed"]))
        if kind == "ping":
            out += PINGRESP
        elif kind == "malformed":  # topic length beyond the packet
            out += b"\x30\x03\x00\x09a"
        else:
            qos = draw(st.integers(0, 1))
            props = draw(PROPS) if v5 else b""
            topic, payload = draw(TOPICS), draw(PAYLOADS)
            out += _publish(topic, payload, qos=qos, mid=i + 1, v5=v5, props=props)
    return v5, bytes(out)


@settings(max_examples=150, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 50_000), max_size=6))
def test_fast_path_delivers_and_acknowledges_what_gmqtt_does(
    stream: tuple[bool, bytes], cuts: list[int]
) -> None:
    v5, data = stream

    async def run(fast: bool) -> tuple[list[tuple[str, bytes, int]], bytes]:
        got: list[tuple[str, bytes, int]] = []
        opts = MqttOptions(fast_receive=fast)
        wired = Wired(opts, lambda t, p, q: got.append((t, p, q)), v5=v5)
        wired.feed(*_chunks(data, cuts))
        return got, bytes(wired.transport.written)

    fast_got, fast_acks = asyncio.run(run(True))
    gmqtt_got, gmqtt_acks = asyncio.run(run(False))
    assert fast_got == gmqtt_got
    assert fast_acks == gmqtt_acks


def test_fast_path_is_installed_and_parses_a_topic_alias() -> None:
    got: list[tuple[str, bytes, int]] = []

    async def go() -> None:
        wired = Wired(MqttOptions(), lambda t, p, q: got.append((t, p, q)), v5=True)
        assert "read_packet" in repr(wired.proto._read_packet)  # ours, not gmqtt's
        wired.feed(
            _publish(b"a/b", b"1", qos=1, mid=7, v5=True, props=_topic_alias(3)),
            _publish(b"", b"2", qos=0, v5=True, props=_topic_alias(3)),
            _publish(b"", b"3", qos=0, v5=True, props=_topic_alias(4)),  # unknown alias
        )
        assert bytes(wired.transport.written) == _pubacks([7], v5=True)

    asyncio.run(go())
    assert got == [("a/b", b"1", 1), ("a/b", b"2", 0)]


def _qos1(mids: list[int], *, v5: bool) -> bytes:
    return b"".join(_publish(b"t/x", str(m).encode(), qos=1, mid=m, v5=v5) for m in mids)


@pytest.mark.parametrize("v5", [True, False], ids=["v5", "v3.1.1"])
def test_manual_ack_waits_for_each_batch_future_and_keeps_arrival_order(v5: bool) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        batch_a, batch_b = loop.create_future(), loop.create_future()
        waiters: list[asyncio.Future[None] | None] = [batch_a] * 3 + [None] + [batch_b] * 2
        calls = iter(waiters)
        wired = Wired(MqttOptions(manual_ack=True), lambda _t, _p, _q: next(calls), v5=v5)
        data = _qos1([5, 3, 9, 4, 8, 1], v5=v5)
        wired.feed(data[:40], data[40:])  # batch A spans two reads
        await asyncio.sleep(0)
        assert bytes(wired.transport.written) == _pubacks([4], v5=v5)  # the None: at once
        batch_b.set_result(None)
        await asyncio.sleep(0)
        assert bytes(wired.transport.written) == _pubacks([4, 8, 1], v5=v5)
        batch_a.set_result(None)
        await asyncio.sleep(0)
        assert bytes(wired.transport.written) == _pubacks([4, 8, 1, 5, 3, 9], v5=v5)

    asyncio.run(go())


def test_manual_ack_of_coroutine_awaitables_waits_for_each_to_finish() -> None:
    async def go() -> None:
        gate = asyncio.Event()

        async def durable() -> None:
            await gate.wait()

        wired = Wired(MqttOptions(manual_ack=True), lambda _t, _p, _q: durable(), v5=True)
        wired.feed(_qos1([6, 7], v5=True))
        await asyncio.sleep(0)
        assert wired.transport.written == b""
        gate.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert bytes(wired.transport.written) == _pubacks([6, 7], v5=True)

    asyncio.run(go())


def test_manual_ack_never_acknowledges_on_a_newer_or_closed_connection() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        batch_a, batch_b = loop.create_future(), loop.create_future()
        current = [batch_a]
        wired = Wired(MqttOptions(manual_ack=True), lambda _t, _p, _q: current[0], v5=True)
        first = wired.transport
        wired.feed(_qos1([1, 2], v5=True))
        new_transport, wired.proto, wired.conn = wired.connect()  # a reconnect
        current[0] = batch_b
        wired.feed(_qos1([1, 2, 3], v5=True))  # the broker reuses the packet ids
        batch_a.set_result(None)
        await asyncio.sleep(0)
        assert first.written == b""
        assert new_transport.written == b""  # batch A's ids must not ack batch B's messages
        assert wired.stats_owner.stats.acks_dropped == 2
        batch_b.set_result(None)
        await asyncio.sleep(0)
        assert bytes(new_transport.written) == _pubacks([1, 2, 3], v5=True)
        # the live connection closing before the batch is durable: nothing is written
        batch_c = loop.create_future()
        current[0] = batch_c
        wired.feed(_qos1([4], v5=True))
        new_transport.closing = True
        batch_c.set_result(None)
        await asyncio.sleep(0)
        assert bytes(new_transport.written) == _pubacks([1, 2, 3], v5=True)
        assert wired.stats_owner.stats.acks_dropped == 3

    asyncio.run(go())


def test_manual_ack_withholds_acks_when_the_handler_or_its_future_fails() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        failing, cancelled = loop.create_future(), loop.create_future()
        plan: list[Any] = [failing, failing, cancelled, "raise", 42]
        calls = iter(plan)

        def handler(_t: str, _p: bytes, _q: int) -> Any:
            nxt = next(calls)
            if nxt == "raise":
                raise ValueError("handler bug")
            return nxt

        wired = Wired(MqttOptions(manual_ack=True), handler, v5=False)
        wired.feed(_qos1([1, 2, 3, 4, 5], v5=False))
        failing.set_exception(OSError("spool full"))
        cancelled.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert wired.transport.written == b""
        assert wired.stats_owner.stats.acks_refused == 5
        failing.exception()  # retrieved: no "never retrieved" warning

    asyncio.run(go())


def test_auto_ack_acknowledges_on_receipt_even_when_the_handler_raises() -> None:
    def handler(_t: str, p: bytes, _q: int) -> None:
        if p == b"2":
            raise ValueError("handler bug")

    async def go() -> bytes:
        wired = Wired(MqttOptions(), handler, v5=True)
        wired.feed(_qos1([1, 2, 3], v5=True))
        return bytes(wired.transport.written)

    assert asyncio.run(go()) == _pubacks([1, 2, 3], v5=True)


def test_gmqtt_api_check_names_what_is_missing() -> None:
    assert gmqtt_api_problems("0.8.0") == []
    assert "gmqtt 0.9.1 is installed" in gmqtt_api_problems("0.9.1")[0]
    problems = gmqtt_api_problems("0.8.0", ((MQTTProtocol, "_read_packet_v2"),))
    assert problems == ["gmqtt.mqtt.protocol.MQTTProtocol._read_packet_v2 is missing"]


def test_manual_ack_against_mosquitto_acks_only_durable_batches(
    mosquitto: MosquittoServer,
) -> None:
    """Unacknowledged QoS 1 messages come back on the next session; acknowledged do not."""

    async def go() -> tuple[list[bytes], MqttClient]:
        opts = MqttOptions(
            port=mosquitto.port,
            client_id=f"manual-{random.randrange(10**9)}",
            clean_start=False,
            session_expiry_s=600,
            manual_ack=True,
        )
        loop = asyncio.get_running_loop()
        durable, never = loop.create_future(), loop.create_future()
        got: list[bytes] = []

        def handler(_t: str, p: bytes, _q: int) -> asyncio.Future[None]:
            got.append(p)
            return durable if int(p) < 5 else never

        sub = MqttClient(opts, subscriptions=(("m/#", 1),), on_message=handler)
        pub = MqttClient(MqttOptions(port=mosquitto.port))
        tasks = [asyncio.create_task(sub.run()), asyncio.create_task(pub.run())]
        await sub.wait_connected(10)
        await pub.wait_connected(10)
        await asyncio.sleep(0.2)
        for i in range(10):
            assert pub.publish("m/x", str(i).encode(), qos=1)
        await _until(lambda: len(got) >= 10)
        durable.set_result(None)
        await asyncio.sleep(0.3)  # the PUBACKs reach the broker
        await sub.stop()
        never.set_result(None)  # too late: that connection is gone
        await asyncio.sleep(0)
        again: list[bytes] = []
        sub2 = MqttClient(
            opts, subscriptions=(("m/#", 1),), on_message=lambda _t, p, _q: again.append(p)
        )
        tasks.append(asyncio.create_task(sub2.run()))
        try:
            await _until(lambda: len(again) >= 5)
            await asyncio.sleep(0.3)
        finally:
            await sub2.stop()
            await pub.stop()
            await asyncio.gather(*tasks)
        return again, sub

    again, sub = asyncio.run(go())
    assert sorted(int(p) for p in again) == [5, 6, 7, 8, 9]
    assert sub.stats.acks_dropped == 5
