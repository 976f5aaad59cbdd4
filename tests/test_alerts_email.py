"""E-mail receiver against a real SMTP server (aiosmtpd) with STARTTLS and AUTH."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer  # noqa: N811
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from servers import free_port

from alerts import (
    AlertDispatcher,
    AlertsConfig,
    EmailConfig,
    LifecycleConfig,
    QueueConfig,
    Route,
    build_receivers,
    render_email,
)
from urbanpulse._clock import ManualClock
from urbanpulse._errors import ConfigError
from urbanpulse._events import Event, Severity


class _Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []

    async def handle_DATA(  # noqa: N802
        self,
        _server: SMTPServer,
        _session: Session,
        envelope: Envelope,
    ) -> str:
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope, msg))
        return "250 OK"


def _auth(
    _server: SMTPServer,
    _session: Session,
    _envelope: Envelope,
    _mechanism: str,
    data: Any,
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"officer", b"pw")
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def cert_and_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("tls")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def smtp(cert_and_key: tuple[Path, Path]) -> Iterator[tuple[int, _Sink, Path]]:
    cert, key = cert_and_key
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sink = _Sink()
    port = free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=_auth,
        auth_required=True,
    )
    controller.start()
    try:
        yield port, sink, cert
    finally:
        controller.stop()


def ispu_event(state: str, value: float, cat: str, cat_en: str, colour: str, sensor: str) -> Event:
    return Event(
        detector="ispu",
        state="change",
        severity=Severity.WARNING if state == "start" else Severity.INFO,
        kind="air",
        city="Jakarta",
        district="Menteng",
        sensor_id=sensor,
        metric="pm25",
        value=value,
        event_ns=1_795_000_000_000_000_000,
        detected_ns=1_795_000_000_000_000_000,
        message=f"ISPU {cat} at Jakarta/Menteng/{sensor}: {value:.0f}",
        labels={"index": "ispu", "category": cat, "category_en": cat_en, "colour": colour},
    )


def config(port: int, cert: Path, tmp_path: Path, *, password: str = "pw") -> AlertsConfig:
    return AlertsConfig(
        lifecycle=LifecycleConfig(flap_transitions=0),
        routes=(
            Route(name="officers", receivers=("mail",), group_by=("district",), group_wait_s=0),
        ),
        emails=(
            EmailConfig(
                name="mail",
                host="127.0.0.1",
                port=port,
                username="officer",
                password=password,
                sender="urbanpulse@example.id",
                recipients=("dlh@example.id",),
                ca_file=str(cert),
                retries=0,
            ),
        ),
        queue=QueueConfig(directory=str(tmp_path / "q")),
    )


def test_email_over_starttls_with_auth(smtp: tuple[int, _Sink, Path], tmp_path: Path) -> None:
    port, sink, cert = smtp
    cfg = config(port, cert, tmp_path)

    async def main() -> None:
        disp = AlertDispatcher(cfg, build_receivers(cfg), clock=ManualClock())
        disp.handle(
            [
                ispu_event("start", 160, "Tidak Sehat", "Unhealthy", "#cccc00", "s1"),
                ispu_event("start", 170, "Tidak Sehat", "Unhealthy", "#cccc00", "s2"),
            ]
        )
        assert await disp.deliver_all()
        assert disp.stats["mail"].delivered == 1
        await disp.close()

    asyncio.run(main())
    ((envelope, msg),) = sink.messages
    assert envelope.rcpt_tos == ["dlh@example.id"]
    assert msg["Subject"] == "[UrbanPulse FIRING:2] Menteng"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None
    assert html is not None
    text, markup = plain.get_content(), html.get_content()
    assert "ISPU Tidak Sehat (Unhealthy) #cccc00" in text
    assert "Jakarta / Menteng / s2" in text
    assert "background:#cccc00" in markup
    assert "Tidak Sehat / Unhealthy" in markup


def test_wrong_password_is_final(smtp: tuple[int, _Sink, Path], tmp_path: Path) -> None:
    port, sink, cert = smtp
    cfg = config(port, cert, tmp_path, password="nope")

    async def main() -> AlertDispatcher:
        disp = AlertDispatcher(cfg, build_receivers(cfg), clock=ManualClock())
        disp.handle([ispu_event("start", 160, "Tidak Sehat", "Unhealthy", "#cccc00", "s1")])
        assert await disp.deliver_all(), disp.stats["mail"].last_error
        await disp.close()
        return disp

    disp = asyncio.run(main())
    assert sink.messages == []
    assert disp.stats["mail"].rejected == 1


def test_colour_looked_up_when_event_lacks_it() -> None:
    payload = {
        "status": "firing",
        "groupLabels": {"district": "Menteng"},
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "ispu", "city": "Jakarta", "district": "Menteng"},
                "annotations": {"summary": "x", "category": "Sangat Tidak Sehat"},
                "startsAt": "2026-01-01T00:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
            }
        ],
    }
    msg = render_email(payload, sender="a@b", recipients=("c@d",))
    plain = msg.get_body(("plain",))
    assert plain is not None
    assert "ISPU Sangat Tidak Sehat (Very Unhealthy) #cc0000" in plain.get_content()


def test_password_without_starttls_is_refused() -> None:
    with pytest.raises(ConfigError, match="STARTTLS"):
        EmailConfig(
            name="m",
            host="h",
            sender="a@b",
            recipients=("c@d",),
            starttls=False,
            allow_plaintext=True,
            username="u",
            password="p",
            port=free_port(),
        )
