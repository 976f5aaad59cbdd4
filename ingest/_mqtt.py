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
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError

from urbanpulse._errors import BrokerError

__all__ = [
    "BackoffOptions",
    "MessageHandler",
    "MqttClient",
    "MqttOptions",
    "MqttStats",
    "TlsOptions",
    "backoff_delays",
]

log = logging.getLogger("urbanpulse.mqtt")

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


@dataclass(slots=True)
class MqttStats:
    connects: int = 0
    disconnects: int = 0
    failed_attempts: int = 0
    last_connected_ns: int = 0
    published: int = 0
    publish_failed: int = 0


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


def _topic_text(topic: bytes) -> str:
    return topic.decode("utf-8", errors="backslashreplace")


async def _quiet_disconnect(client: Any) -> None:
    client._is_active = False
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 2.0)
