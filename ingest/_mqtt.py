"""The MQTT client: the one module that imports the MQTT library (gmqtt).

gmqtt was chosen by measurement (docs/performance.md): it receives as fast as
Mosquitto delivers, where paho-mqtt and aiomqtt top out far lower.

Reconnection is ours, not gmqtt's: every attempt builds a fresh gmqtt client,
connects, and re-subscribes; between attempts we wait a capped exponential
backoff with full jitter. With ``clean_start=False`` and a fixed client id the
broker keeps the session (and queued QoS 1 messages) across those attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import gmqtt
import numpy as np
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError, MqttPackageHandler
from gmqtt.mqtt.package import Package
from gmqtt.mqtt.protocol import MQTTProtocol

from urbanpulse._errors import BrokerError

__all__ = [
    "GMQTT_VERSIONS",
    "BackoffOptions",
    "MessageHandler",
    "MqttClient",
    "MqttOptions",
    "MqttStats",
    "TlsOptions",
    "backoff_delays",
    "gmqtt_api_problems",
]

log = logging.getLogger("urbanpulse.mqtt")

#: gmqtt versions whose private receive path the fast path (``_FastReceiver``) was
#: written and tested against. Another version fails the import: review this module
#: and docs/_mqtt_fastpath.md, then add it here.
GMQTT_VERSIONS = frozenset({"0.8.0"})

#: The private gmqtt API the fast path relies on (class, attribute).
_GMQTT_API: tuple[tuple[type, str], ...] = (
    (MqttPackageHandler, "set_connection"),
    (MqttPackageHandler, "current_connection"),
    (MqttPackageHandler, "_parse_properties"),
    (MqttPackageHandler, "clear_topics_aliases"),
    (MQTTProtocol, "_read_packet"),
    (MQTTProtocol, "_read_loop"),
    (MQTTConnection, "put_package"),
    (MQTTConnection, "send_package"),
    (MQTTConnection, "is_closing"),
)
#: Instance attributes, checked on the first client and connection.
_CLIENT_ATTRS = ("_package_handler",)
_PACKAGE_HANDLER_ATTRS = ("_server_topics_aliases", "_connection_state")
_CONNECTION_ATTRS = ("_protocol", "_last_data_in")


def gmqtt_api_problems(version: str, api: tuple[tuple[type, str], ...] = _GMQTT_API) -> list[str]:
    """What is wrong with the installed gmqtt for the fast path (empty: nothing)."""
    problems = []
    if version not in GMQTT_VERSIONS:
        problems.append(
            f"gmqtt {version} is installed, the fast path supports {sorted(GMQTT_VERSIONS)}"
        )
    problems.extend(
        f"{cls.__module__}.{cls.__qualname__}.{name} is missing"
        for cls, name in api
        if not hasattr(cls, name)
    )
    return problems


def _check_gmqtt() -> None:
    problems = gmqtt_api_problems(str(getattr(gmqtt, "__version__", "unknown")))
    if problems:
        raise ImportError(
            "ingest._mqtt parses PUBLISH packets itself through gmqtt's private receive API "
            "(docs/_mqtt_fastpath.md), and the installed gmqtt does not match: "
            + "; ".join(problems)
            + ". Install gmqtt==0.8.0, or review the fast path against the new version."
        )


_check_gmqtt()


def _missing(obj: object, names: tuple[str, ...]) -> None:
    gone = [n for n in names if not hasattr(obj, n)]
    if gone:
        err = BrokerError(
            f"gmqtt's private API changed: {type(obj).__qualname__} has no {', '.join(gone)}; "
            "set MqttOptions(fast_receive=False) or pin gmqtt==0.8.0"
        )
        err.permanent = True  # type: ignore[attr-defined]
        raise err


#: Called for every message: (topic, payload, qos). Must be cheap: it runs on the
#: event loop for each message. With ``manual_ack`` it may return an awaitable;
#: the message is acknowledged to the broker only once that completes.
MessageHandler = Callable[[str, bytes, int], "Awaitable[None] | None"]

#: CONNACK codes that retrying cannot fix (bad credentials, not authorised, banned).
_PERMANENT_CONNACK = frozenset({1, 2, 4, 5, 132, 133, 134, 135, 138, 140})


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsOptions:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: Skip hostname and certificate checks. For lab setups only.
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffOptions:
    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    #: Full jitter: each delay is uniform in [0, capped exponential].
    jitter: bool = True


def backoff_delays(options: BackoffOptions, rng: random.Random) -> Callable[[int], float]:
    """Delay before reconnect attempt ``n`` (0-based): capped exponential, jittered."""

    def delay(attempt: int) -> float:
        cap = min(options.max_s, options.initial_s * options.multiplier ** min(attempt, 64))
        return rng.uniform(0.0, cap) if options.jitter else cap

    return delay


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    #: Fixed id for a persistent session; None draws a random one per process.
    client_id: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None
    keepalive_s: int = 30
    clean_start: bool = True
    #: MQTT 5 session expiry (s) when clean_start is False; 0xFFFFFFFF = never.
    session_expiry_s: int = 0
    #: MQTT 5 receive maximum: how many unacknowledged QoS>0 messages the broker
    #: may have in flight to us.
    receive_maximum: int | None = None
    connect_timeout_s: float = 10.0
    backoff: BackoffOptions = field(default_factory=BackoffOptions)
    #: Acknowledge QoS 1 messages only when the handler's awaitable completes
    #: (at-least-once to storage). Off: acknowledged on receipt.
    manual_ack: bool = False
    #: Frame and parse PUBLISH packets in this module (``_FastReceiver``) instead of
    #: gmqtt's per-packet path; same semantics, about half the CPU per message
    #: (docs/_mqtt_fastpath.md). False: gmqtt's own receive path.
    fast_receive: bool = True


@dataclass(slots=True)
class MqttStats:
    connects: int = 0
    disconnects: int = 0
    failed_attempts: int = 0
    last_connected_ns: int = 0
    published: int = 0
    publish_failed: int = 0
    #: QoS 1 acknowledgements not sent because the connection their messages came
    #: on was gone when the handler's awaitable completed (fast path; the broker
    #: redelivers those messages on the next connection).
    acks_dropped: int = 0
    #: QoS 1 messages left unacknowledged because the handler raised or its
    #: awaitable failed or was cancelled (fast path).
    acks_refused: int = 0


class MqttClient:
    """A reconnecting MQTT client.

    ``run()`` keeps a connection up until ``stop()``: connect, subscribe to the
    given filters, deliver every message to ``on_message``, and on loss wait a
    backoff and start over. ``publish`` is fire-and-forget and returns False when
    not connected (the caller counts it).
    """

    def __init__(
        self,
        options: MqttOptions,
        *,
        subscriptions: tuple[tuple[str, int], ...] = (),
        on_message: MessageHandler | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._opts = options
        self._subs = subscriptions
        self._on_message = on_message
        self._sleep = sleep
        self._delay = backoff_delays(options.backoff, rng or random.Random())
        self._client_id = options.client_id or f"urbanpulse-{uuid.uuid4().hex[:12]}"
        self._client: Any = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = asyncio.Event()
        self.stats = MqttStats()

    def set_handler(self, on_message: MessageHandler) -> None:
        """Set the per-message callback (before ``run``)."""
        self._on_message = on_message

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError as exc:
            raise BrokerError(
                f"not connected to {self._opts.host}:{self._opts.port} after {timeout_s} s"
            ) from exc

    # -- the connection loop ---------------------------------------------------------
    async def run(self) -> None:
        """Stay connected until stop(). Raises BrokerError on a permanent refusal."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._connect_once()
            except BrokerError as exc:
                self.stats.failed_attempts += 1
                if getattr(exc, "permanent", False):
                    raise
                delay_s = self._delay(attempt)
                attempt += 1
                log.warning(
                    "mqtt connect failed",
                    extra={"error": str(exc), "attempt": attempt, "retry_in_s": round(delay_s, 2)},
                )
                await self._wait_stop(delay_s)
                continue
            attempt = 0
            await self._wait_lost_or_stop()
            self._connected.clear()
            if not self._stopping.is_set():
                self.stats.disconnects += 1
                log.warning("mqtt connection lost", extra={"broker": self._broker})
                await self._wait_stop(self._delay(0))
        await self._close_client()

    async def stop(self) -> None:
        self._stopping.set()
        await self._close_client()

    @property
    def _broker(self) -> str:
        return f"{self._opts.host}:{self._opts.port}"

    async def _wait_stop(self, seconds: float) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {stop, asyncio.ensure_future(self._sleep(seconds))},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()

    async def _wait_lost_or_stop(self) -> None:
        lost = asyncio.ensure_future(self._lost.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            stop.cancel()

    def _new_client(self) -> Any:
        props: dict[str, Any] = {}
        if self._opts.protocol == "5":
            if not self._opts.clean_start and self._opts.session_expiry_s:
                props["session_expiry_interval"] = self._opts.session_expiry_s
            if self._opts.receive_maximum:
                props["receive_maximum"] = self._opts.receive_maximum
        client = gmqtt.Client(
            self._client_id,
            clean_session=self._opts.clean_start,
            optimistic_acknowledgement=not self._opts.manual_ack,
            logger=logging.getLogger("urbanpulse.mqtt.gmqtt"),
            **props,
        )
        client.set_config({"reconnect_retries": 0, "reconnect_delay": 0})
        if self._opts.username is not None:
            client.set_auth_credentials(self._opts.username, self._opts.password)
        handler = self._on_message

        def on_message(_c: Any, topic: Any, payload: bytes, qos: int, _props: Any) -> int:
            if handler is not None:
                handler(topic if type(topic) is str else _topic_text(topic), payload, qos)
            return 0

        async def on_message_acked(
            _c: Any, topic: Any, payload: bytes, qos: int, _props: Any
        ) -> int:
            # gmqtt sends the PUBACK when this coroutine returns.
            if handler is not None:
                waiter = handler(topic if type(topic) is str else _topic_text(topic), payload, qos)
                if waiter is not None:
                    await waiter
            return 0

        def on_disconnect(c: Any, _packet: Any, _exc: Any = None) -> None:
            # Stop gmqtt's own fixed-delay reconnect: our loop owns reconnection.
            c._is_active = False
            if c is self._client:
                self._lost.set()

        client.on_message = on_message_acked if self._opts.manual_ack else on_message
        client.on_disconnect = on_disconnect
        if self._opts.fast_receive:
            _install_fast_receive(
                client, handler, manual_ack=self._opts.manual_ack, stats=self.stats
            )
        return client

    async def _connect_once(self) -> None:
        await self._close_client()
        self._lost.clear()
        client = self._new_client()
        ssl_ctx: ssl.SSLContext | bool = self._opts.tls.context() if self._opts.tls else False
        version = MQTTv50 if self._opts.protocol == "5" else MQTTv311
        self._client = client
        try:
            await asyncio.wait_for(
                client.connect(
                    self._opts.host,
                    self._opts.port,
                    ssl=ssl_ctx,
                    keepalive=self._opts.keepalive_s,
                    version=version,
                ),
                self._opts.connect_timeout_s,
            )
        except MQTTConnectError as exc:
            self._client = None
            await _quiet_disconnect(client)
            code = int(getattr(exc, "_code", 0))
            err = BrokerError(f"broker {self._broker} refused the connection: {exc}")
            err.permanent = code in _PERMANENT_CONNACK  # type: ignore[attr-defined]
            raise err from exc
        except (OSError, TimeoutError) as exc:
            self._client = None
            await _quiet_disconnect(client)
            raise BrokerError(f"cannot reach broker {self._broker}: {exc!r}") from exc
        for topic, qos in self._subs:
            client.subscribe(topic, qos=qos)
        self.stats.connects += 1
        self._connected.set()
        log.info(
            "mqtt connected",
            extra={
                "broker": self._broker,
                "client_id": self._client_id,
                "protocol": self._opts.protocol,
                "subscriptions": [t for t, _ in self._subs],
            },
        )

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            await _quiet_disconnect(client)

    # -- publishing -------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bool:
        client = self._client
        if client is None or not self._connected.is_set():
            self.stats.publish_failed += 1
            return False
        try:
            client.publish(topic, payload, qos=qos, retain=retain)
        except Exception:  # a closing transport; counted, never fatal
            self.stats.publish_failed += 1
            return False
        self.stats.published += 1
        return True

    def write_buffer_bytes(self) -> int:
        """Bytes queued in the socket transport (for publisher flow control)."""
        client = self._client
        conn = getattr(client, "_connection", None)
        transport = getattr(conn, "_transport", None)
        if transport is None:
            return 0
        return int(transport.get_write_buffer_size())

    def inflight(self) -> int:
        """Outgoing QoS>0 messages not yet acknowledged by the broker."""
        storage = getattr(self._client, "_persistent_storage", None)
        return len(storage.get_all()) if storage is not None else 0


#: First two bytes of a PUBACK as gmqtt writes it (``CommandWithMidPacket``):
#: MQTT 3.1.1 remaining length 2 (packet id); MQTT 5 remaining length 4 (packet
#: id, reason code 0, empty properties).
_PUBACK_V311 = 0x4002
_PUBACK_V5 = 0x4004


def _pubacks(mids: list[int], *, v5: bool) -> bytes:
    """The PUBACK packets for ``mids``, in order, as one buffer."""
    out = np.zeros((len(mids), 3 if v5 else 2), dtype=">u2")
    out[:, 0] = _PUBACK_V5 if v5 else _PUBACK_V311
    out[:, 1] = mids
    return out.tobytes()


def _remaining_length(data: bytes, i: int) -> tuple[int, int]:
    """Decode the variable byte integer at ``data[i]``: (value, index after it).

    The index is 0 when the integer is not complete in ``data`` yet and -1 when it
    is malformed (a fourth byte with the continuation bit).
    """
    value = 0
    shift = 0
    n = len(data)
    while True:
        if i >= n:
            return 0, 0
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            return 0, -1


def _no_handler(_topic: str, _payload: bytes, _qos: int) -> None:
    return None


class _FastReceiver:
    """The receive path of one gmqtt connection, in place of gmqtt's per-packet one.

    Installed as the connection's ``MQTTProtocol._read_packet``, it frames every
    complete packet of a read. PUBLISH at QoS 0 and 1 is parsed here (indexing and
    slicing; MQTT 5 properties only when the packet has any, for the topic alias)
    and handed to ``on_message`` directly. Every other packet, QoS 2, malformed
    PUBLISH packets and anything arriving on a superseded connection go to gmqtt
    (``MQTTConnection.put_package``) exactly as before.

    QoS 1 acknowledgements: without ``manual_ack`` the PUBACKs of one read are
    written at once after it (gmqtt wrote one per message, before the handler;
    both happen in the same event-loop step). With ``manual_ack`` a message whose
    handler returns an awaitable is acknowledged when that completes successfully:
    messages are grouped by awaitable (the micro-batch future of
    ``MessageBuffer.add``), one done-callback per group writes the group's
    PUBACKs in arrival order, and only on this receiver's connection while it is
    still gmqtt's current one and open; otherwise they are dropped (counted) and
    the broker redelivers. A handler that raises, or an awaitable that fails or is
    cancelled, leaves its messages unacknowledged (counted), as gmqtt does.
    """

    __slots__ = (
        "_conn",
        "_groups",
        "_last_mids",
        "_last_waiter",
        "_manual",
        "_on_message",
        "_ph",
        "_stats",
        "_v5",
    )

    def __init__(
        self,
        connection: Any,
        package_handler: Any,
        on_message: MessageHandler,
        *,
        manual_ack: bool,
        stats: MqttStats,
    ) -> None:
        self._conn = connection
        self._ph = package_handler
        self._on_message = on_message
        self._v5 = int(package_handler._connection_state.protocol_version >= MQTTv50)
        self._manual = manual_ack
        self._stats = stats
        self._groups: dict[asyncio.Future[Any], list[int]] = {}
        self._last_waiter: asyncio.Future[Any] | None = None
        self._last_mids: list[int] = []

    def read_packet(self, data: bytes) -> int:
        """Handle the complete packets at the start of ``data``.

        Returns the number of bytes consumed (the rest is kept for the next read),
        or -1 for a malformed packet length, like gmqtt's ``_read_packet``.
        """
        conn = self._conn
        live = self._ph.current_connection is conn
        on_message = self._on_message
        v5 = self._v5
        manual = self._manual
        last_waiter, last_mids = self._last_waiter, self._last_mids
        acks: list[int] = []
        size = len(data)
        pos = 0
        while size - pos >= 2:
            cmd = data[pos]
            length = data[pos + 1]
            start = pos + 2
            if length & 0x80:
                if start < size and data[start] < 0x80:
                    length = (length & 0x7F) | (data[start] << 7)
                    start += 1
                else:
                    length, start = _remaining_length(data, pos + 1)
                    if start <= 0:
                        if start < 0:
                            return -1
                        break
            end = start + length
            if end > size:
                break
            # PUBLISH at QoS 0 or 1 (type 3, QoS bit 1 clear) on the live connection.
            if cmd & 0xF4 == 0x30 and live and length >= 2:
                qos = (cmd >> 1) & 1
                p = start + 2 + ((data[start] << 8) | data[start + 1])
                if p + 2 * qos + v5 <= end:
                    topic = data[start + 2 : p]
                    mid = 0
                    if qos:
                        mid = (data[p] << 8) | data[p + 1]
                        p += 2
                    if not v5:
                        payload = data[p:end]
                    elif data[p] == 0:
                        payload = data[p + 1 : end]
                    else:
                        parsed = self._properties(topic, data[p:end])
                        pos = end
                        if parsed is None:
                            continue
                        topic, payload = parsed
                    pos = end
                    if not topic:
                        log.warning("PUBLISH without a topic name (or an unknown topic alias)")
                        continue
                    try:
                        text = topic.decode()
                    except UnicodeDecodeError:
                        text = topic.decode("utf-8", "backslashreplace")
                    if not qos:
                        try:
                            on_message(text, payload, 0)
                        except Exception:
                            log.exception("message handler failed")
                        continue
                    if not manual:
                        acks.append(mid)
                        try:
                            on_message(text, payload, 1)
                        except Exception:
                            log.exception("message handler failed")
                        continue
                    try:
                        waiter = on_message(text, payload, 1)
                    except Exception:
                        self._stats.acks_refused += 1
                        log.exception("message handler failed; message not acknowledged")
                        continue
                    if waiter is None:
                        acks.append(mid)
                    elif waiter is last_waiter:
                        last_mids.append(mid)
                    else:
                        group = self._group(waiter)
                        if group is None:
                            continue
                        last_waiter, last_mids = group
                        last_mids.append(mid)
                    continue
            conn.put_package(Package(cmd, data[start:end]))
            live = self._ph.current_connection is conn
            pos = end
        self._last_waiter, self._last_mids = last_waiter, last_mids
        if pos:
            conn._last_data_in = time.monotonic()
        if acks:
            self._send_acks(acks)
        return pos

    def _properties(self, topic: bytes, rest: bytes) -> tuple[bytes, bytes] | None:
        """MQTT 5 PUBLISH with properties: (topic, payload), resolving a topic alias."""
        ph = self._ph
        try:
            props, payload = ph._parse_properties(rest)
        except Exception:  # truncated property block
            props = payload = None
        if props is None or payload is None:
            log.error("PUBLISH with malformed properties skipped")
            return None
        alias = props.get("topic_alias")
        if alias:
            aliases = ph._server_topics_aliases
            if topic:
                aliases[alias[0]] = topic
            else:
                topic = aliases.get(alias[0], b"")
        return topic, payload

    def _group(self, waiter: Awaitable[None]) -> tuple[asyncio.Future[Any], list[int]] | None:
        """The acknowledgement group of ``waiter`` (None: not awaitable, never acked)."""
        try:
            fut = waiter if isinstance(waiter, asyncio.Future) else asyncio.ensure_future(waiter)
        except TypeError:
            self._stats.acks_refused += 1
            log.error(
                "message handler returned %r, not an awaitable; message not acknowledged", waiter
            )
            return None
        mids = self._groups.get(fut)
        if mids is None:
            mids = self._groups[fut] = []
            fut.add_done_callback(self._acknowledge)
        return fut, mids

    def _acknowledge(self, fut: asyncio.Future[Any]) -> None:
        mids = self._groups.pop(fut, None)
        if self._last_waiter is fut:
            self._last_waiter = None
        if not mids:
            return
        if fut.cancelled() or fut.exception() is not None:
            self._stats.acks_refused += len(mids)
            log.warning(
                "QoS 1 messages not acknowledged: their handler's awaitable failed",
                extra={
                    "messages": len(mids),
                    "error": None if fut.cancelled() else repr(fut.exception()),
                },
            )
            return
        self._send_acks(mids)

    def _send_acks(self, mids: list[int]) -> None:
        conn = self._conn
        if self._ph.current_connection is not conn or conn.is_closing():
            self._stats.acks_dropped += len(mids)
            return
        conn.send_package(_pubacks(mids, v5=bool(self._v5)))


def _install_fast_receive(
    client: Any, on_message: MessageHandler | None, *, manual_ack: bool, stats: MqttStats
) -> None:
    """Give every connection ``client`` makes a ``_FastReceiver``.

    gmqtt's ``MQTTConnection.__init__`` points the client's package handler at each
    new connection (``set_connection``) before anything is sent on it, so wrapping
    that method on this client's handler instance catches every connection and
    touches no gmqtt class.
    """
    _missing(client, _CLIENT_ATTRS)
    ph = client._package_handler
    _missing(ph, _PACKAGE_HANDLER_ATTRS)
    original = ph.set_connection
    handler = on_message or _no_handler

    def set_connection(connection: Any) -> None:
        original(connection)
        _missing(connection, _CONNECTION_ATTRS)
        receiver = _FastReceiver(connection, ph, handler, manual_ack=manual_ack, stats=stats)
        connection._protocol._read_packet = receiver.read_packet

    ph.set_connection = set_connection


def _topic_text(topic: bytes) -> str:
    return topic.decode("utf-8", errors="backslashreplace")


async def _quiet_disconnect(client: Any) -> None:
    client._is_active = False
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 2.0)
